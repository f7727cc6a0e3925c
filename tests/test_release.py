"""Release housekeeping: one version, typed package, citation and changelog, a clean root."""

import re
import subprocess
from pathlib import Path

import pytest

import skreptile

ROOT = Path(__file__).resolve().parent.parent


def test_the_package_ships_its_annotations():
    assert (ROOT / "skreptile" / "py.typed").is_file()
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'skreptile = \["py.typed"\]', pyproject)


def test_the_version_lives_in_one_place():
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'dynamic = ["version"]' in pyproject
    assert 'attr = "skreptile._version.__version__"' in pyproject
    citation = (ROOT / "CITATION.cff").read_text(encoding="utf-8")
    assert f"version: {skreptile.__version__}" in citation
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert f"## {skreptile.__version__}" in changelog


def test_the_citation_names_the_reptile_paper():
    citation = (ROOT / "CITATION.cff").read_text(encoding="utf-8")
    assert "cff-version: 1.2.0" in citation
    assert "On First-Order Meta-Learning Algorithms" in citation
    assert "1803.02999" in citation


def test_the_docs_include_the_changelog():
    page = (ROOT / "docs" / "changelog.md").read_text(encoding="utf-8")
    assert "../CHANGELOG.md" in page


def test_the_html_display_links_to_the_api_page(monkeypatch):
    from skreptile import ReptileClassifier, ReptileRegressor

    monkeypatch.delenv("SKREPTILE_DOCS_URL", raising=False)
    for cls in (ReptileRegressor, ReptileClassifier):
        link = cls()._get_doc_link()
        assert link.endswith(f"/gen_modules/skreptile.{cls.__name__}.html")
        assert f'href="{link}"' in cls()._repr_html_()
    monkeypatch.setenv("SKREPTILE_DOCS_URL", "../")
    assert ReptileRegressor()._get_doc_link() == "../gen_modules/skreptile.ReptileRegressor.html"


def test_the_repository_root_holds_no_generated_files():
    try:
        tracked = subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    at_root = [name for name in tracked if "/" not in name]
    assert not [name for name in at_root if name.endswith((".png", ".pt", ".whl", ".tar.gz"))]


@pytest.mark.parametrize(
    "figure",
    [
        "sine_adaptation.png",
        "few_shot_digits.png",
        "beijing_temperature.png",
        "omniglot_episode.png",
    ],
)
def test_example_outputs_are_ignored_and_default_to_the_current_directory(figure):
    assert figure in (ROOT / ".gitignore").read_text(encoding="utf-8").split()
    sources = "".join(p.read_text(encoding="utf-8") for p in (ROOT / "examples").glob("plot_*.py"))
    assert f'"--out", default="{figure}"' in sources
