"""Would a per-image update of part of g_s, sent in the file, pay for its bits?  (A probe.)

    python -m experiments.decoder_adapt [--images 3] [--modes 6 8] [--steps 200] [--subsets biases last_conv]

Instance-adaptive compression (van Rozendaal, Huijben & Cohen, ICLR 2021, "Overfitting for Fun
and Profit") fine-tunes part of the decoder on the one image being coded and sends the update.
This probe measures what that could buy here, before any format change: for each Kodak image
and mode, y_hat is the ordinary encoder's (rounded, exactly what the file codes), the decoder is
frozen except for one subset of g_s's parameters, and Adam fits that subset to the image's MSE
for ``--steps`` steps.  The update (new minus shipped weights) is then quantized uniformly with
each step of ``--delta`` and the reconstruction redone with the quantized update; its cost is ESTIMATED
as the update's empirical zeroth-order entropy (a histogram of the integers, the histogram itself
free), an optimistic stand-in for a real coder.  Printed per image: the file's real bpp, the
estimated update bits as a share of it, and PSNR before / after (8-bit, real decode's rounding).

Subsets: ``biases`` (every bias of g_s), ``last_conv`` (the final sub-pixel convolution),
``first_block`` (g_s's 1/16-resolution attention and residual blocks), ``all`` (every weight of
g_s: more parameters than the image has pixels, so a memorisation bound, not a codec).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from lic import codec, io
from lic.entropy.quantize import QuantMode, quantize
from lic.eval.metrics import psnr
from lic.weights import load_checkpoint, load_model

REPO = Path(__file__).resolve().parents[1]


def subset(net: torch.nn.Module, name: str) -> list[torch.nn.Parameter]:
    g_s = net.g_s
    if name == "biases":
        return [p for k, p in g_s.named_parameters() if k.endswith("bias")]
    if name == "last_conv":
        return list(g_s[-1].parameters())
    if name == "first_block":
        return list(g_s[0].parameters()) + list(g_s[1].parameters())
    if name == "all":
        return list(g_s.parameters())
    raise SystemExit(f"unknown subset {name!r}")


def psnr8(x_hat: torch.Tensor, px: np.ndarray) -> float:
    h, w = px.shape[:2]
    return psnr(px, io.from_tensor(x_hat[:, :, :h, :w]))


def entropy_bits(q: np.ndarray) -> float:
    _, counts = np.unique(q, return_counts=True)
    p = counts / counts.sum()
    return max(0.0, float(-(counts * np.log2(p)).sum()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help=".safetensors or .ckpt (default: the shipped default)")
    ap.add_argument("--images", type=int, default=3, help="the first N Kodak images")
    ap.add_argument("--modes", type=float, nargs="+", default=[6.0, 8.0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--delta", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2],
                    help="quantization steps of the update to try (each on the same fit)")
    ap.add_argument("--subsets", nargs="+", default=["biases", "last_conv"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = load_checkpoint(args.checkpoint) if args.checkpoint else load_model().net
    base = base.float().eval()
    files = sorted((REPO.parent / "shared" / "data" / "kodak").glob("*.png"))[: args.images]
    summary: dict[tuple[str, float, float], list[tuple[float, float]]] = {}
    for path in files:
        px = io.read_image(path).pixels
        h, w = px.shape[:2]
        x = codec.pad(io.to_tensor(px), base.downsampling)   # (1, 3, H, W), H, W multiples of 64
        for mode in args.modes:
            bpp = 8 * len(codec.encode_with_net(base, px, mode)) / (h * w)
            with torch.no_grad():
                gains = base._gains(mode - 1, 1, x.device)
                y_hat = quantize(base.g_a(x) * gains[0], QuantMode.ROUND)   # (1, M, H/16, W/16)
                before = psnr8(base.synthesize(y_hat, gains), px)
            for name in args.subsets:
                net = copy.deepcopy(base)
                net.requires_grad_(False)
                params = subset(net, name)
                start = [p.detach().clone() for p in params]
                for p in params:
                    p.requires_grad_(True)
                opt = torch.optim.Adam(params, lr=args.lr)
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    x_hat = net.synthesize(y_hat, gains)[:, :, :h, :w]
                    loss = torch.mean((x_hat - x[:, :, :h, :w]) ** 2)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                fitted = [p.detach().clone() for p in params]
                n = sum(p.numel() for p in params)
                seconds = time.perf_counter() - t0
                for delta in args.delta:
                    with torch.no_grad():
                        q = [torch.round((f - s) / delta) for f, s in zip(fitted, start)]
                        for p, s, qi in zip(params, start, q):
                            p.copy_(s + qi * delta)
                        after = psnr8(net.synthesize(y_hat, gains), px)
                    bits = entropy_bits(torch.cat([qi.flatten() for qi in q]).numpy())
                    share = bits / (bpp * h * w)
                    summary.setdefault((name, mode, delta), []).append((share, after - before))
                    print(f"{path.stem} mode {mode:g} {name} delta {delta:g}: {n} parameters, file {bpp:.3f} bpp, "
                          f"update ~{bits / 8:.0f} bytes (+{100 * share:.1f} % bits), "
                          f"PSNR {before:.2f} -> {after:.2f} dB ({seconds:.0f} s)", flush=True)
    for (name, mode, delta), rows in summary.items():
        print(f"mean, mode {mode:g}, {name}, delta {delta:g}: "
              f"+{100 * statistics.mean(r[0] for r in rows):.1f} % bits (estimate), "
              f"{statistics.mean(r[1] for r in rows):+.2f} dB over {len(rows)} images")


if __name__ == "__main__":
    main()
