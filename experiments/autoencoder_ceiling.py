"""The quality ceiling of a model's transforms: PSNR of g_s(g_a(x)) with NO quantization, on Kodak,
beside the real codec's PSNR at the model's top mode.

    python -m experiments.autoencoder_ceiling [--checkpoint W] [--images 24] [--threads 2]
    python -m experiments.autoencoder_ceiling --dir ../shared/data/train --stride 24   # training photos instead

If the unquantized autoencoder cannot reproduce an image better than X dB, no mode can: the
upper modes then spend bits for little PSNR.  ``--dir`` runs it on other images (every PNG under
the folder, sorted, every ``--stride``-th): on the training photos it tells whether the model
has merely memorised its training set (much higher there than on Kodak) or is as limited there.

This is how the shipped N = M = 64 model's limit
was found (docs/history.md); run it on any checkpoint to see whether its transforms or its
entropy model limit the top of its curve.
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from lic import codec, io
from lic.eval.metrics import psnr
from lic.weights import load_checkpoint, load_model

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help=".safetensors or .ckpt (default: the shipped default)")
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dir", type=Path, default=REPO.parent / "shared" / "data" / "kodak",
                    help="images to use: every PNG under this folder (default: Kodak)")
    ap.add_argument("--stride", type=int, default=1, help="take every this-many-th image (after sorting)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    net = load_checkpoint(args.checkpoint) if args.checkpoint else load_model().net
    net = net.eval()
    top = float(max(1, net.config.num_modes))
    files = sorted(args.dir.rglob("*.png"))[:: max(1, args.stride)][: args.images]
    if not files:
        ap.error(f"no PNG under {args.dir}")
    rows = []
    for p in files:
        px = io.read_image(p).pixels
        h, w = px.shape[:2]
        x = codec.pad(io.to_tensor(px), net.downsampling)
        with torch.no_grad():
            gains = net._gains(top - 1 if net.config.num_modes > 1 else None, 1, x.device)
            y = net.g_a(x)
            if gains is not None:
                y = y * gains[0] * gains[1]     # the top mode's gain and inverse gain, no rounding between
            ae = io.from_tensor(net.g_s(y)[:, :, :h, :w])
        data = codec.encode_with_net(net, px, top if net.config.num_modes > 1 else None)
        real = codec.decode_with_net(net, data)
        rows.append((p.stem, psnr(ae, px), psnr(real, px), 8 * len(data) / (h * w)))
        print(f"{p.parent.name}/{p.stem}: unquantized {rows[-1][1]:.2f} dB, "
              f"mode {top:g}: {rows[-1][2]:.2f} dB at {rows[-1][3]:.3f} bpp", flush=True)
    print(f"model {net.config.to_dict()}")
    print(f"mean over {len(rows)} images: unquantized g_s(g_a(x)) {statistics.mean(r[1] for r in rows):.2f} dB; "
          f"real file at mode {top:g}: {statistics.mean(r[2] for r in rows):.2f} dB, "
          f"{statistics.mean(r[3] for r in rows):.3f} bpp")


if __name__ == "__main__":
    main()
