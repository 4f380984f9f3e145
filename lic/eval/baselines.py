"""Classical codecs as evaluation baselines, each at a sweep of settings.

Every codec is a small object with ``name``, ``description``, ``settings`` (list),
``encode(pixels, setting) -> bytes`` (the whole file) and ``decode(bytes) -> pixels``
(uint8 HxWx3), which is all :mod:`lic.eval.runner` asks of a codec.  Each also has
``cache_id(setting)``: these codecs are deterministic, so the harness may reuse a result
(:class:`lic.eval.runner.RecordCache`) when nothing that decides it has changed.

* :class:`JPEG`: Pillow, ``quality`` 5..95 step 5, Pillow's defaults otherwise (4:2:0,
  ``optimize=False``, baseline), i.e. the recipe of CompressAI's published ``jpeg.json``.
  Note: that file was made with Pillow 7.1.2, whose wheels linked IJG libjpeg 9d; current
  Pillow wheels link libjpeg-turbo, which down-samples chroma by box
  averaging (IJG 9: in the DCT domain) and up-samples it with a triangle filter
  (IJG 9: scaled IDCT).  With libjpeg-turbo the files are up to ~0.3 % smaller at
  q >= 80 and decode ~0.1 dB higher; see ``bench/jpeg_anchor.py``.
* :class:`JPEGOptimized`: the same with ``optimize=True`` (optimal Huffman tables).
* :class:`WebP`: Pillow / libwebp, lossy, ``quality`` 5..95 step 5, default method 4.
* :class:`JPEG2000`: Pillow / OpenJPEG, irreversible 9/7 wavelet, colour transform on
  (``mct=1``), one quality layer per file at a target compression ratio
  (``quality_mode="rates"``); raw codestream (``.j2k``, no JP2 box wrapper).  Settings
  are the target compression ratios (24 bits/px / ratio = target bpp), largest first.

Every default sweep runs from low to high rate.
* :class:`AVIF`: Pillow's AVIF plugin (libavif, usually with libaom), 4:2:0, speed 6,
  one thread (deterministic), ``quality`` sweep; only if ``PIL.features.check('avif')``.
  The encoder speed matters: speed 4 saves another ~4 % (BD-rate, measured on 6 Kodak
  images with libaom 3.14) at about twice the encode time.
* :class:`JPEGXL`: ``cjxl`` / ``djxl`` subprocesses, ``-q`` sweep; only when both are on
  ``PATH``.

:func:`available_baselines` returns the usable ones and says which were skipped.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import tempfile
from typing import Any, Iterable, Sequence

import numpy as np
import PIL
from PIL import Image, features

__all__ = [
    "AVIF",
    "JPEG",
    "JPEG2000",
    "JPEGOptimized",
    "JPEGXL",
    "PillowCodec",
    "WebP",
    "available_baselines",
    "baseline_registry",
]

log = logging.getLogger(__name__)


def _to_image(pixels: np.ndarray) -> Image.Image:
    arr = np.asarray(pixels)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected uint8 HxWx3 pixels, got {arr.dtype} {arr.shape}")
    return Image.fromarray(np.ascontiguousarray(arr))  # uint8 HxWx3 -> mode "RGB"


def _from_bytes(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return np.asarray(im.convert("RGB"))


class PillowCodec:
    """A codec that Pillow writes and reads; subclasses set ``fmt`` and ``save_kwargs``."""

    name: str = "?"
    fmt: str = "?"
    settings: list[Any] = []

    @property
    def description(self) -> str:
        return f"{self.name}. Pillow version {PIL.__version__}"

    def save_kwargs(self, setting: Any) -> dict[str, Any]:
        return {"quality": int(setting)}

    def cache_id(self, setting: Any) -> str:
        """Everything that decides the file at ``setting``: the codec, its libraries' versions and
        the exact ``save()`` arguments (the key of the evaluation's record cache)."""
        return json.dumps([type(self).__name__, self.fmt, self.description, self.save_kwargs(setting)],
                          sort_keys=True, default=repr)

    def encode(self, pixels: np.ndarray, setting: Any) -> bytes:
        buf = io.BytesIO()
        _to_image(pixels).save(buf, format=self.fmt, **self.save_kwargs(setting))
        return buf.getvalue()

    def decode(self, data: bytes) -> np.ndarray:
        return _from_bytes(data)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(settings={self.settings!r})"


def _lib_version(feature: str) -> str:
    try:
        v = features.version(feature)
    except Exception:  # noqa: BLE001 - unknown feature names differ between versions
        v = None
    return v or "?"


class JPEG(PillowCodec):
    """Pillow JPEG exactly as CompressAI's ``jpeg.json``: ``save(format="jpeg", quality=q)``."""

    name = "JPEG"
    fmt = "jpeg"

    def __init__(self, settings: Sequence[int] | None = None) -> None:
        self.settings = list(settings) if settings is not None else list(range(5, 100, 5))

    @property
    def description(self) -> str:
        turbo = _lib_version("libjpeg_turbo")
        lib = f"libjpeg-turbo {turbo}" if turbo != "?" else f"libjpeg {_lib_version('jpg')}"
        return f"{self.name}. Pillow version {PIL.__version__} ({lib}), 4:2:0"

    def save_kwargs(self, setting: Any) -> dict[str, Any]:
        return {"quality": int(setting)}


class JPEGOptimized(JPEG):
    """Pillow JPEG with optimal Huffman tables (``optimize=True``)."""

    name = "JPEG (optimize)"

    def save_kwargs(self, setting: Any) -> dict[str, Any]:
        return {"quality": int(setting), "optimize": True}


class WebP(PillowCodec):
    """Pillow / libwebp lossy, quality sweep (CompressAI's ``webp.json`` recipe)."""

    name = "WebP"
    fmt = "webp"

    def __init__(self, settings: Sequence[int] | None = None) -> None:
        self.settings = list(settings) if settings is not None else list(range(5, 100, 5))

    @property
    def description(self) -> str:
        return f"{self.name}. Pillow version {PIL.__version__} (libwebp {_lib_version('webp')})"

    def save_kwargs(self, setting: Any) -> dict[str, Any]:
        return {"quality": int(setting), "lossless": False}


class JPEG2000(PillowCodec):
    """Pillow / OpenJPEG, irreversible (9/7), ``mct=1``, target compression ratio sweep."""

    name = "JPEG 2000"
    fmt = "JPEG2000"
    #: target compression ratios, low to high rate like every sweep here
    #: (24 bpp / ratio = target bpp: 0.15 .. 3.4 bpp)
    DEFAULT_RATIOS = [160, 120, 100, 80, 60, 48, 40, 30, 24, 20, 16, 14, 12, 10, 8, 7]

    def __init__(self, settings: Sequence[float] | None = None) -> None:
        self.settings = list(settings) if settings is not None else list(self.DEFAULT_RATIOS)

    @property
    def description(self) -> str:
        return (
            f"{self.name}. Pillow version {PIL.__version__} (OpenJPEG "
            f"{_lib_version('jpg_2000')}), irreversible, mct=1, j2k codestream, "
            "settings = compression ratios"
        )

    def save_kwargs(self, setting: Any) -> dict[str, Any]:
        return {
            "irreversible": True,
            "mct": 1,
            "quality_mode": "rates",
            "quality_layers": [float(setting)],
            "no_jp2": True,
        }


class AVIF(PillowCodec):
    """Pillow's AVIF plugin, 4:2:0, speed 6, one thread, quality sweep."""

    name = "AVIF"
    fmt = "AVIF"

    def __init__(self, settings: Sequence[int] | None = None, speed: int = 6) -> None:
        self.settings = (
            list(settings) if settings is not None else [5, 10, 20, 30, 40, 50, 60, 70, 80, 90]
        )
        self.speed = speed

    @property
    def description(self) -> str:
        return (
            f"{self.name}. Pillow version {PIL.__version__} (libavif "
            f"{_lib_version('avif')}), 4:2:0, speed {self.speed}"
        )

    def save_kwargs(self, setting: Any) -> dict[str, Any]:
        return {
            "quality": int(setting),
            "subsampling": "4:2:0",
            "speed": self.speed,
            "max_threads": 1,
        }

    @staticmethod
    def available() -> bool:
        try:
            return bool(features.check("avif"))
        except Exception:  # noqa: BLE001 - Pillow < 11.2 has no such feature name
            return False


class JPEGXL:
    """JPEG XL through the reference ``cjxl`` / ``djxl`` command-line tools."""

    name = "JPEG XL"

    def __init__(self, settings: Sequence[int] | None = None, effort: int = 7) -> None:
        self.settings = (
            list(settings) if settings is not None else [10, 20, 30, 40, 50, 60, 70, 80, 90, 95]
        )
        self.effort = effort
        self.cjxl = shutil.which("cjxl")
        self.djxl = shutil.which("djxl")
        self._versions: list[str] | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("cjxl") is not None and shutil.which("djxl") is not None

    @property
    def description(self) -> str:
        return f"{self.name}. cjxl -q Q -e {self.effort}"

    def cache_id(self, setting: Any) -> str:
        """The codec, the tools' versions, the effort and the setting (see PillowCodec.cache_id)."""
        if self._versions is None:
            cjxl, djxl = self._require()
            self._versions = [subprocess.run([tool, "--version"], capture_output=True, text=True).stdout.strip()
                              for tool in (cjxl, djxl)]
        return json.dumps([type(self).__name__, self._versions, self.effort, setting], default=repr)

    def _require(self) -> tuple[str, str]:
        if not (self.cjxl and self.djxl):
            raise RuntimeError("JPEG XL needs cjxl and djxl on PATH")
        return self.cjxl, self.djxl

    def encode(self, pixels: np.ndarray, setting: Any) -> bytes:
        cjxl, _ = self._require()
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "in.png")
            dst = os.path.join(tmp, "out.jxl")
            _to_image(pixels).save(src, format="png", compress_level=1)
            subprocess.run(
                [cjxl, src, dst, "-q", str(setting), "-e", str(self.effort), "--quiet"],
                check=True,
                capture_output=True,
            )
            with open(dst, "rb") as f:
                return f.read()

    def decode(self, data: bytes) -> np.ndarray:
        _, djxl = self._require()
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "in.jxl")
            dst = os.path.join(tmp, "out.png")
            with open(src, "wb") as f:
                f.write(data)
            subprocess.run([djxl, src, dst, "--quiet"], check=True, capture_output=True)
            with Image.open(dst) as im:
                return np.asarray(im.convert("RGB"))


def baseline_registry() -> dict[str, type]:
    """Short names (as used on command lines) -> codec classes."""
    return {
        "jpeg": JPEG,
        "jpeg-opt": JPEGOptimized,
        "webp": WebP,
        "jpeg2000": JPEG2000,
        "avif": AVIF,
        "jxl": JPEGXL,
    }


def _why_unavailable(key: str) -> str | None:
    if key == "jpeg" or key == "jpeg-opt":
        return None if features.check("jpg") else "Pillow was built without JPEG support"
    if key == "webp":
        return None if features.check("webp") else "Pillow was built without WebP support"
    if key == "jpeg2000":
        return None if features.check("jpg_2000") else "Pillow was built without OpenJPEG"
    if key == "avif":
        return None if AVIF.available() else "Pillow has no AVIF support (needs Pillow >= 11.2 with libavif)"
    if key == "jxl":
        return None if JPEGXL.available() else "cjxl/djxl not found on PATH"
    raise KeyError(key)


def available_baselines(
    names: Iterable[str] | None = None, *, verbose: bool = True
) -> list[Any]:
    """Instances of the usable baselines (default: all), in registry order.

    Unavailable ones are skipped with a logged warning (when ``verbose``; without a logging
    configuration Python prints it on stderr, under Hydra it goes to the console and the run's log).
    Unknown names raise ``KeyError``.
    """
    registry = baseline_registry()
    keys = list(registry) if names is None else [n.strip().lower() for n in names]
    out = []
    for key in keys:
        if key not in registry:
            raise KeyError(f"unknown baseline {key!r}; known: {', '.join(registry)}")
        why = _why_unavailable(key)
        if why is not None:
            if verbose:
                log.warning("skipping baseline %s: %s", key, why)
            continue
        out.append(registry[key]())
    return out
