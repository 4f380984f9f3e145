"""Race training recipes at equal wall-clock time, then score each on real Kodak files.

    python -m experiments.recipe_race [--race recipes|optimizers] [--minutes 20] [--parallel 2] [--images 8]
                                      [--out logs/race] [--only NAME ...] [--device cpu|gpu]

Each candidate is `train.py experiment=cpu_single lambda=0.0067` plus its overrides, run for the
same `trainer.max_time` from scratch (one torch thread each on the CPU, `--parallel` at a time),
ending with its last checkpoint.  `--race optimizers` races Adam against SOAP (docs/training.md).
Each is then scored on the first `--images` Kodak images with real
files (bpp of the whole file, PSNR), against JPEG (Pillow, 4:2:0) measured on the same images:
"dB over JPEG" is the PSNR gain at the candidate's own bpp (JPEG interpolated in log-bpp).  A
single-rate model gives one point, so this is a gain at one rate, not a BD-rate.

The table (markdown) is printed and written to OUT/race.md; docs/history.md keeps the results.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# name -> overrides on top of experiment=cpu_single lambda=0.0067
RECIPES: dict[str, list[str]] = {
    "N64 crop128 b8 lr3e-4 (issue's baseline)": [],
    "N64 crop256 b8 lr3e-4": ["data.crop=256"],
    "N64 crop64 b32 lr3e-4": ["data.crop=64", "data.batch_size=32"],
    "N64 crop128 b8 lr1e-4": ["optimizer.lr=1e-4"],
    "N64 M192 crop128 b8 lr3e-4": ["+model.model.M=192"],
    "N96 crop128 b8 lr3e-4": ["model.model.N=96"],
}
# the same recipe (N64 crop128 b8 lr3e-4), two optimizers
OPTIMIZERS: dict[str, list[str]] = {
    "Adam lr3e-4": ["optimizer=adam"],
    "SOAP lr3e-4": ["optimizer=soap"],
}
RACES = {"recipes": RECIPES, "optimizers": OPTIMIZERS}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.split(" (")[0]).strip("_")


def train(name: str, overrides: list[str], minutes: float, out: Path, device: str) -> subprocess.Popen:
    run_dir = out / slug(name)
    cmd = [sys.executable, str(REPO / "train.py"), "experiment=cpu_single", "lambda=0.0067",
           f"trainer.max_time=00:00:{int(minutes):02d}:{int(round(minutes % 1 * 60)):02d}",
           "trainer.limit_val_batches=0", "logger=csv", "~callbacks.progress_bar", f"hydra.run.dir={run_dir}",
           *overrides]
    if device == "cpu":
        cmd.append("threads=1")
    else:
        cmd += ["trainer=gpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1" if device == "cpu" else os.environ.get("OMP_NUM_THREADS", "8"))
    log = open(out / f"{slug(name)}.log", "w")
    return subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)


def score(ckpt: Path, images: int, jpeg_curve) -> dict:
    import torch

    from lic.eval.bdrate import gain_at_rate
    from lic.eval.datasets import resolve_dataset
    from lic.eval.lic_codec import LicCodec
    from lic.eval.runner import evaluate

    raw = torch.load(str(ckpt), map_location="cpu", weights_only=True)
    stats = raw.get("lic_train_stats") or {}
    res = evaluate(resolve_dataset("kodak")[:images], [LicCodec.from_checkpoints([str(ckpt)])], None,
                   with_ms_ssim=False, progress=False)
    bpp, psnr = res.curves[0].bpp[0], res.curves[0].psnr[0]
    gain = gain_at_rate(bpp, psnr, *jpeg_curve)
    return {"steps": stats.get("steps"), "pixels": stats.get("pixels_seen"), "seconds": stats.get("train_seconds"),
            "bpp": bpp, "psnr": psnr, "gain": gain}


def jpeg_on(images: int):
    from lic.eval.baselines import available_baselines
    from lic.eval.datasets import resolve_dataset
    from lic.eval.runner import evaluate

    res = evaluate(resolve_dataset("kodak")[:images], available_baselines(["jpeg"]), None,
                   with_ms_ssim=False, progress=False)
    c = res.curves[0]
    return c.bpp, c.psnr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--race", choices=sorted(RACES), default="recipes")
    ap.add_argument("--minutes", type=float, default=20)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--out", default=str(REPO / "logs" / "race"))
    ap.add_argument("--only", nargs="*", default=None, help="candidate names (substrings) to run")
    ap.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--score-only", action="store_true", help="score the runs already in OUT")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    candidates = RACES[args.race]
    names = [n for n in candidates if not args.only or any(s in n for s in args.only)]

    if not args.score_only:
        queue, running = list(names), []
        t0 = time.time()
        while queue or running:
            while queue and len(running) < args.parallel:
                n = queue.pop(0)
                running.append((n, train(n, candidates[n], args.minutes, out, args.device)))
                print(f"[{time.time() - t0:6.0f} s] started {n}", flush=True)
            time.sleep(5)
            for n, p in list(running):
                if p.poll() is not None:
                    running.remove((n, p))
                    print(f"[{time.time() - t0:6.0f} s] finished {n} (exit {p.returncode})", flush=True)

    jpeg = jpeg_on(args.images)
    rows = []
    for n in names:
        ck = out / slug(n) / "checkpoints" / "last.ckpt"
        rows.append((n, score(ck, args.images, jpeg) if ck.exists() else None))
    lines = [f"Each run: {args.minutes:g} min of training from scratch ({args.device}"
             f"{', 1 thread, %d at a time' % args.parallel if args.device == 'cpu' else ''}), "
             f"`experiment=cpu_single lambda=0.0067` + the overrides; scored on {args.images} Kodak images "
             "(real files); dB over JPEG = PSNR gain over Pillow JPEG on the same images at the same bpp.", "",
             "| candidate | overrides | steps | pixels seen | bpp | PSNR (dB) | dB over JPEG |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for n, r in rows:
        ov = " ".join(candidates[n]) or "-"
        if r is None:
            lines.append(f"| {n} | `{ov}` | failed | | | | |")
        else:
            gain = f"{r['gain']:+.2f}" if r["gain"] == r["gain"] else "outside JPEG's bpp range"
            lines.append(f"| {n} | `{ov}` | {r['steps']} | {r['pixels']:.3g} | {r['bpp']:.3f} | {r['psnr']:.2f} | "
                         f"{gain} |")
    text = "\n".join(lines) + "\n"
    (out / "race.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
