"""The bytes of each .lic format version on Kodak: what the exact tables of version 2
(lic.models.exact) cost against the float32 ones of version 1, same weights, same images.

    python -m bench.format_rate [--modes 1 4 8] [--images 24] [--checkpoint W]

Prints, per mode, the total bytes of both versions, their relative difference and in how many
files the streams (everything after the version byte, CRC aside) are identical.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from lic import codec, io
from lic.weights import load_model

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", type=float, nargs="*", default=[1, 4, 8])
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    net = load_model(checkpoint=args.checkpoint).net
    files = sorted((REPO.parent / "shared" / "data" / "kodak").glob("*.png"))[: args.images]
    images = [io.read_image(f).pixels for f in files]
    for mode in args.modes:
        b1 = b2 = same = 0
        for px in images:
            d1 = codec.encode_with_net(net, px, mode, version=1)
            d2 = codec.encode_with_net(net, px, mode, version=2)
            b1, b2, same = b1 + len(d1), b2 + len(d2), same + (d1[5:-4] == d2[5:-4])
        print(f"mode {mode:g}: version 1 {b1} bytes, version 2 {b2} bytes ({100 * (b2 - b1) / b1:+.3f} %), "
              f"identical streams in {same}/{len(images)} files", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
