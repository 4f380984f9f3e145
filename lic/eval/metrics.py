"""Image-quality and rate metrics, following CompressAI's benchmark conventions.

* :func:`psnr`: over all three RGB channels at once (one MSE over H*W*3 values), data
  range 255, computed in float64; ``inf`` for identical images.
* :func:`ms_ssim`: ``pytorch_msssim.ms_ssim(..., data_range=255)`` on the RGB image as a
  float tensor (1, 3, H, W), default 5 scales / 11x11 Gaussian window, exactly as
  CompressAI's ``compute_metrics``.  The 5-scale MS-SSIM needs the smaller side to be
  at least 161 px (4 downsamplings of an 11-tap window); for smaller images this
  function returns ``nan`` rather than a number from fewer scales, so that values stay
  comparable with published ones.  Averages that meet a ``nan`` are ``nan``.
* :func:`bpp`: ``8 * bytes / (H * W)`` of the whole file / bitstream.

Curves are aggregated per setting as the mean over images of these per-image values
(CompressAI convention: PSNR per image, then mean over images; never PSNR of the mean
MSE).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

__all__ = [
    "MS_SSIM_MIN_SIDE",
    "ImageQuality",
    "RDCurve",
    "bpp",
    "compare",
    "ms_ssim",
    "psnr",
]

#: Smallest image side for which the 5-scale MS-SSIM is defined (pytorch_msssim asserts
#: ``min(H, W) > (win_size - 1) * 2**4 = 160``).
MS_SSIM_MIN_SIDE = 161


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected HxWx3 RGB arrays, got shape {a.shape}")
    for name, x in (("a", a), ("b", b)):
        if x.dtype != np.uint8:
            raise TypeError(f"{name} must be uint8 (0..255), got {x.dtype}")
    return a, b


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 HxWx3 images, over RGB, peak 255, float64.

    Returns ``inf`` when the images are identical.
    """
    a, b = _check_pair(a, b)
    diff = a.astype(np.float64) - b.astype(np.float64)
    mse = float(np.mean(diff * diff))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(255.0 * 255.0 / mse)


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM (0..1) between two uint8 HxWx3 images, via pytorch_msssim, data_range=255.

    Returns ``nan`` when ``min(H, W) < 161`` (see module docstring).
    """
    a, b = _check_pair(a, b)
    if min(a.shape[0], a.shape[1]) < MS_SSIM_MIN_SIDE:
        return math.nan
    import torch
    from pytorch_msssim import ms_ssim as _ms_ssim

    ta = torch.from_numpy(np.array(a, copy=True)).permute(2, 0, 1).unsqueeze(0).float()
    tb = torch.from_numpy(np.array(b, copy=True)).permute(2, 0, 1).unsqueeze(0).float()
    with torch.no_grad():
        return float(_ms_ssim(ta, tb, data_range=255.0).item())


def bpp(num_bytes: int, h: int, w: int) -> float:
    """Bits per pixel of a file of ``num_bytes`` bytes for an ``h`` x ``w`` image."""
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {h}x{w}")
    return 8.0 * num_bytes / (h * w)


@dataclass(frozen=True)
class ImageQuality:
    """Rate and distortion of one decoded image against its original."""

    height: int
    width: int
    num_bytes: int
    bpp: float
    psnr: float
    ms_ssim: float


def compare(
    original: np.ndarray, decoded: np.ndarray, num_bytes: int, *, with_ms_ssim: bool = True
) -> ImageQuality:
    """Measure ``decoded`` against ``original`` for a file of ``num_bytes`` bytes."""
    h, w = np.asarray(original).shape[:2]
    return ImageQuality(
        height=int(h),
        width=int(w),
        num_bytes=int(num_bytes),
        bpp=bpp(num_bytes, h, w),
        psnr=psnr(original, decoded),
        ms_ssim=ms_ssim(original, decoded) if with_ms_ssim else math.nan,
    )


def _float_list(values: Sequence[Any] | None) -> list[float]:
    if values is None:
        return []
    return [math.nan if v is None else float(v) for v in values]


def _json_number(x: float) -> float | None:
    return None if (x is None or not math.isfinite(x)) else float(x)


@dataclass
class RDCurve:
    """One rate-distortion curve: one point per setting, each a mean over images.

    ``published`` marks figures copied from others (drawn dashed, labelled
    "(published)"); ``label`` is the unique display / table name.
    Lists ``ms_ssim``, ``encoding_time`` and ``decoding_time`` may be empty or hold
    ``nan`` where unknown.
    """

    name: str
    bpp: list[float]
    psnr: list[float]
    ms_ssim: list[float] = field(default_factory=list)
    encoding_time: list[float] = field(default_factory=list)
    decoding_time: list[float] = field(default_factory=list)
    settings: list[Any] = field(default_factory=list)
    description: str = ""
    published: bool = False

    def __post_init__(self) -> None:
        self.bpp = _float_list(self.bpp)
        self.psnr = _float_list(self.psnr)
        self.ms_ssim = _float_list(self.ms_ssim)
        self.encoding_time = _float_list(self.encoding_time)
        self.decoding_time = _float_list(self.decoding_time)
        if len(self.bpp) != len(self.psnr):
            raise ValueError(
                f"{self.name}: {len(self.bpp)} bpp values but {len(self.psnr)} PSNR values"
            )
        for attr in ("ms_ssim", "encoding_time", "decoding_time"):
            n = len(getattr(self, attr))
            if n not in (0, len(self.bpp)):
                raise ValueError(f"{self.name}: {attr} has {n} values, expected {len(self.bpp)}")

    @property
    def label(self) -> str:
        return f"{self.name} (published)" if self.published else self.name

    def points(self) -> list[tuple[float, float]]:
        """(bpp, psnr) pairs, the input of :mod:`lic.eval.bdrate`."""
        return list(zip(self.bpp, self.psnr))

    def to_compressai_dict(self) -> dict[str, Any]:
        """CompressAI's results schema. Non-finite numbers become ``null``.

        ``settings`` (the codec setting of each point) is an extra top-level key that
        CompressAI's own loaders ignore.
        """
        results: dict[str, list[float | None]] = {
            "bpp": [_json_number(v) for v in self.bpp],
            "psnr-rgb": [_json_number(v) for v in self.psnr],
        }
        if self.ms_ssim:
            results["ms-ssim-rgb"] = [_json_number(v) for v in self.ms_ssim]
        if self.encoding_time:
            results["encoding_time"] = [_json_number(v) for v in self.encoding_time]
        if self.decoding_time:
            results["decoding_time"] = [_json_number(v) for v in self.decoding_time]
        out: dict[str, Any] = {"name": self.name, "description": self.description}
        out["results"] = results
        if self.settings:
            out["settings"] = [
                s if isinstance(s, (int, float, str, bool)) or s is None else str(s)
                for s in self.settings
            ]
        return out

    @classmethod
    def from_compressai_dict(cls, data: dict[str, Any], *, published: bool = False) -> "RDCurve":
        r = data["results"]
        return cls(
            name=str(data.get("name", "?")),
            description=str(data.get("description", "")),
            bpp=r["bpp"],
            psnr=r["psnr-rgb"],
            ms_ssim=r.get("ms-ssim-rgb"),
            encoding_time=r.get("encoding_time"),
            decoding_time=r.get("decoding_time"),
            settings=list(data.get("settings", [])),
            published=published,
        )
