"""Fuzz the .lic decoder in-process: every input must end as an image or a FormatError.

    python -m bench.fuzz_decoder [--inputs 100000] [--seconds 600] [--seed 0] [--timeout 10]
                                 [--save DIR] [--threads 1] [--rss-growth-mb 512]

Inputs are derived from real files made by tiny random-init models (N=8;
checkerboard, serial and variable-rate; untiled and tiled at 64 pixels):

* raw        random bytes (half of them behind a valid magic and version)
* truncate   a prefix of a real file
* bitflip    1 to 8 flipped bits (CRC left as it is: almost always "checksum mismatch")
* body+crc   1 to 6 byte-level mutations of everything before the CRC (flip, set, insert,
             delete, duplicate, header field set to a boundary value), CRC recomputed
* stream+crc one stream (or the stream table) mutated, the file repacked with a valid CRC:
             these reach the stream checks and the entropy decoders
* range+crc  every y stream of the file declares one hostile symbol range (the widest the decoder
             accepts at the file's mode, one past it, the widest the stream format allows, or a
             random one inside the accepted range), its words kept or dropped, CRC recomputed:
             the decoder's table work is bounded by the accepted range (bench/hostile_decode.py)

Each input runs under a per-input time limit (SIGALRM, --timeout seconds); its
peak RSS is measured through /proc/self/clear_refs + VmHWM (Linux), as growth
over the RSS the process had before the first input (torch alone is ~0.8 GB). Results
are counted by outcome: ``ok`` (decoded, of the size in the header),
``FormatError``/``CodecError`` by message class (digits replaced by N; for a
CodecError wrapping another exception, the wrapped type and message class),
``crash`` (any other exception, or a decoded image of the wrong shape),
``timeout`` and ``rss`` (an input whose peak RSS grew more than --rss-growth-mb).
Crashing inputs are saved under --save when given. Exit status 1 when any
input crashed, timed out or exceeded the RSS limit.
"""
from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning: on a machine whose cores are busy with other work,
# spinning makes every parallel region of the decoder networks (DECODER_THREADS) wait for a time
# slice, up to 100x slower. Changes timings only, never results. Set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import collections
import random
import re
import signal
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch

from lic import codec, container
from lic.container import FormatError
from lic.entropy.mixture import MAX_SUPPORT, MixtureStreamError
from lic.eval.memory import peak_rss_mb, reset_peak_rss
from lic.models import Cheng2020GMM, ModelConfig
from lic.weights import fingerprint


class InputTimeout(BaseException):
    """Raised by the alarm; a BaseException so that no `except Exception` in the decoder swallows it."""


def _alarm(signum, frame):
    raise InputTimeout()


# ---------------------------------------------------------------------------- seeds


def tiny(context: str, num_modes: int = 1, seed: int = 0) -> Cheng2020GMM:
    torch.manual_seed(seed)
    net = Cheng2020GMM(ModelConfig(N=8, context=context, num_modes=num_modes)).eval()
    net.update(force=True)
    return net


def smooth_image(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(h // 8 + 1, w // 8 + 1, 3)).astype(np.float64)
    img = np.kron(base, np.ones((8, 8, 1)))[:h, :w] + rng.normal(0, 6, size=(h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_seeds() -> tuple[dict[int, tuple[Cheng2020GMM, int]], list[bytes]]:
    """Tiny nets by model_id, with their fingerprints; small real files (1 to 4 tiles of 64 pixels)."""
    nets = {1: tiny("checkerboard"), 2: tiny("serial"), 3: tiny("checkerboard", num_modes=3, seed=2)}
    seeds = []
    for model_id, (h, w), mode, tile in [
        (1, (64, 64), 1.0, None), (1, (50, 120), 1.0, None), (1, (128, 100), 1.0, 64), (1, (1, 1), 1.0, None),
        (2, (64, 64), 1.0, None), (2, (60, 128), 1.0, 64),
        (3, (64, 64), 2.5, None), (3, (100, 64), 3.0, 64),
    ]:
        seeds.append(codec.encode_with_net(nets[model_id], smooth_image(h, w, seed=h * w), mode, tile_size=tile))
    return {k: (net, fingerprint(net)) for k, net in nets.items()}, seeds


# ---------------------------------------------------------------------------- mutators

INTERESTING_U8 = [0, 1, 2, 3, 4, 0x7F, 0x80, 0xFF]
INTERESTING_U16 = [0, 1, 2, 4, 63, 64, 65, 128, 1024, 0x7FFF, 0x8000, 0xFFFF]
INTERESTING_U32 = [0, 1, 2, 64, 65, 4096, 16384, 16385, 32768, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]
# (offset, size) of the header's integer fields after the magic and version
HEADER_FIELDS = [(5, 1), (6, 1), (7, 1), (8, 1), (9, 4), (13, 4), (17, 4), (21, 1), (22, 2), (24, 2), (26, 2),
                 (28, 2), (30, 2)]


def reseal(body: bytes) -> bytes:
    return body + struct.pack(">I", zlib.crc32(body))


def rand_bytes(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n)


def mutate_bytes(rng: random.Random, b: bytearray, header_ops: bool = True) -> bytearray:
    op = rng.randrange(6 if header_ops else 5)
    if op == 0 and b:        # flip bits
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    elif op == 1 and b:      # set a byte
        b[rng.randrange(len(b))] = rng.choice(INTERESTING_U8 + [rng.randrange(256)])
    elif op == 2:            # insert bytes
        i = rng.randrange(len(b) + 1)
        b[i:i] = rand_bytes(rng, rng.choice([1, 2, 4, rng.randrange(1, 64)]))
    elif op == 3 and b:      # delete a range
        i = rng.randrange(len(b))
        del b[i:i + rng.choice([1, 2, 4, rng.randrange(1, 64)])]
    elif op == 4 and b:      # duplicate a range
        i = rng.randrange(len(b))
        j = min(len(b), i + rng.randrange(1, 32))
        k = rng.randrange(len(b) + 1)
        b[k:k] = b[i:j]
    elif op == 5 and len(b) >= container.HEADER_SIZE:  # a header field to a boundary value
        off, size = rng.choice(HEADER_FIELDS)
        table = {1: INTERESTING_U8, 2: INTERESTING_U16, 4: INTERESTING_U32}[size]
        value = rng.choice(table + [rng.randrange(1 << (8 * size))])
        b[off:off + size] = value.to_bytes(size, "big")
    return b


def mutate_stream(rng: random.Random, s: bytes, others: list[bytes]) -> bytes:
    b = bytearray(s)
    op = rng.randrange(8)
    if op == 0:
        return b[:rng.randrange(len(b) + 1)] if b else b""                 # truncate
    if op == 1:
        return bytes(b) + rand_bytes(rng, rng.choice([1, 3, 4, 8, rng.randrange(1, 200)]))  # extend
    if op == 2:
        return rand_bytes(rng, rng.choice([0, 4, 8, len(b), rng.randrange(0, 400)]))  # replace
    if op == 3:
        return rng.choice(others)                                          # another stream
    if op == 4 and len(b) >= 4:                                            # a word to a boundary value
        i = rng.randrange(len(b) // 4) * 4
        b[i:i + 4] = rng.choice(INTERESTING_U32).to_bytes(4, "little")
        return bytes(b)
    if op == 5 and len(b) >= 4:                                            # the mixture header (lo, hi)
        b[:4] = struct.pack(">hh", *sorted(rng.choice([(-1, 1), (0, 0), (-2048, 2047), (-32768, 32767),
                                                       (rng.randrange(-40000, 40000) % 65536 - 32768,
                                                        rng.randrange(-40000, 40000) % 65536 - 32768)])))
        return bytes(b)
    for _ in range(rng.randrange(1, 5)):
        b = mutate_bytes(rng, b, header_ops=False)
    return bytes(b)


def hostile_ranges(rng: random.Random, nets: dict[int, tuple[Cheng2020GMM, int]], seed: bytes) -> bytes:
    """``seed`` with every y stream declaring one hostile symbol range (see the module docstring)."""
    header, streams = container.unpack(seed)
    net = nets[header.model_id][0]
    q = None if net.config.num_modes <= 1 else header.mode - 1 + header.mode_frac / 256
    bound = net.symbol_bound(q)
    widest = MAX_SUPPORT // 2 - 1 if bound is None else bound
    inside = tuple(sorted(rng.randint(-widest, widest) for _ in range(2)))
    lo, hi = rng.choice([(-widest, widest), (-widest - 1, widest), (-widest, widest + 1),
                         (-(MAX_SUPPORT // 2), MAX_SUPPORT // 2 - 1), inside])
    keep = rng.random() < 0.5
    spt = header.streams_per_tile
    extra = int(header.has_update)
    out = [s if i % spt == 0 or i >= len(streams) - extra else struct.pack(">hh", lo, hi) + (s[4:] if keep else b"")
           for i, s in enumerate(streams)]
    return container.pack(header, out)


def make_input(rng: random.Random, seeds: list[bytes], nets: dict[int, tuple[Cheng2020GMM, int]]) -> tuple[str, bytes]:
    seed = rng.choice(seeds)
    r = rng.random()
    if r < 0.10:
        return "range+crc", hostile_ranges(rng, nets, seed)
    r = (r - 0.10) / 0.90          # the other mutators share the rest as before
    if r < 0.03:
        data = rand_bytes(rng, rng.randrange(0, 600))
        if rng.random() < 0.5:
            data = container.MAGIC + bytes([container.VERSION]) + data
        return "raw", data
    if r < 0.06:
        return "truncate", seed[:rng.randrange(len(seed))]
    if r < 0.10:
        b = bytearray(seed)
        for _ in range(rng.randrange(1, 9)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        return "bitflip", bytes(b)
    if r < 0.40:
        b = bytearray(seed[:-4])
        for _ in range(rng.randrange(1, 7)):
            b = mutate_bytes(rng, b)
        return "body+crc", reseal(bytes(b))
    header, streams = container.unpack(seed)
    streams = list(streams)
    op = rng.random()
    if op < 0.8:
        i = rng.randrange(len(streams))
        streams[i] = mutate_stream(rng, streams[i], streams)
        if rng.random() < 0.2:  # and a second one
            j = rng.randrange(len(streams))
            streams[j] = mutate_stream(rng, streams[j], streams)
    elif op < 0.9:
        i, j = rng.randrange(len(streams)), rng.randrange(len(streams))
        streams[i], streams[j] = streams[j], streams[i]
    elif op < 0.95:
        del streams[rng.randrange(len(streams))]
    else:
        streams.insert(rng.randrange(len(streams) + 1), rng.choice(streams))
    data = container.pack(header, streams)
    if rng.random() < 0.15:  # a header field too
        b = mutate_bytes(rng, bytearray(data[:-4]))
        data = reseal(bytes(b))
    return "stream+crc", data


# ---------------------------------------------------------------------------- running one input


def message_class(msg: str) -> str:
    msg = re.sub(r"0x[0-9a-f]+", "0xN", msg)
    return re.sub(r"-?\d+", "N", msg)


def classify(nets: dict[int, tuple[Cheng2020GMM, int]], data: bytes) -> str:
    """Decode ``data``; return the outcome class (raises InputTimeout)."""
    try:
        header = None
        try:
            header = container.peek_header(data)
        except FormatError:
            pass
        net = nets.get(header.model_id, nets[1]) if header is not None else nets[1]
        out = codec.decode_with_net(net[0], data, fp=net[1])
    except InputTimeout:
        raise
    except FormatError as e:
        kind = type(e).__name__
        inner = e.__context__
        if inner is not None and not isinstance(inner, (FormatError, MixtureStreamError)):
            where = ""
            tb = inner.__traceback__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            if tb is not None:
                where = f" at {Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_frame.f_code.co_name}"
            return f"{kind}: {message_class(str(e))} <- {type(inner).__name__}{where}: " \
                   f"{message_class(str(inner).splitlines()[0] if str(inner) else '')}"
        return f"{kind}: {message_class(str(e))}"
    except Exception as e:  # noqa: BLE001 - this is what we are looking for
        return f"crash: {type(e).__name__}: {message_class(str(e).splitlines()[0] if str(e) else '')}"
    if not (isinstance(out, np.ndarray) and out.dtype == np.uint8 and header is not None
            and out.shape == (header.height, header.width, 3)):
        return f"crash: wrong output {getattr(out, 'shape', None)} {getattr(out, 'dtype', None)}"
    return "ok"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inputs", type=int, default=100_000, help="stop after this many inputs")
    p.add_argument("--seconds", type=float, default=600.0, help="stop after this many seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=10.0, help="per-input time limit, seconds")
    p.add_argument("--rss-growth-mb", type=float, default=512.0,
                   help="flag inputs whose peak RSS exceeds the baseline by more than this")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--save", type=Path, default=None, help="save crashing / timing-out inputs here")
    p.add_argument("--report-every", type=float, default=60.0, help="progress line every N seconds")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    nets, seeds = make_seeds()
    for data in seeds:  # the seeds themselves must decode
        assert classify(nets, data) == "ok", classify(nets, data)
    rng = random.Random(args.seed)
    signal.signal(signal.SIGALRM, _alarm)
    per_input_rss = reset_peak_rss()
    baseline = peak_rss_mb()
    counts: collections.Counter[str] = collections.Counter()
    by_kind: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    bad = 0
    max_peak = 0.0
    slowest = (0.0, "")
    start = last = time.perf_counter()
    n = 0
    while n < args.inputs and time.perf_counter() - start < args.seconds:
        kind, data = make_input(rng, seeds, nets)
        if per_input_rss:
            reset_peak_rss()
        t0 = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, args.timeout)
        try:
            outcome = classify(nets, data)
        except InputTimeout:
            outcome = "timeout"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        dt = time.perf_counter() - t0
        if dt > slowest[0]:
            slowest = (dt, f"{kind} -> {outcome}")
        peak = peak_rss_mb()
        max_peak = max(max_peak, peak)
        if peak - baseline > args.rss_growth_mb:
            outcome = f"rss: {outcome}"
        n += 1
        counts[outcome] += 1
        by_kind[kind][outcome.split(":")[0]] += 1
        if outcome.startswith(("crash", "timeout", "rss")):
            bad += 1
            if args.save is not None:
                args.save.mkdir(parents=True, exist_ok=True)
                (args.save / f"{bad:05d}-{kind}.lic.bin").write_bytes(data)
        now = time.perf_counter()
        if now - last > args.report_every:
            last = now
            print(f"[{now - start:7.0f} s] {n} inputs, {n / (now - start):.1f}/s, bad {bad}, "
                  f"peak RSS growth {max_peak - baseline:.0f} MB", flush=True)
    elapsed = time.perf_counter() - start

    print(f"\n{n} inputs in {elapsed:.1f} s ({n / elapsed:.1f} inputs/s), torch threads {args.threads}, "
          f"seed {args.seed}, per-input timeout {args.timeout:g} s")
    print(f"RSS before the first input {baseline:.0f} MB; peak RSS "
          f"{'per input' if per_input_rss else 'of the process'}: max {max_peak:.0f} MB, "
          f"growth {max_peak - baseline:.0f} MB (limit {args.rss_growth_mb:g} MB)")
    print(f"slowest input {slowest[0]:.2f} s ({slowest[1]})")
    print("\nby mutator (outcome kind: count):")
    for kind in sorted(by_kind):
        total = sum(by_kind[kind].values())
        print(f"  {kind:11s} {total:7d}  " + ", ".join(f"{k} {v}" for k, v in by_kind[kind].most_common()))
    print("\noutcomes:")
    for outcome, c in counts.most_common():
        print(f"  {c:7d}  {outcome}")
    crashes = sum(c for o, c in counts.items() if o.startswith("crash"))
    timeouts = sum(c for o, c in counts.items() if o.startswith("timeout"))
    rss = sum(c for o, c in counts.items() if o.startswith("rss"))
    ok = counts["ok"]
    print(f"\nsummary: {n} inputs: decoded OK {ok}, FormatError/CodecError {n - ok - crashes - timeouts - rss}, "
          f"crashes {crashes}, timeouts {timeouts}, over RSS limit {rss}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
