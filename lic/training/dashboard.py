"""What each validation shows: reconstructions of fixed validation crops and the run's real RD points.

At every validation (rank 0), from the real files ``LitCodec`` coded for the first
``model.val_real_images`` validation crops (centre crops: the same crops every time):

* ``val/reconstructions``: one image, a row per crop: the original, then the decoded crop at the
  lowest, middle and highest mode (a single-rate model: its one mode);
* ``val/rd_curve``: the run's points (mean real bpp and PSNR over those crops, every mode) drawn
  with JPEG's published Kodak curve (dashed) for scale: the crops are not Kodak, so the gap is a
  scale, not a result;
* ``val/rd_points``: the points as a table (step, mode, bpp, PSNR).

wandb gets images and a table, TensorBoard images and a text table, the CSV logger PNG files and
``rd_points.csv`` in its folder.  Whatever the loggers, the run folder keeps
``validation/rd_points.csv`` (every validation) and the latest two pictures.
"""
from __future__ import annotations

import csv
import functools
from pathlib import Path

import numpy as np

GAP = 4   # pixels of white between the tiles of the panel


def panel_modes(modes: list[float]) -> list[float]:
    """The modes drawn in the panel: lowest, middle, highest (fewer when the model has fewer)."""
    return sorted({modes[0], modes[(len(modes) - 1) // 2], modes[-1]})


def reconstruction_panel(originals: list[np.ndarray], decoded: dict[float, list[np.ndarray]]) -> np.ndarray:
    """(rows x (1 + modes)) tiles, white gaps: original | decoded at each panel mode.  uint8 (H, W, 3)."""
    modes = panel_modes(sorted(decoded))
    rows = []
    for i, orig in enumerate(originals):
        tiles = [orig] + [decoded[m][i] for m in modes]
        h = max(t.shape[0] for t in tiles)
        gap = np.full((h, GAP, 3), 255, np.uint8)
        row = [x for t in tiles for x in (np.pad(t, ((0, h - t.shape[0]), (0, 0), (0, 0)), constant_values=255), gap)]
        rows.append(np.concatenate(row[:-1], axis=1))
    w = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, GAP), (0, w - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    return np.concatenate(rows, axis=0)[:-GAP]


@functools.lru_cache(maxsize=1)
def jpeg_reference():
    """JPEG's published Kodak curve (``<shared>/reference/kodak/jpeg.json``), or None where it is absent."""
    from lic.eval.plot import load_reference_curves

    try:
        curves = load_reference_curves(["jpeg"])
    except FileNotFoundError:
        return None
    return curves[0] if curves else None


def rd_picture(points: list[dict], step: int) -> np.ndarray:
    """The run's RD points and JPEG's published Kodak curve, rendered: uint8 (H, W, 3)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from lic.eval.metrics import RDCurve
    from lic.eval.plot import rd_figure

    run = RDCurve(name=f"this run, step {step} (validation crops)",
                  bpp=[p["bpp"] for p in points], psnr=[p["psnr"] for p in points])
    ref = jpeg_reference()
    curves = [run] + ([RDCurve(name="JPEG, Kodak", bpp=ref.bpp, psnr=ref.psnr, published=True)] if ref else [])
    fig = rd_figure(curves, title=f"real files at step {step}", figsize=(6.4, 4.8), dpi=80)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _save_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _append_rows(path: Path, rows: list[list]) -> None:
    new = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["step", "mode", "bpp", "psnr"])
        w.writerows(rows)


def log_validation(trainer, step: int, real: dict) -> None:
    """Send one validation's panel, RD picture and RD table to every logger of ``trainer``."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

    panel = reconstruction_panel(real["originals"], real["decoded"])
    rd = rd_picture(real["points"], step)
    rows = [[step, p["mode"], round(p["bpp"], 5), round(p["psnr"], 3)] for p in real["points"]]
    modes = ", ".join(f"{m:g}" for m in panel_modes(sorted(real["decoded"])))
    caption = f"step {step}: original | decoded at mode {modes} (real files)"
    folder = Path(trainer.default_root_dir) / "validation"
    _append_rows(folder / "rd_points.csv", rows)
    _save_png(folder / "reconstructions.png", panel)
    _save_png(folder / "rd_curve.png", rd)
    for lg in trainer.loggers:
        if isinstance(lg, WandbLogger):
            lg.log_image(key="val/reconstructions", images=[panel], caption=[caption], step=step)
            lg.log_image(key="val/rd_curve", images=[rd], step=step)
            lg.log_table(key="val/rd_points", columns=["step", "mode", "bpp", "psnr"], data=rows, step=step)
        elif isinstance(lg, TensorBoardLogger):
            lg.experiment.add_image("val/reconstructions", panel, step, dataformats="HWC")
            lg.experiment.add_image("val/rd_curve", rd, step, dataformats="HWC")
            table = "| mode | bpp | PSNR |\n|---:|---:|---:|\n" + "\n".join(
                f"| {r[1]:g} | {r[2]} | {r[3]} |" for r in rows)
            lg.experiment.add_text("val/rd_points", table, step)
        elif isinstance(lg, CSVLogger):
            d = Path(lg.log_dir)
            _save_png(d / "val_images" / f"step{step:07d}.png", panel)
            _save_png(d / "val_images" / f"rd_step{step:07d}.png", rd)
            _append_rows(d / "rd_points.csv", rows)
