"""load_omniglot on tiny generated archives (and on the real minimal sets when present)."""

import zipfile
from pathlib import Path

import numpy as np
import pytest

from skreptile.datasets import load_omniglot

Image = pytest.importorskip("PIL.Image")

# The two official minimal background sets, where this checkout keeps shared data.
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"

LAYOUT = {"Latin": ["character01", "character02"], "Greek": ["character01"]}


def _drawing(seed):
    """A 105x105 black-on-white bilevel PNG, as Omniglot's, with a filled square."""
    img = Image.new("1", (105, 105), 1)
    lo = 10 + 5 * seed
    for i in range(lo, lo + 30):
        for j in range(20, 50):
            img.putpixel((j, i), 0)
    return img


def _write_tree(root):
    files = []
    for a, (alphabet, characters) in enumerate(LAYOUT.items()):
        for c, character in enumerate(characters):
            folder = root / "images_background" / alphabet / character
            folder.mkdir(parents=True)
            for d in range(3):
                path = folder / f"{a}{c}_{d + 1:02d}.png"
                _drawing(d).save(path)
                files.append(path)
    return files


@pytest.fixture
def tiny_zip(tmp_path):
    files = _write_tree(tmp_path / "tree")
    path = tmp_path / "images_background.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("images_background/", "")
        for f in files:
            archive.write(f, f.relative_to(tmp_path / "tree").as_posix())
    return path


def test_reads_the_official_zip_layout(tiny_zip):
    data = load_omniglot(tiny_zip)
    assert data.images.shape == (9, 1, 28, 28) and data.images.dtype == np.float32
    assert data.alphabet_names == ["Greek", "Latin"]
    assert data.target_names == ["Greek/character01", "Latin/character01", "Latin/character02"]
    np.testing.assert_array_equal(data.target, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(data.alphabet, [0, 0, 0, 1, 1, 1, 1, 1, 1])
    assert data.filenames[0] == "Greek/character01/10_01.png"
    # Ink is 1: the square, drawn black, is bright and the paper is dark.
    assert 0.0 <= data.images.min() and data.images.max() <= 1.0
    image = data.images[0, 0]
    assert image[6, 9] > 0.9 and image[0, 0] < 0.05


def test_size_inversion_and_alphabet_filter(tiny_zip):
    full = load_omniglot(tiny_zip, image_size=None, invert=False, dtype=np.float64)
    assert full.images.shape == (9, 1, 105, 105) and full.images.dtype == np.float64
    # Uninverted, original size: the pixels are the file's own.
    original = np.asarray(_drawing(0).convert("L"), dtype=float) / 255
    np.testing.assert_array_equal(full.images[0, 0], original)
    latin = load_omniglot(tiny_zip, image_size=14, alphabets=["Latin"])
    assert latin.images.shape == (6, 1, 14, 14) and latin.alphabet_names == ["Latin"]
    with pytest.raises(ValueError, match="Alphabets not found: \\['Klingon'\\]"):
        load_omniglot(tiny_zip, alphabets=["Klingon"])


def test_unpacked_folder_gives_the_same_data(tmp_path, tiny_zip):
    _write_tree(tmp_path / "unpacked")
    from_zip = load_omniglot(tiny_zip)
    for root in (tmp_path / "unpacked", tmp_path / "unpacked" / "images_background"):
        from_folder = load_omniglot(root)
        np.testing.assert_array_equal(from_folder.images, from_zip.images)
        assert from_folder.target_names == from_zip.target_names


def test_several_archives_and_bad_paths(tmp_path, tiny_zip):
    both = load_omniglot([tiny_zip, tiny_zip])
    assert len(both.images) == 18 and len(both.target_names) == 3
    with pytest.raises(FileNotFoundError, match="No Omniglot data"):
        load_omniglot(tmp_path / "missing.zip")
    (tmp_path / "notes.txt").write_text("not a zip")
    with pytest.raises(ValueError, match="neither a folder nor a zip"):
        load_omniglot(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No alphabet/character/drawing.png"):
        load_omniglot(tmp_path / "empty")


@pytest.mark.skipif(
    not (SHARED / "images_background_small1.zip").exists(),
    reason=f"the official minimal Omniglot set is not at {SHARED}",
)
def test_the_official_minimal_background_set():
    data = load_omniglot(SHARED / "images_background_small1.zip", alphabets=["Latin"])
    assert data.images.shape == (520, 1, 28, 28)
    assert len(data.target_names) == 26
    np.testing.assert_array_equal(np.bincount(data.target), 20)
    assert 0.02 < data.images.mean() < 0.3  # mostly paper, some ink
