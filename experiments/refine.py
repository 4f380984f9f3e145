"""What encoder-side latent refinement (``encode.py --refine STEPS``, lic.refine) buys, and what it
costs: real files of Kodak images at a few modes, for several step counts.

    python -m experiments.refine [--images 3] [--modes 1 4 8] [--steps 0 10 25 50] [--proxies sga]
                           [--crop WxH] [--threads 1] [--checkpoint W]

For every (mode, proxy, steps): mean real bpp, mean PSNR, the change against steps = 0 (same
images), and the mean encode time; each file is decoded by the ordinary decoder.  ``--proxies``
compares the stand-ins for rounding (lic.refine.PROXIES); ``--crop`` codes the top-left WxH of
each image (faster).  Figures: docs/refine.md.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from lic import codec, io
from lic.eval.metrics import psnr
from lic.refine import PROXIES, RefineConfig
from lic.weights import fingerprint, load_checkpoint, load_model

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help=".safetensors or .ckpt (default: the shipped default)")
    ap.add_argument("--images", type=int, default=3, help="the first N Kodak images")
    ap.add_argument("--modes", type=float, nargs="+", default=[1, 4, 8])
    ap.add_argument("--steps", type=int, nargs="+", default=[0, 10, 25, 50])
    ap.add_argument("--proxies", nargs="+", default=["sga"], choices=sorted(PROXIES))
    ap.add_argument("--crop", default=None, help="WxH: code only the top-left WxH pixels of each image")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    net = load_checkpoint(args.checkpoint) if args.checkpoint else load_model().net
    fp = fingerprint(net)
    files = sorted((REPO.parent / "shared" / "data" / "kodak").glob("*.png"))[: args.images]
    images = [(p.stem, io.read_image(p).pixels) for p in files]
    if args.crop:
        w, h = (int(v) for v in args.crop.lower().split("x"))
        images = [(name, np.ascontiguousarray(px[:h, :w])) for name, px in images]
    steps = sorted(set([0] + args.steps))
    size = "x".join(map(str, images[0][1].shape[1::-1]))
    print(f"{len(images)} Kodak images ({size}), {args.threads} thread(s); real files, ordinary decoder")
    print("| mode | proxy | steps | bpp | PSNR (dB) | bits vs 0 steps | PSNR vs 0 steps | encode (s) |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for mode in args.modes:
        base = None
        for proxy, s in [("-", 0)] + [(p, s) for p in args.proxies for s in steps if s]:
            rows = []
            for _, px in images:
                t = time.perf_counter()
                refine = RefineConfig(steps=s, proxy=proxy) if s else None
                data = codec.encode_with_net(net, px, mode, fp, refine=refine)
                seconds = time.perf_counter() - t
                out = codec.decode_with_net(net, data, fp=fp)
                rows.append((8 * len(data) / (px.shape[0] * px.shape[1]), psnr(out, px), seconds))
            bpp, db, sec = (statistics.mean(r[i] for r in rows) for i in range(3))
            if base is None:
                base = rows
            dbits = statistics.mean(r[0] / b[0] - 1 for r, b in zip(rows, base))
            ddb = statistics.mean(r[1] - b[1] for r, b in zip(rows, base))
            print(f"| {mode:g} | {proxy} | {s} | {bpp:.4f} | {db:.2f} | {100 * dbits:+.1f} % | {ddb:+.2f} "
                  f"| {sec:.1f} |", flush=True)


if __name__ == "__main__":
    main()
