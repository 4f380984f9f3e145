"""What a hostile .lic file costs the decoder, against a real file of the same size and mode.

    python -m bench.hostile_decode [--image PATH] [--size 1024] [--modes 1 4 8] [--repeats 3]

A real file is encoded from a natural image (a --size x --size mosaic of Kodak crops by default:
one full default tile; a file of any declared size is such tiles, each decoded on its own, so the
ratio per tile is the ratio of the file).  Hostile files keep its header and CRC-valid layout and
replace what the streams say:

* ``y zeros``    every y stream declares the widest symbol range the decoder accepts at that mode
                 (``-B..B``, ``Cheng2020GMM.symbol_bound``) and holds no words: the range decoder
                 reads zeros, every anchor decodes to -B, and the context pass sees extreme values;
* ``y random``   the same range, and every y symbol drawn uniformly from it and range-coded with the
                 decoder's own tables (a valid stream of about 3 bytes a symbol: maximal spread of
                 symbols and so of the context pass's inputs);
* ``+ z extreme`` as ``y random``, over a z stream coding +-300 in every hyper-latent (through the
                 bypass escape), which makes the mixture scales, and so the live part of every table,
                 as wide as they get;
* ``format max`` every y stream declares the widest range the stream format allows
                 (``MAX_SUPPORT``, -2048..2047): refused before any table is built.

Each file is decoded --repeats times with the shipped default model (loaded once), the files of a
mode in turn; the table prints the fastest wall time and process CPU time, and the hostile / real
ratios (CPU time is the steadier
figure on a busy machine). Exit status 1 when a hostile file that is decoded costs more than
--max-ratio (default 3) times the real one in CPU time.
"""
from __future__ import annotations

import argparse
import os
import struct
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # as the CLIs set it: timing only, never results

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lic import codec, container, io  # noqa: E402
from lic.container import FormatError  # noqa: E402
from lic.entropy.mixture import MAX_SUPPORT, StreamWriter  # noqa: E402
from lic.models.cheng2020 import decoder_threads  # noqa: E402
from lic.weights import load_model  # noqa: E402

KODAK = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kodak"


def mosaic(size: int) -> np.ndarray:
    """A size x size natural image: Kodak crops side by side (kodim01, 02, ... in raster order)."""
    paths = sorted(KODAK.glob("*.png"))
    out = np.zeros((size, size, 3), dtype=np.uint8)
    k = 0
    for top in range(0, size, 512):
        for left in range(0, size, 768):
            px = io.read_image(paths[k % len(paths)]).pixels
            k += 1
            h, w = min(512, size - top), min(768, size - left)
            out[top:top + h, left:left + w] = px[:h, :w]
    return out


def declared(data: bytes, lo: int, hi: int) -> bytes:
    """``data`` with every y stream declaring [lo, hi] and holding no words."""
    header, streams = container.unpack(data)
    spt = header.streams_per_tile
    return container.pack(header, [s if i % spt == 0 else struct.pack(">hh", lo, hi) for i, s in enumerate(streams)])


def random_symbols(net, data: bytes, bound: int, z_stream: bytes | None = None) -> bytes:
    """An untiled checkerboard file whose y symbols are uniform in [-bound, bound], coded with the
    tables the decoder will build (over ``z_stream`` instead of the file's own when given)."""
    header, streams = container.unpack(data)
    assert header.tile_size == 0 and header.streams_per_tile == 3 and not header.has_update
    z_stream = streams[0] if z_stream is None else z_stream
    rng = np.random.default_rng(0)
    out = [z_stream]

    def write(p: int, sel, params) -> np.ndarray:
        sym = rng.integers(-bound, bound + 1, len(params))
        writer = StreamWriter(-bound, bound)
        writer.write(sym, params)
        out.append(writer.getvalue())
        return sym
    with torch.no_grad(), decoder_threads():   # exactly as the decoder derives its tables
        z_hat = net.entropy_bottleneck.decompress([z_stream], (header.latent_height // 4, header.latent_width // 4))
        head = net.coding_head(exact=True)
        net.checkerboard_passes(net.coding_psi(z_hat, head), write, head)
    return container.pack(header, out)


def timed_decodes(net, fp: int, files: list[bytes], repeats: int) -> list[tuple[float, float, str]]:
    """(fastest wall s, fastest CPU s, outcome) of each file, the files decoded in turn ``repeats``
    times (interleaved, so that a busy spell of the machine does not fall on one file only)."""
    wall = [[] for _ in files]
    cpu = [[] for _ in files]
    outcome = ["ok"] * len(files)
    for _ in range(repeats):
        for i, data in enumerate(files):
            w0, c0 = time.perf_counter(), time.process_time()
            try:
                codec.decode_with_net(net, data, fp=fp)
            except FormatError as e:
                outcome[i] = f"refused: {str(e)[:60]}"
            wall[i].append(time.perf_counter() - w0)
            cpu[i].append(time.process_time() - c0)
    return [(min(w), min(c), o) for w, c, o in zip(wall, cpu, outcome)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", type=Path, default=None, help="the real image (default: a Kodak mosaic)")
    p.add_argument("--size", type=int, default=1024, help="side of the Kodak mosaic (default 1024: one tile)")
    p.add_argument("--modes", type=float, nargs="+", default=[1.0, 4.0, 8.0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-ratio", type=float, default=3.0)
    args = p.parse_args(argv)

    pixels = io.read_image(args.image).pixels if args.image else mosaic(args.size)
    h, w = pixels.shape[:2]
    loaded = load_model()
    net, fp = loaded.net, loaded.fingerprint
    z = torch.full((1, net.config.N, 1, 1), 300.0)
    print(f"image {w}x{h} ({args.image or f'Kodak mosaic from {KODAK.name}'}), shipped model "
          f"{Path(loaded.source).name}, torch threads {torch.get_num_threads()}, best of {args.repeats}")
    print(f"{'mode':>5} {'file':13} {'bytes':>9} {'range':>12} {'wall s':>7} {'cpu s':>7} "
          f"{'wall x':>6} {'cpu x':>6}  outcome")
    worst = 0.0
    for mode in args.modes:
        real = codec.encode_with_net(net, pixels, mode, fp)
        header, streams = container.unpack(real)
        q = header.mode - 1 + header.mode_frac / 256
        bound = net.symbol_bound(q)
        lo, hi = struct.unpack(">hh", streams[1][:4])
        files = [("real", real, f"{lo}..{hi}"),
                 ("y zeros", declared(real, -bound, bound), f"+-{bound}")]
        if header.tile_size == 0:
            z_stream = net.entropy_bottleneck.compress(z.expand(1, -1, -(-h // 64), -(-w // 64)).contiguous())[0]
            files += [("y random", random_symbols(net, real, bound), f"+-{bound}"),
                      ("+ z extreme", random_symbols(net, real, bound, z_stream), f"+-{bound}")]
        files.append(("format max", declared(real, -(MAX_SUPPORT // 2), MAX_SUPPORT // 2 - 1),
                      f"{-(MAX_SUPPORT // 2)}..{MAX_SUPPORT // 2 - 1}"))
        times = timed_decodes(net, fp, [data for _, data, _ in files], args.repeats)
        base = times[0]
        for (name, data, rng), (tw, tc, outcome) in zip(files, times):
            rw, rc = tw / base[0], tc / base[1]
            if outcome == "ok" and name != "real":
                worst = max(worst, rc)
            print(f"{mode:5g} {name:13} {len(data):9,} {rng:>12} {tw:7.2f} {tc:7.2f} {rw:6.2f} {rc:6.2f}  {outcome}",
                  flush=True)
    print(f"\nworst hostile / real CPU-time ratio: {worst:.2f} (limit {args.max_ratio:g})")
    return 0 if worst <= args.max_ratio else 1


if __name__ == "__main__":
    sys.exit(main())
