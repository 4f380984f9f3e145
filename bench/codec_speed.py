"""Codec speed on Kodak: this codec (checkerboard and serial contexts) against CompressAI's
cheng2020_attn (N=128, random init after update()), in the same run, seconds per image.

    python -m bench.codec_speed [--images 3] [--N 64] [--M 192] [--threads 2] [--weights shipped|random]
                                [--modes 1 2 3 4 5 6] [--checkpoint W ...]

With --weights shipped (default when weights/registry.json has a model) the checkerboard
row uses the shipped default model (at --mode, or at each of --modes); otherwise random-init
models of width N are timed.  --M adds a random-init checkerboard model with M latent channels
(its bpp is not a trained model's, so its entropy-coding time is only indicative).
Times include entropy coding and the container, not model loading (nor the weights fingerprint,
which the CLIs compute once when they load a model); bpp is real file bytes.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from lic import codec, container, io
from lic.models import Cheng2020GMM, ModelConfig
from lic.weights import fingerprint

REPO = Path(__file__).resolve().parents[1]


def timed(fn, *a, **kw):
    t = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t


def bench_lic(name, net, images, mode, version=None, adapt_layer=False):
    enc, dec, bpp = [], [], []
    fp = fingerprint(net)   # computed once, as encode.py / decode.py do when they load the weights
    version = version or container.VERSION
    for px in images:
        data, te = timed(codec.encode_with_net, net, px, mode, fp, version=version, adapt_layer=adapt_layer)
        out, td = timed(codec.decode_with_net, net, data, None, fp)
        enc.append(te), dec.append(td), bpp.append(8 * len(data) / (px.shape[0] * px.shape[1]))
    return name, statistics.mean(enc), statistics.mean(dec), statistics.mean(bpp)


def bench_compressai(images):
    from compressai.zoo import cheng2020_attn

    net = cheng2020_attn(quality=3, pretrained=False).eval()   # N=128
    net.update(force=True)
    enc, dec, bpp = [], [], []
    for px in images:
        x = codec.pad(io.to_tensor(px), 64)   # CompressAI's cheng2020_attn downsamples by 64
        with torch.no_grad():
            c, te = timed(net.compress, x)
            _, td = timed(net.decompress, c["strings"], c["shape"])
        nbytes = sum(len(s[0]) for s in c["strings"])
        enc.append(te), dec.append(td), bpp.append(8 * nbytes / (px.shape[0] * px.shape[1]))
    name = "compressai cheng2020_attn N=128 (random init)"
    return name, statistics.mean(enc), statistics.mean(dec), statistics.mean(bpp)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--N", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mode", type=float, default=3.0)
    ap.add_argument("--modes", type=float, nargs="*", default=None, help="time the shipped model at each of these")
    ap.add_argument("--M", type=int, default=None,
                    help="also time a random-init checkerboard model with M latent channels")
    ap.add_argument("--weights", choices=["shipped", "random"], default=None)
    ap.add_argument("--checkpoint", nargs="*", default=[],
                    help="also time these weights (.safetensors / .ckpt) at --mode / --modes")
    ap.add_argument("--skip-serial", action="store_true")
    ap.add_argument("--skip-compressai", action="store_true")
    ap.add_argument("--format-versions", type=int, nargs="*", default=None,
                    help="time the shipped model writing each of these .lic versions (default: the current; "
                         "1: tables from the float32 networks, 2: the exact ones)")
    ap.add_argument("--adapt", action="store_true",
                    help="also time the shipped model with encode.py --adapt (per-image last layer, lic.adapt)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    kodak = sorted((REPO.parent / "shared" / "data" / "kodak").glob("*.png"))[: args.images]
    images = [io.read_image(p).pixels for p in kodak]
    print(f"{len(images)} Kodak images, torch threads {args.threads}, {torch.__version__}")

    rows = []
    from lic.eval.lic_codec import widths_label
    from lic.weights import load_model, read_registry
    use_shipped = args.weights == "shipped" or (args.weights is None and read_registry())
    if use_shipped:
        for mode in args.modes or [args.mode]:
            loaded = load_model(mode=mode)
            for v in args.format_versions or [container.VERSION]:
                tag = f" v{v}" if args.format_versions else ""
                rows.append(bench_lic(f"lic shipped {loaded.name} {widths_label(loaded.net.config)} mode {mode:g}{tag}",
                                      loaded.net, images, mode, v))
            if args.adapt:
                name = f"lic shipped {loaded.name} {widths_label(loaded.net.config)} mode {mode:g} --adapt"
                rows.append(bench_lic(name, loaded.net, images, mode, adapt_layer=True))
        torch.manual_seed(0)
    for path in args.checkpoint:
        for mode in args.modes or [args.mode]:
            loaded = load_model(mode=mode, checkpoint=path)
            name = f"lic {Path(path).name} {widths_label(loaded.net.config)} mode {mode:g}"
            rows.append(bench_lic(name, loaded.net, images, mode))
    for ctx in ("checkerboard",) + (() if args.skip_serial else ("serial",)):
        if use_shipped and ctx == "checkerboard":
            continue
        torch.manual_seed(0)
        net = Cheng2020GMM(ModelConfig(N=args.N, context=ctx)).eval()
        net.update(force=True)
        rows.append(bench_lic(f"lic {ctx} N={args.N} (random init)", net, images, 1.0))
    if args.M:
        torch.manual_seed(0)
        net = Cheng2020GMM(ModelConfig(N=args.N, M=args.M, context="checkerboard")).eval()
        net.update(force=True)
        rows.append(bench_lic(f"lic checkerboard N={args.N} M={args.M} (random init)", net, images, 1.0))
    if not args.skip_compressai:
        rows.append(bench_compressai(images))
    ref = rows[-1] if not args.skip_compressai else None
    print(f"{'codec':58s} {'enc s':>7s} {'dec s':>7s} {'bpp':>7s} {'enc x':>7s} {'dec x':>7s}")
    for name, te, td, b in rows:
        ex = f"{ref[1] / te:7.1f}" if ref else "      -"
        dx = f"{ref[2] / td:7.1f}" if ref else "      -"
        print(f"{name:58s} {te:7.3f} {td:7.3f} {b:7.3f} {ex} {dx}")
    print("x = speed-up over the CompressAI row (higher is faster)")


if __name__ == "__main__":
    main()
