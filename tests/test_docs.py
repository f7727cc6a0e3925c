"""The examples of the user guide run as doctests, so that the guide cannot drift from the code.

(Docstring examples run through ``--doctest-modules``; the Sphinx build itself,
with warnings as errors, is a step of ``.ci/run``.)
"""

import doctest
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
GENERATED = {
    "_build",
    "_templates",
    "auto_examples",
    "gen_modules",
    "api.rst",
    "sg_execution_times.rst",
}
PAGES = sorted(
    page for page in DOCS.rglob("*.rst") if not GENERATED.intersection(page.relative_to(DOCS).parts)
)


def test_the_user_guide_pages_are_found():
    names = {str(page.relative_to(DOCS)) for page in PAGES}
    assert {"index.rst", "user_guide/getting_started.rst", "user_guide/fitting.rst"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(DOCS)))
def test_documentation_examples_run(page):
    text = page.read_text(encoding="utf-8")
    if "skops" in text:
        pytest.importorskip("skops", reason="the persistence page's examples use skops")
    test = doctest.DocTestParser().get_doctest(text, {}, page.name, str(page), 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = []
    result = runner.run(test, out=report.append)
    assert result.failed == 0, "".join(report)


def test_the_table_walkthrough_runs():
    """The first page's code blocks (defaults, so not doctests: seconds of meta_fit) run in order."""
    import re
    import textwrap

    import numpy as np

    text = (DOCS / "user_guide" / "your_table.rst").read_text(encoding="utf-8")
    blocks = re.findall(r"\.\. code-block:: python\n\n((?:   .*\n|\n)+)", text)
    assert len(blocks) >= 6
    code = "\n".join(textwrap.dedent(block) for block in blocks)
    namespace = {}
    exec(compile(code, "your_table.rst", "exec"), namespace)
    model, results, rents = namespace["model"], namespace["results"], namespace["rents"]
    assert model.n_meta_iter_ < model.n_meta_iter  # the page says early stopping stopped it
    assert results.model_errors.shape == (2, namespace["test"]["city"].nunique())
    assert np.isfinite(results.model_errors).all()
    assert len(rents) == len(namespace["unlabelled"]) and (rents > 0).all()
