"""The trained zoo: recorded reference results for every shipped mode, and the progress table.

    python -m lic.zoo record                 # store bpp / PSNR of a fixed real crop for every shipped mode
    python -m lic.zoo check                  # re-measure them (what tests/test_zoo.py does)
    python -m lic.zoo progress CKPT [CKPT ...] [--limit N]
        # evaluate checkpoints on Kodak (real bitstreams), append rows to logs/zoo_progress.md:
        # steps, images / pixels seen, compute hours, mean bpp / PSNR per mode, BD-rate vs JPEG

The reference crop is 128x128 pixels of Kodak's kodim05 at (128, 128), from ../shared/data/kodak.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from lic import codec
from lic.eval.metrics import psnr
from lic.weights import read_registry, weights_dir

CHECK_IMAGE = ("kodak", "kodim05.png", 128, 128, 128)   # dataset, file, top, left, size
BPP_RTOL = 0.02      # recorded values are from this machine; other CPUs may differ in the last bits of g_a
PSNR_ATOL = 0.05


def check_pixels() -> np.ndarray:
    from lic import io
    from lic.eval.datasets import shared_dir

    ds, name, top, left, size = CHECK_IMAGE
    px = io.read_image(shared_dir() / "data" / ds / name).pixels
    return px[top:top + size, left:left + size].copy()


def measure(net, pixels: np.ndarray, mode: float, fp: int | None = None) -> tuple[float, float]:
    """(bpp of the whole file, PSNR dB) of one real encode + decode."""
    data = codec.encode_with_net(net, pixels, mode, fp)
    out = codec.decode_with_net(net, data, fp=fp)
    h, w = pixels.shape[:2]
    return 8 * len(data) / (h * w), psnr(pixels, out)


def measure_shipped() -> list[dict]:
    """[{name, file, mode, bpp, psnr}] for every mode of every registry model."""
    from lic.weights import load_entry

    px = check_pixels()
    rows = []
    for e in read_registry():
        lm = load_entry(e)   # this entry's own file: several entries may share a model name
        for m in e["modes"]:
            bpp, psnr = measure(lm.net, px, float(m), lm.fingerprint)
            rows.append({"name": e["name"], "file": e["file"], "mode": m, "bpp": bpp, "psnr": psnr})
    return rows


def record() -> None:
    path = weights_dir() / "registry.json"
    reg = json.loads(path.read_text())
    rows = measure_shipped()
    for e in reg["models"]:
        e["check"] = {"image": "/".join(map(str, CHECK_IMAGE[:2])), "top": CHECK_IMAGE[2], "left": CHECK_IMAGE[3],
                      "size": CHECK_IMAGE[4],
                      "modes": {str(r["mode"]): {"bpp": round(r["bpp"], 6), "psnr": round(r["psnr"], 4)}
                                for r in rows if r["file"] == e["file"]}}
    path.write_text(json.dumps(reg, indent=2) + "\n")
    for r in rows:
        print(f"{r['file']} mode {r['mode']}: {r['bpp']:.4f} bpp, {r['psnr']:.2f} dB")


def lineage(stats: dict) -> list[dict]:
    """The training legs behind a checkpoint's ``lic_train_stats``: itself, then what it was
    initialised from (``init_from``), and so on; each leg's own stats."""
    legs = []
    while isinstance(stats, dict) and stats:
        legs.append(stats)
        stats = (stats.get("init_from") or {}).get("trained")
    return legs


def _sum(legs: list[dict], key: str, fmt: str = "") -> str:
    vals = [leg.get(key) for leg in legs]
    if not vals or any(not isinstance(v, (int, float)) for v in vals):
        return "?"
    return format(sum(vals), fmt)


def _compute(legs: list[dict]) -> str:
    """Training time per device over all legs, e.g. '0.18 h cuda:NVIDIA H200 + 1.54 h cpu'."""
    per: dict[str, float] = {}
    for leg in legs:
        if isinstance(leg.get("train_seconds"), (int, float)):
            dev = leg.get("device") or "?"
            per[dev] = per.get(dev, 0.0) + leg["train_seconds"] / 3600
    return " + ".join(f"{h:.2f} h {d}" for d, h in per.items()) or "?"


def progress(ckpts: list[str], limit: int | None, out_md: Path) -> None:
    import torch

    from lic.eval.bdrate import bd_rate
    from lic.eval.datasets import resolve_dataset
    from lic.eval.lic_codec import LicCodec
    from lic.eval.plot import load_reference_curves
    from lic.eval.runner import evaluate

    files = resolve_dataset("kodak")[:limit] if limit else resolve_dataset("kodak")
    jpeg = load_reference_curves(["jpeg"])[0]
    out_md.parent.mkdir(parents=True, exist_ok=True)
    new = not out_md.exists()
    with out_md.open("a") as f:
        if new:
            f.write("# Zoo progress: Kodak results of exported checkpoints (real bitstreams)\n\n"
                    "Made by `python -m lic.zoo progress CKPT...`; BD-rate (PCHIP) vs the published Pillow JPEG "
                    "curve (`../shared/reference/kodak/jpeg.json`) over the PSNR range both curves cover "
                    "(in brackets); bpp / PSNR per mode are means over the images.\n\n"
                    "| checkpoint | steps | images seen | pixels seen | compute | images | bpp per mode "
                    "| PSNR per mode | BD-rate vs JPEG |\n"
                    "|---|---:|---:|---:|---|---:|---|---|---:|\n")
        for ck in ckpts:
            raw = torch.load(ck, map_location="cpu", weights_only=True) if ck.endswith(".ckpt") else {}
            # a checkpoint from before lic_train_stats: its step count only
            legs = lineage(raw.get("lic_train_stats") or {}) or [{"steps": raw.get("global_step")}]
            lc = LicCodec.from_checkpoints([ck])
            res = evaluate(files, [lc], None, with_ms_ssim=False, progress=False)
            c = res.curves[0]
            bd = bd_rate(jpeg, c)
            lo, hi = max(min(c.psnr), min(jpeg.psnr)), min(max(c.psnr), max(jpeg.psnr))
            f.write(f"| `{ck}` | {_sum(legs, 'steps')} | {_sum(legs, 'images_seen')} "
                    f"| {_sum(legs, 'pixels_seen', '.3g')} | {_compute(legs)} | {len(files)} | "
                    f"{' / '.join(f'{b:.3f}' for b in c.bpp)} | {' / '.join(f'{p:.2f}' for p in c.psnr)} | "
                    f"{bd:+.1f} % ({lo:.1f}-{hi:.1f} dB) |\n")
            f.flush()
            print(f"{ck}: BD-rate vs JPEG {bd:+.1f} %, bpp {c.bpp}, PSNR {c.psnr}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lic.zoo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("record")
    sub.add_parser("check")
    p = sub.add_parser("progress")
    p.add_argument("ckpts", nargs="+")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "logs" / "zoo_progress.md"),
                   help="the markdown table to append to (docs/history.md keeps the shipped models' rows)")
    args = ap.parse_args(argv)
    if args.cmd == "record":
        record()
    elif args.cmd == "check":
        bad = 0
        recorded = {(e["file"], str(m)): v for e in read_registry()
                    for m, v in e.get("check", {}).get("modes", {}).items()}
        for r in measure_shipped():
            ref = recorded.get((r["file"], str(r["mode"])))
            ok = ref is not None and math.isclose(r["bpp"], ref["bpp"], rel_tol=BPP_RTOL) \
                and abs(r["psnr"] - ref["psnr"]) <= PSNR_ATOL
            bad += not ok
            print(f"{'ok ' if ok else 'BAD'} {r['file']} mode {r['mode']}: {r['bpp']:.4f} bpp, {r['psnr']:.2f} dB "
                  f"(recorded {ref})")
        return 1 if bad else 0
    else:
        progress(args.ckpts, args.limit, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
