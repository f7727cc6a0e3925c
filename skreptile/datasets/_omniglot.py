"""Omniglot (Lake et al., 2015): 1,623 handwritten characters of 50 alphabets."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from sklearn.utils import Bunch

from .._typing import PathLike


def _import_pillow():
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "load_omniglot reads PNG images with Pillow: pip install pillow "
            "(or pip install 'skreptile[datasets]')."
        ) from exc
    return Image


def _png_entries(path):
    """``(alphabet, character, name, opener)`` of every drawing under ``path`` (zip or folder).

    A drawing is any ``.png`` whose last three path components are
    ``alphabet/character/drawing.png``, however deep the root folder lies
    (the official zips hold one top folder, such as ``images_background/``).
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.png") if p.is_file())
        rel = [p.relative_to(path).parts for p in files]
        return [
            (parts[-3], parts[-2], parts[-1], (lambda p=p: p.read_bytes()))
            for parts, p in zip(rel, files)
            if len(parts) >= 3
        ]
    if zipfile.is_zipfile(path):
        archive = zipfile.ZipFile(path)
        names = sorted(
            n
            for n in archive.namelist()
            if n.lower().endswith(".png") and not n.startswith("__MACOSX/")
        )
        entries = []
        for name in names:
            parts = PurePosixPath(name).parts
            if len(parts) >= 3:
                entries.append((parts[-3], parts[-2], parts[-1], (lambda n=name: archive.read(n))))
        return entries
    if path.exists():
        raise ValueError(f"{path} is neither a folder nor a zip file.")
    raise FileNotFoundError(f"No Omniglot data at {path}.")


def load_omniglot(
    path: PathLike | Sequence[PathLike],
    image_size: int | None = 28,
    alphabets: Sequence[str] | None = None,
    invert: bool = True,
    dtype: Any = np.float32,
) -> Bunch:
    """Load Omniglot from an official zip or its unpacked folder.

    Reads the layout of the official archives (``images_background.zip``,
    ``images_evaluation.zip`` and the minimal sets
    ``images_background_small1.zip`` and ``images_background_small2.zip``):
    ``alphabet/character/drawing.png``, 20 drawings of 105x105 pixels per
    character.  skreptile downloads nothing: pass the path of your copy.

    Parameters
    ----------
    path : str or path-like, or sequence of them
        A zip file, or a folder holding alphabet folders (at any depth).  Several
        paths are read one after the other, characters of the same alphabet
        and name merged.
    image_size : int or None, default=28
        Side of the square images returned (resized with a Lanczos filter, as
        greyscale); None keeps the original 105x105.
    alphabets : sequence of str or None, default=None
        Only read these alphabets (folder names such as ``"Latin"``).
    invert : bool, default=True
        If True, ink is 1 and paper 0 (the files hold black ink on white).
    dtype : numpy dtype, default=np.float32
        Type of the images, with values in [0, 1].

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        With fields:

        images : ndarray of shape (n_drawings, 1, image_size, image_size)
            The drawings, as one-channel images.
        target : ndarray of shape (n_drawings,)
            Character label of every drawing, an index into ``target_names``.
        alphabet : ndarray of shape (n_drawings,)
            Alphabet label of every drawing, an index into ``alphabet_names``.
        target_names : list of str
            ``"alphabet/character"`` of every character, sorted.
        alphabet_names : list of str
            Names of the alphabets, sorted.
        filenames : list of str
            ``alphabet/character/drawing.png`` of every drawing.

    Examples
    --------
    >>> from skreptile.datasets import load_omniglot
    >>> data = load_omniglot("images_background_small1.zip")  # doctest: +SKIP
    >>> data.images.shape, len(data.target_names), data.alphabet_names  # doctest: +SKIP
    ((2720, 1, 28, 28), 136, ['Balinese', 'Early_Aramaic', 'Greek', 'Korean', 'Latin'])
    """
    Image = _import_pillow()
    paths = [path] if isinstance(path, (str, bytes)) or hasattr(path, "__fspath__") else path
    entries = [entry for p in paths for entry in _png_entries(p)]
    if alphabets is not None:
        wanted = set(alphabets)
        found = {alphabet for alphabet, *_ in entries}
        missing = sorted(wanted - found)
        if missing:
            raise ValueError(f"Alphabets not found: {missing}; available: {sorted(found)}.")
        entries = [e for e in entries if e[0] in wanted]
    if not entries:
        raise ValueError(f"No alphabet/character/drawing.png files found in {path}.")
    entries.sort(key=lambda e: e[:3])

    side = 105 if image_size is None else int(image_size)
    images = np.empty((len(entries), 1, side, side), dtype=dtype)
    for i, (*_, read) in enumerate(entries):
        with Image.open(io.BytesIO(read())) as img:
            img = img.convert("L")
            if img.size != (side, side):
                img = img.resize((side, side), Image.Resampling.LANCZOS)
            images[i, 0] = np.asarray(img, dtype=np.float32) / 255.0
    if invert:
        images = 1.0 - images

    character_keys = [f"{a}/{c}" for a, c, *_ in entries]
    target_names = sorted(set(character_keys))
    alphabet_names = sorted({a for a, *_ in entries})
    char_index = {name: i for i, name in enumerate(target_names)}
    alpha_index = {name: i for i, name in enumerate(alphabet_names)}
    return Bunch(
        images=images.astype(dtype, copy=False),
        target=np.array([char_index[k] for k in character_keys], dtype=np.intp),
        alphabet=np.array([alpha_index[a] for a, *_ in entries], dtype=np.intp),
        target_names=target_names,
        alphabet_names=alphabet_names,
        filenames=[f"{a}/{c}/{n}" for a, c, n, _ in entries],
    )
