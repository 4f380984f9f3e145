"""Where the evaluation images and the published curves are, and how they are read.

Named datasets (``kodak``, ``standard``) live in ``<shared>/data/<name>``, the published Kodak
curves in ``<shared>/reference/kodak``; ``<shared>`` is ``../shared`` beside the repository
(:func:`shared_dir`).  Both :mod:`lic.eval.runner` and :mod:`lic.eval.plot` use this module, which
uses neither.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = [
    "IMAGE_EXTENSIONS",
    "read_pixels",
    "reference_dir",
    "repo_root",
    "resolve_dataset",
    "shared_dir",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


def repo_root() -> Path:
    """The repository root (the folder that holds ``lic/``)."""
    return Path(__file__).resolve().parents[2]


def shared_dir() -> Path:
    """``<repo>/../shared`` (override with the ``LIC_SHARED_DIR`` environment variable).

    Falls back to ``<cwd>/../shared``; returns the repo-relative path even when it does
    not exist, so callers can test ``.is_dir()`` and skip.
    """
    env = os.environ.get("LIC_SHARED_DIR")
    if env:
        return Path(env)
    candidates = [repo_root().parent / "shared", Path.cwd().resolve().parent / "shared"]
    for c in candidates:
        if c.is_dir():
            return c
    return candidates[0]


def reference_dir() -> Path:
    """``<shared>/reference/kodak``: the published Kodak RD curves."""
    return shared_dir() / "reference" / "kodak"


def resolve_dataset(spec: str | Path) -> list[Path]:
    """Image files of a dataset: ``kodak``, ``standard``, a folder, or one image file.

    Named datasets live in ``<shared>/data/<name>``.  Folders are listed (not
    recursively), images sorted by name.  Raises ``FileNotFoundError`` when nothing
    is found.
    """
    s = str(spec)
    if s in ("kodak", "standard"):
        folder = shared_dir() / "data" / s
        if not folder.is_dir():
            raise FileNotFoundError(
                f"dataset {s!r} expected at {folder} (set LIC_SHARED_DIR or see "
                "shared/data/README.md for where to download it)"
            )
    else:
        folder = Path(s).expanduser()
    if folder.is_file():
        return [folder]
    if not folder.is_dir():
        raise FileNotFoundError(f"no such dataset, folder or image: {s}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    return files


def read_pixels(path: str | Path) -> np.ndarray:
    """An image file as uint8 (H, W, 3) RGB, converted as ``encode.py`` converts it (``lic.io.read_image``)."""
    from lic.io import read_image

    return np.asarray(read_image(path).pixels)
