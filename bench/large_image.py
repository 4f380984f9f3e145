"""Large images: peak RSS and seconds to encode and decode a 6000x4000 photo (tiled), and the
PSNR / rate cost of tiling on Kodak.

    python -m bench.large_image [--size 6000x4000] [--mode 3] [--threads 1] [--tile-size T]
                                [--checkpoint PATH | --random [--N 64]]
    python -m bench.large_image --psnr-tile 256 [--psnr-images 24] [--mode 3] [--checkpoint PATH]

The large image is synthesised from Kodak photos (portrait ones turned), laid
side by side in a grid and cropped to the size asked. Encode and decode run in
two fresh processes, so that each one's peak RSS (``ru_maxrss``, which includes
Python, torch and the model, printed separately as "baseline") is its own.

``--psnr-tile T`` instead encodes Kodak images untiled and forced to tiles of T
pixels, and prints PSNR (RGB, 8-bit) and bpp of both.

Model: ``--checkpoint`` (a .safetensors export or a training .ckpt), else the
shipped default (weights/registry.json), else (or with ``--random``) a
random-init variable-rate model of width --N with 6 modes.
"""
from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: on a machine whose cores are busy with other work,
# spinning makes every parallel region of the decoder networks (DECODER_THREADS) wait for a time
# slice, up to 100x slower. Changes timings only, never results. Set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lic.eval.metrics import psnr

REPO = Path(__file__).resolve().parents[1]
KODAK = REPO.parent / "shared" / "data" / "kodak"


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def kodak() -> list[np.ndarray]:
    from PIL import Image

    out = []
    for p in sorted(KODAK.glob("kodim*.png")):
        px = np.asarray(Image.open(p).convert("RGB"))
        out.append(np.ascontiguousarray(np.rot90(px)) if px.shape[0] > px.shape[1] else px)
    if not out:  # no Kodak here: smooth synthetic 512x768 images
        rng = np.random.default_rng(0)
        for _ in range(8):
            base = rng.integers(0, 256, size=(65, 97, 3)).astype(np.float64)
            img = np.kron(base, np.ones((8, 8, 1)))[:512, :768] + rng.normal(0, 6, size=(512, 768, 3))
            out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def synthesise(width: int, height: int) -> np.ndarray:
    tiles = kodak()
    th, tw = tiles[0].shape[:2]
    rows, cols = -(-height // th), -(-width // tw)
    grid = [np.concatenate([tiles[(r * cols + c) % len(tiles)] for c in range(cols)], axis=1) for r in range(rows)]
    return np.ascontiguousarray(np.concatenate(grid, axis=0)[:height, :width])


def resolve_model(args, tmp: Path) -> tuple[str, str]:
    """(checkpoint path the phases load, description)."""
    import torch

    from lic.weights import export, load_model, read_registry

    if args.checkpoint:
        return args.checkpoint, args.checkpoint
    if read_registry() and not args.random:
        loaded = load_model()
        return loaded.source, f"shipped {loaded.name} ({loaded.source})"
    from lic.models import Cheng2020GMM, ModelConfig

    torch.manual_seed(0)
    path = tmp / "random.safetensors"
    export(Cheng2020GMM(ModelConfig(N=args.N, num_modes=6)).eval(), path)
    return str(path), f"random-init N={args.N}, 6 modes"


def phase(args) -> None:
    """One encode or decode in this (fresh) process; prints a JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    from lic import codec
    from lic.weights import load_checkpoint

    net = load_checkpoint(args.checkpoint)
    folder = Path(args.phase_dir)
    base = rss_mb()
    if args.phase == "encode":
        pixels = np.load(folder / "image.npy")
        t = time.perf_counter()
        data = codec.encode_with_net(net, pixels, args.mode, tile_size=args.tile_size)
        seconds = time.perf_counter() - t
        (folder / "image.lic").write_bytes(data)
        extra = {"bytes": len(data)}
    else:
        data = (folder / "image.lic").read_bytes()
        t = time.perf_counter()
        out = codec.decode_with_net(net, data)
        seconds = time.perf_counter() - t
        np.save(folder / "decoded.npy", out)
        extra = {}
    print(json.dumps({"seconds": seconds, "peak_rss_mb": rss_mb(), "baseline_rss_mb": base, **extra}))


def large(args, checkpoint: str, what: str, tmp: Path) -> int:
    from lic import container

    w, h = (int(v) for v in args.size.split("x"))
    pixels = synthesise(w, h)
    np.save(tmp / "image.npy", pixels)
    del pixels
    from lic.models import cheng2020

    print(f"model: {what}; image {w}x{h} synthesised from Kodak; mode {args.mode}; torch threads "
          f"{args.threads} (decoder networks: {getattr(cheng2020, 'DECODER_THREADS', 1)}); "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}", flush=True)
    results = {}
    for ph in ("encode", "decode"):
        cmd = [sys.executable, "-m", "bench.large_image", "--phase", ph, "--phase-dir", str(tmp),
               "--checkpoint", checkpoint, "--mode", str(args.mode), "--threads", str(args.threads)]
        if args.tile_size is not None:
            cmd += ["--tile-size", str(args.tile_size)]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if r.returncode != 0:
            print(r.stderr, file=sys.stderr)
            return 1
        results[ph] = json.loads(r.stdout.strip().splitlines()[-1])
    header, streams = container.unpack((tmp / "image.lic").read_bytes())
    original, decoded = np.load(tmp / "image.npy"), np.load(tmp / "decoded.npy")
    n_tiles = len(streams) // header.streams_per_tile
    e, d = results["encode"], results["decode"]
    print(f"file: {e['bytes']} bytes, {8 * e['bytes'] / (w * h):.4f} bpp, tile_size {header.tile_size}, "
          f"{n_tiles} tiles; PSNR {psnr(original, decoded):.2f} dB")
    for ph in ("encode", "decode"):
        r = results[ph]
        print(f"{ph}: {r['seconds']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB "
              f"(baseline after loading the model {r['baseline_rss_mb']:.0f} MB)")
    ok = max(e["peak_rss_mb"], d["peak_rss_mb"]) <= 4096
    print(f"peak RSS <= 4 GB: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


def tiling_cost(args, checkpoint: str, what: str) -> int:
    import torch

    torch.set_num_threads(args.threads)
    from lic import codec
    from lic.weights import load_checkpoint

    net = load_checkpoint(checkpoint)
    from PIL import Image

    paths = sorted(KODAK.glob("kodim*.png"))[:args.psnr_images]
    print(f"model: {what}; mode {args.mode}; untiled vs tiles of {args.psnr_tile}", flush=True)
    rows = []
    for p in paths:
        px = np.array(Image.open(p).convert("RGB"))
        row = [p.stem]
        for t in (0, args.psnr_tile):
            data = codec.encode_with_net(net, px, args.mode, tile_size=t)
            out = codec.decode_with_net(net, data)
            row += [psnr(px, out), 8 * len(data) / (px.shape[0] * px.shape[1])]
        rows.append(row)
        print(f"  {row[0]}: untiled {row[1]:.2f} dB {row[2]:.4f} bpp; tiled {row[3]:.2f} dB {row[4]:.4f} bpp",
              flush=True)
    a = np.array([r[1:] for r in rows])
    print(f"mean over {len(rows)} images: untiled {a[:, 0].mean():.3f} dB {a[:, 1].mean():.4f} bpp; "
          f"tiles of {args.psnr_tile}: {a[:, 2].mean():.3f} dB {a[:, 3].mean():.4f} bpp; "
          f"cost {a[:, 0].mean() - a[:, 2].mean():+.3f} dB, "
          f"{100 * (a[:, 3].mean() / a[:, 1].mean() - 1):+.2f} % bits")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="6000x4000", help="WxH of the synthesised image")
    p.add_argument("--mode", type=float, default=3.0)
    p.add_argument("--threads", type=int, default=1, help="torch threads for the encoder")
    p.add_argument("--tile-size", type=int, default=None, help="encoder tile size (default: the codec's)")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--random", action="store_true")
    p.add_argument("--N", type=int, default=64)
    p.add_argument("--psnr-tile", type=int, default=None, help="measure the PSNR cost of tiles of this size")
    p.add_argument("--psnr-images", type=int, default=24)
    p.add_argument("--phase", choices=["encode", "decode"], help=argparse.SUPPRESS)
    p.add_argument("--phase-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.phase:
        phase(args)
        return 0
    with tempfile.TemporaryDirectory(prefix="lic-large-") as d:
        tmp = Path(d)
        checkpoint, what = resolve_model(args, tmp)
        if args.psnr_tile is not None:
            return tiling_cost(args, checkpoint, what)
        return large(args, checkpoint, what, tmp)


if __name__ == "__main__":
    sys.exit(main())
