"""Decoding is bit-identical across thread counts and processes.

    python -m bench.determinism [--images 24] [--modes all] [--checkpoint PATH | --random [--N 64]]
                                [--crop HxW] [--tile-size T] [--encode-threads 2]
                                [--worker-env ONEDNN_MAX_CPU_ISA=AVX2 --worker-env ATEN_CPU_CAPABILITY=avx2]
                                [--save DIR]        # on one machine, then on another:
    python -m bench.determinism --check DIR [--checkpoint PATH]

Every Kodak image (``../shared/data/kodak``; synthetic images when absent) is
encoded at every mode of the model with ``--encode-threads`` torch threads (2)
and decoded twice: in this process (same thread setting) and in a fresh
Python process with 1 thread. The pixels of the two decodes are compared
(sha256 of the arrays), and with the encoder's own reconstruction from
round(y) (``net.reconstruct``, per tile). Prints identical/total for each.
With ``--worker-env`` the fresh process runs other CPU kernels (oneDNN's and ATen's
instruction-set caps): a stand-in for decoding on another machine.

Model: ``--checkpoint``, else the shipped default (weights/registry.json),
else (or with ``--random``) a random-init variable-rate model of width --N
with 6 modes (the shipped configuration).
"""
from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: on a machine whose cores are busy with other work,
# spinning makes every parallel region of the decoder networks (DECODER_THREADS) wait for a time
# slice, up to 100x slower. Changes timings only, never results. Set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
KODAK = REPO.parent / "shared" / "data" / "kodak"


def digest(pixels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()


def decode_worker(folder: Path, checkpoint: str) -> None:
    """Run in the fresh process: decode every .lic in folder with 1 thread, print {name: sha256}."""
    torch.set_num_threads(1)
    print(f"worker: torch kernels {torch.backends.cpu.get_cpu_capability()}, "
          f"oneDNN max ISA {os.environ.get('ONEDNN_MAX_CPU_ISA', 'default')}", file=sys.stderr)
    from lic import codec
    from lic.weights import load_checkpoint

    net = load_checkpoint(checkpoint)
    out = {}
    for p in sorted(folder.glob("*.lic")):
        try:
            px = codec.decode_with_net(net, p.read_bytes())
        except codec.CodecError as e:        # a desynchronised entropy decoder
            out[p.name] = f"failed: {e}"
            continue
        np.save(p.with_suffix(".npy"), px)
        out[p.name] = digest(px)
    print(json.dumps(out))


def images(n: int, crop: tuple[int, int] | None) -> list[tuple[str, np.ndarray]]:
    from PIL import Image

    paths = sorted(KODAK.glob("kodim*.png"))[:n]
    if paths:
        out = [(p.stem, np.array(Image.open(p).convert("RGB"))) for p in paths]
    else:
        rng = np.random.default_rng(0)
        out = []
        for i in range(n):
            base = rng.integers(0, 256, size=(65, 97, 3)).astype(np.float64)
            img = np.kron(base, np.ones((8, 8, 1)))[:512, :768] + rng.normal(0, 6, size=(512, 768, 3))
            out.append((f"synthetic{i:02d}", np.clip(img, 0, 255).astype(np.uint8)))
    if crop is not None:
        out = [(name, np.ascontiguousarray(px[:crop[0], :crop[1]])) for name, px in out]
    return out


def per_tile_reconstruction(net, pixels: np.ndarray, tile_size: int, q) -> np.ndarray:
    from lic import codec, io

    h, w = pixels.shape[:2]
    out = np.empty_like(pixels)
    for top, left, th, tw in codec.tile_grid(h, w, tile_size, net.downsampling):
        x = codec.pad(io.to_tensor(pixels[top:top + th, left:left + tw]), net.downsampling)
        ch, cw = min(th, h - top), min(tw, w - left)
        out[top:top + ch, left:left + cw] = io.from_tensor(net.reconstruct(x, q)[:, :, :ch, :cw])
    return out


def pixel_diff(a: np.ndarray, b: np.ndarray) -> tuple[int, int, int]:
    """(largest difference in levels, values that differ, values) between two decodes."""
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return int(d.max()), int((d > 0).sum()), d.size


def machine() -> dict:
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "kernels": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__, "python": platform.python_version()}


def check_saved(folder: Path, checkpoint: str | None) -> int:
    """Decode here what another machine encoded (``--save``) and compare with its own decodes."""
    from PIL import Image

    from lic import codec
    from lic.weights import load_checkpoint, load_model

    meta = json.loads((folder / "machine.json").read_text())
    net = load_checkpoint(checkpoint) if checkpoint else load_model().net
    names = sorted(p.name for p in folder.glob("*.lic"))
    decoded, same, worst, moved, total = 0, 0, 0, 0, 0
    for name in names:
        with Image.open(folder / f"{name}.png") as im:
            theirs = np.asarray(im.convert("RGB"))
        try:
            ours = codec.decode_with_net(net, (folder / name).read_bytes())
        except codec.CodecError as e:
            print(f"  {name}: FAILED ({e})")
            continue
        decoded += 1
        top, n, size = pixel_diff(ours, theirs)
        same += int(top == 0)
        worst, moved, total = max(worst, top), moved + n, total + size
    print(f"encoded on {meta}; decoded here on {machine()}")
    print(f"decoded {decoded}/{len(names)} files; identical pixels in {same}/{len(names)}; "
          f"values that differ: {moved} of {total}, by at most {worst} level(s)")
    return 0 if decoded == len(names) else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--modes", default="all", help="'all' or a comma-separated list of 1-based modes")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--random", action="store_true", help="use a random-init model even if one is shipped")
    p.add_argument("--N", type=int, default=64, help="width of the random-init model")
    p.add_argument("--crop", default=None, help="crop every image to HxW (e.g. 192x160)")
    p.add_argument("--tile-size", type=int, default=None, help="encoder tile size (default: the codec's)")
    p.add_argument("--encode-threads", type=int, default=2)
    p.add_argument("--worker-env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment of the fresh decoding process, e.g. ONEDNN_MAX_CPU_ISA=AVX2 and "
                        "ATEN_CPU_CAPABILITY=avx2: the kernels of a CPU with another instruction set "
                        "(repeatable)")
    p.add_argument("--format-version", type=int, default=None,
                   help="write this .lic format version (default: the current one; 1: tables from the "
                        "float32 networks, as before lic.models.exact)")
    p.add_argument("--save", type=Path, default=None, metavar="DIR",
                   help="also keep the files and this machine's decodes (PNG) in DIR, to decode them on "
                        "another machine with --check DIR")
    p.add_argument("--check", type=Path, default=None, metavar="DIR",
                   help="decode the files another machine saved with --save, and compare the pixels")
    p.add_argument("--decode-worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.decode_worker is not None:
        decode_worker(args.decode_worker, args.checkpoint)
        return 0
    if args.check is not None:
        return check_saved(args.check, args.checkpoint)

    from lic import codec, container
    from lic.models import Cheng2020GMM, ModelConfig, cheng2020
    from lic.weights import export, load_model, model_mode, read_registry

    torch.set_num_threads(args.encode_threads)
    tmp = Path(tempfile.mkdtemp(prefix="lic-determinism-"))
    if args.checkpoint:
        from lic.weights import load_checkpoint

        net, checkpoint, what = load_checkpoint(args.checkpoint), args.checkpoint, args.checkpoint
    elif read_registry() and not args.random:
        loaded = load_model()
        net, checkpoint, what = loaded.net, loaded.source, f"shipped {loaded.name} ({loaded.source})"
    else:
        torch.manual_seed(0)
        net = Cheng2020GMM(ModelConfig(N=args.N, num_modes=6)).eval()
        checkpoint = str(tmp / "random.safetensors")
        export(net, checkpoint)
        from lic.weights import load_checkpoint

        net = load_checkpoint(checkpoint)  # exactly what the worker loads
        what = f"random-init N={args.N}, 6 modes"
    num_modes = max(1, net.config.num_modes)
    modes = list(range(1, num_modes + 1)) if args.modes == "all" else [float(m) for m in args.modes.split(",")]
    crop = tuple(int(v) for v in args.crop.split("x")) if args.crop else None
    imgs = images(args.images, crop)
    print(f"model: {what}; {len(imgs)} images x {len(modes)} modes; encode threads {args.encode_threads}, "
          f"decode in a fresh process with 1 thread (decoder networks: "
          f"{getattr(cheng2020, 'DECODER_THREADS', 1)} threads whatever the caller sets); "
          f"format version {args.format_version or container.VERSION}", flush=True)

    here: dict[str, str] = {}
    recon: dict[str, str] = {}
    t0 = time.perf_counter()
    here_px: dict[str, np.ndarray] = {}
    for name, px in imgs:
        for mode in modes:
            data = codec.encode_with_net(net, px, float(mode), tile_size=args.tile_size,
                                         version=args.format_version or container.VERSION)
            key = f"{name}-m{mode}.lic"
            (tmp / key).write_bytes(data)
            here_px[key] = codec.decode_with_net(net, data)
            here[key] = digest(here_px[key])
            if args.save is not None:
                from PIL import Image

                args.save.mkdir(parents=True, exist_ok=True)
                (args.save / key).write_bytes(data)
                Image.fromarray(here_px[key]).save(args.save / f"{key}.png")
            header, _ = container.unpack(data)
            q = model_mode(header.mode, header.mode_frac, num_modes)
            recon[key] = digest(per_tile_reconstruction(net, px, header.tile_size, q))
    t_enc = time.perf_counter() - t0
    if args.save is not None:
        (args.save / "machine.json").write_text(json.dumps(machine()) + "\n")
    worker_env = dict(os.environ, **dict(kv.split("=", 1) for kv in args.worker_env))
    r = subprocess.run([sys.executable, "-m", "bench.determinism", "--decode-worker", str(tmp),
                        "--checkpoint", checkpoint], capture_output=True, text=True, cwd=REPO, env=worker_env)
    if r.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        print(r.stderr, file=sys.stderr)
        return 1
    # where the fresh decode differs: how much (a desynchronised entropy decoder fails or gives noise;
    # another rounding in g_s moves a few pixels by a level)
    diffs = {}
    for k in here_px:
        f = tmp / k.replace(".lic", ".npy")
        if f.exists():
            diffs[k] = pixel_diff(np.load(f), here_px[k])
    shutil.rmtree(tmp, ignore_errors=True)
    print(*[line for line in r.stderr.splitlines() if line.startswith("worker:")], sep="\n")
    fresh = json.loads(r.stdout.strip().splitlines()[-1])
    total = len(here)
    same_fresh = sum(fresh.get(k) == v for k, v in here.items())
    same_recon = sum(recon[k] == v for k, v in here.items())
    isa = f", worker {' '.join(args.worker_env)}" if args.worker_env else ""
    print(f"fresh process (1 thread{isa}) vs this process ({args.encode_threads} threads, "
          f"{torch.backends.cpu.get_cpu_capability()}): identical {same_fresh}/{total}")
    print(f"decoded vs encoder's reconstruction round(y) -> g_s: identical {same_recon}/{total}")
    print(f"({time.perf_counter() - t0:.0f} s: encode + decode here {t_enc:.0f} s)")
    failed = [k for k in here if str(fresh.get(k, "failed")).startswith("failed")]
    print(f"fresh process decoded {total - len(failed)}/{total} files"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    moved = [v for k, v in diffs.items() if fresh.get(k) != here[k]]
    if moved:
        print(f"pixels that differ where the decodes differ: at most {max(v[0] for v in moved)} level(s), "
              f"{sum(v[1] for v in moved)} of {sum(v[2] for v in moved)} values "
              f"({100 * sum(v[1] for v in moved) / sum(v[2] for v in moved):.4f} %)")
    for k in sorted(here):
        if fresh.get(k) != here[k] or recon[k] != here[k]:
            print(f"  differs: {k}" + (f" ({fresh.get(k)})" if k in failed else ""))
    return 0 if same_fresh == total and same_recon == total else 1


if __name__ == "__main__":
    sys.exit(main())
