"""Rate-distortion plots, reference-curve loaders and the side-by-side figure.

Uses matplotlib's object API with the Agg canvas (no pyplot global state, no display
needed).  Measured curves are drawn solid with markers; published reference curves
(``RDCurve.published``) dashed, labelled "<name> (published)".

Figures are written at a fixed pixel size (``figsize * dpi``; no tight bounding box),
as PNG and SVG side by side: ``plot_rd(curves, "out/rd_psnr")`` writes
``out/rd_psnr.png`` and ``out/rd_psnr.svg``.
"""

from __future__ import annotations

import json
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lic.eval.datasets import read_pixels, reference_dir, resolve_dataset
from lic.eval.metrics import RDCurve, psnr

__all__ = [
    "SideBySideRow",
    "load_curve",
    "load_dat",
    "load_reference_curves",
    "load_reference_json",
    "plot_rd",
    "rd_figure",
    "side_by_side",
    "side_by_side_rows",
    "side_by_side_standard",
]

#: The reference curves drawn by default (stems of files in shared/reference/kodak/).
DEFAULT_REFERENCES = (
    "jpeg",
    "webp",
    "jpeg2000",
    "bpg_444_x265_ycbcr",
    "vtm",
    "compressai-cheng2020-attn_mse_cpu",
    "cheng2020-paper-gmm-attn_mse",
)


# --------------------------------------------------------------------------- loaders


def load_reference_json(path: str | Path, *, published: bool = True) -> RDCurve:
    """A CompressAI results JSON (``{"name", "description", "results": {...}}``)."""
    with open(path, encoding="utf-8") as f:
        return RDCurve.from_compressai_dict(json.load(f), published=published)


def load_dat(path: str | Path, name: str | None = None, *, published: bool = True) -> RDCurve:
    """A whitespace-separated ``bpp psnr`` table (e.g. the Cheng 2020 paper's RDdata)."""
    path = Path(path)
    rows = np.loadtxt(path, dtype=np.float64, ndmin=2)
    if rows.shape[1] < 2:
        raise ValueError(f"{path}: expected at least 2 columns (bpp psnr)")
    if name is None:
        name = {
            "cheng2020-paper-gmm-attn_mse": "Cheng2020 GMM+attn (paper)",
        }.get(path.stem, path.stem)
    return RDCurve(
        name=name,
        bpp=rows[:, 0].tolist(),
        psnr=rows[:, 1].tolist(),
        description=f"from {path.name}",
        published=published,
    )


def load_curve(path: str | Path, *, published: bool = True) -> RDCurve:
    """A ``.json`` (CompressAI schema) or ``.dat`` (bpp psnr) curve."""
    path = Path(path)
    if path.suffix == ".dat":
        return load_dat(path, published=published)
    return load_reference_json(path, published=published)


def load_reference_curves(
    names: Iterable[str] | None = DEFAULT_REFERENCES, directory: str | Path | None = None
) -> list[RDCurve]:
    """Published Kodak curves from ``shared/reference/kodak`` by file stem.

    ``names=None`` loads every ``.json`` and ``.dat`` there.  Returns ``[]`` when the
    directory is absent; a named file that is missing raises ``FileNotFoundError``.
    """
    if directory is None:
        directory = reference_dir()
    directory = Path(directory)
    if not directory.is_dir():
        return []
    if names is None:
        files = sorted(p for p in directory.iterdir() if p.suffix in (".json", ".dat"))
    else:
        files = []
        for n in names:
            for ext in (".json", ".dat", ""):
                p = directory / f"{n}{ext}"
                if p.is_file():
                    files.append(p)
                    break
            else:
                raise FileNotFoundError(f"no reference curve {n!r} in {directory}")
    return [load_curve(p) for p in files]


# --------------------------------------------------------------------------- RD plots


def _new_figure(figsize: tuple[float, float], dpi: int) -> Figure:
    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, stem: Path, formats: Sequence[str], dpi: int) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        p = stem.with_name(stem.name + "." + fmt)
        fig.savefig(p, format=fmt, dpi=dpi)
        paths.append(p)
    return paths


def _metric_values(curve: RDCurve, metric: str, ms_ssim_db: bool) -> list[float]:
    if metric == "psnr":
        return curve.psnr
    if metric == "ms-ssim":
        vals = curve.ms_ssim
        if ms_ssim_db:
            return [
                -10.0 * math.log10(1.0 - v) if (math.isfinite(v) and v < 1.0) else math.nan
                for v in vals
            ]
        return vals
    raise ValueError(f"unknown metric {metric!r}; use 'psnr' or 'ms-ssim'")


def rd_figure(
    curves: Sequence[RDCurve],
    *,
    metric: str = "psnr",
    title: str | None = None,
    ms_ssim_db: bool = True,
    xlim: tuple[float, float] | None = None,
    ylim: tuple[float, float] | None = None,
    figsize: tuple[float, float] = (8.0, 6.0),
    dpi: int = 100,
) -> Figure:
    """The RD figure of :func:`plot_rd`, not yet saved."""
    fig = _new_figure(figsize, dpi)
    ax = fig.add_subplot(1, 1, 1)
    drawn = 0
    if len(curves) <= 10:
        colors = [f"C{i}" for i in range(len(curves))]
    else:
        from matplotlib import colormaps

        # the 10 saturated tab20 hues first, then their light variants
        tab20 = colormaps["tab20"]
        order = list(range(0, 20, 2)) + list(range(1, 20, 2))
        colors = [tab20(order[i % 20]) for i in range(len(curves))]
    for i, c in enumerate(curves):
        ys = np.asarray(_metric_values(c, metric, ms_ssim_db), dtype=np.float64)
        if len(ys) != len(c.bpp):
            continue
        xs = np.asarray(c.bpp, dtype=np.float64)
        ok = np.isfinite(xs) & np.isfinite(ys)
        if not ok.any():
            continue
        order = np.argsort(xs[ok])
        style: dict[str, Any] = (
            {"linestyle": "--", "marker": None, "linewidth": 1.4, "alpha": 0.9}
            if c.published
            else {"linestyle": "-", "marker": "o", "markersize": 3.5, "linewidth": 1.8}
        )
        ax.plot(xs[ok][order], ys[ok][order], label=c.label, color=colors[i], **style)
        drawn += 1
    ax.set_xlabel("bits per pixel (bpp)")
    if metric == "psnr":
        ax.set_ylabel("PSNR RGB (dB)")
    else:
        ax.set_ylabel("MS-SSIM RGB (dB)" if ms_ssim_db else "MS-SSIM RGB")
    ax.set_title(title or ("PSNR" if metric == "psnr" else "MS-SSIM") + " vs rate")
    ax.grid(True, alpha=0.3)
    if xlim:
        ax.set_xlim(*xlim)
    if ylim:
        ax.set_ylim(*ylim)
    if drawn:
        ax.legend(loc="lower right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    return fig


def plot_rd(
    curves: Sequence[RDCurve],
    path: str | Path,
    *,
    metric: str = "psnr",
    title: str | None = None,
    ms_ssim_db: bool = True,
    xlim: tuple[float, float] | None = None,
    ylim: tuple[float, float] | None = None,
    figsize: tuple[float, float] = (8.0, 6.0),
    dpi: int = 100,
    formats: Sequence[str] = ("png", "svg"),
) -> list[Path]:
    """Draw RD curves (``metric`` "psnr" or "ms-ssim" against bpp); return written files.

    ``path`` is the file stem; an extension, if given, is replaced by each of
    ``formats``.  MS-SSIM is shown in dB (``-10 log10(1 - MS-SSIM)``) unless
    ``ms_ssim_db=False``.  Curves without finite values for the metric are left out.
    The PNG is ``figsize * dpi`` pixels (default 800 x 600).
    """
    stem = Path(path)
    if stem.suffix.lower() in (".png", ".svg", ".pdf"):
        stem = stem.with_suffix("")
    fig = rd_figure(
        curves, metric=metric, title=title, ms_ssim_db=ms_ssim_db, xlim=xlim, ylim=ylim,
        figsize=figsize, dpi=dpi,
    )
    return _save(fig, stem, formats, dpi)


# --------------------------------------------------------------------------- side by side


@dataclass
class SideBySideRow:
    """One row of the side-by-side figure: an original and two reconstructions."""

    title: str
    original: np.ndarray
    codec_name: str
    codec_pixels: np.ndarray
    codec_bpp: float
    jpeg_pixels: np.ndarray
    jpeg_bpp: float
    jpeg_setting: Any = None

    @property
    def codec_psnr(self) -> float:
        return psnr(self.original, self.codec_pixels)

    @property
    def jpeg_psnr(self) -> float:
        return psnr(self.original, self.jpeg_pixels)


def _closest_jpeg(pixels: np.ndarray, target_bpp: float, jpeg: Any) -> tuple[Any, bytes]:
    """The JPEG setting whose file size is closest to ``target_bpp``."""
    h, w = pixels.shape[:2]
    best: tuple[float, Any, bytes] | None = None
    for s in jpeg.settings:
        data = jpeg.encode(pixels, s)
        d = abs(8.0 * len(data) / (h * w) - target_bpp)
        if best is None or d < best[0]:
            best = (d, s, data)
    assert best is not None
    return best[1], best[2]


def side_by_side_rows(
    images: dict[str, np.ndarray], codec: Any, setting: Any, jpeg: Any = None
) -> list[SideBySideRow]:
    """Encode each image with ``codec`` at ``setting`` and JPEG at the closest bpp."""
    if jpeg is None:
        from lic.eval.baselines import JPEG

        jpeg = JPEG(settings=list(range(1, 101)))
    rows = []
    for title, pixels in images.items():
        h, w = pixels.shape[:2]
        data = codec.encode(pixels, setting)
        rec = np.asarray(codec.decode(data))
        cbpp = 8.0 * len(data) / (h * w)
        q, jdata = _closest_jpeg(pixels, cbpp, jpeg)
        rows.append(
            SideBySideRow(
                title=title,
                original=pixels,
                codec_name=getattr(codec, "name", "codec"),
                codec_pixels=rec,
                codec_bpp=cbpp,
                jpeg_pixels=np.asarray(jpeg.decode(jdata)),
                jpeg_bpp=8.0 * len(jdata) / (h * w),
                jpeg_setting=q,
            )
        )
    return rows


def side_by_side(
    rows: Sequence[SideBySideRow],
    path: str | Path,
    *,
    panel_inches: float = 4.0,
    dpi: int = 100,
    formats: Sequence[str] = ("png",),
) -> list[Path]:
    """One row per image: original | this codec | JPEG, titles with bpp and PSNR."""
    if not rows:
        raise ValueError("no rows to draw")
    stem = Path(path)
    if stem.suffix.lower() in (".png", ".svg", ".pdf"):
        stem = stem.with_suffix("")
    n = len(rows)
    fig = _new_figure((3 * panel_inches, n * (panel_inches + 0.5)), dpi)
    axes = fig.subplots(n, 3, squeeze=False)
    for r, row in enumerate(rows):
        jq = f", q={row.jpeg_setting}" if row.jpeg_setting is not None else ""
        panels = [
            (row.original, f"{row.title}: original"),
            (row.codec_pixels, f"{row.codec_name}: {row.codec_bpp:.3f} bpp, {row.codec_psnr:.2f} dB"),
            (row.jpeg_pixels, f"JPEG{jq}: {row.jpeg_bpp:.3f} bpp, {row.jpeg_psnr:.2f} dB"),
        ]
        for c, (img, title) in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(np.asarray(img), interpolation="nearest")
            ax.set_title(textwrap.fill(title, 52), fontsize=9)   # long curve labels: two lines, not overlap
            ax.set_axis_off()
    return _save(fig, stem, formats, dpi)


def side_by_side_standard(
    codec: Any,
    setting: Any,
    path: str | Path,
    *,
    names: Sequence[str] = ("lena", "peppers", "baboon"),
    dataset: str | Path = "standard",
    **kwargs: Any,
) -> list[Path]:
    """The side-by-side figure for Lena / Peppers / Baboon from ``shared/data/standard``.

    (Lena is fine for internal comparison; leave it out of published figures with
    ``names=("peppers", "baboon")``, see shared/data/README.md.)
    """
    files = {p.stem.lower(): p for p in resolve_dataset(dataset)}
    missing = [n for n in names if n not in files]
    if missing:
        raise FileNotFoundError(f"not in {dataset}: {missing}")
    images = {n.capitalize(): read_pixels(files[n]) for n in names}
    return side_by_side(side_by_side_rows(images, codec, setting), path, **kwargs)
