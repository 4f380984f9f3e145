"""Pack the training photographs into a small folder that can travel to a lent GPU machine.

    python scripts/pack_training_set.py [--src ../shared/data/train] [--out .gpu/train] [--quality 93] [--min-side 256]

The device tool carries at most 64 MiB with the working tree, and the PNG originals are 146 MB.
Every image at least --min-side pixels on its shorter side is re-encoded as JPEG at --quality with
4:4:4 chroma (about 42 dB PSNR against the PNG: far finer than any mode the codec is trained for).
Smaller ones (most of T91) are left out: a 256x256 crop of them would be mostly reflection padding.
Kodak is never among the sources.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from lic.eval.metrics import psnr
from lic.training.datamodule import list_images


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=str(Path(__file__).resolve().parents[2] / "shared/data/train"))
    ap.add_argument("--out", default=".gpu/train")
    ap.add_argument("--quality", type=int, default=93)
    ap.add_argument("--min-side", type=int, default=256)
    args = ap.parse_args(argv)
    src, out = Path(args.src), Path(args.out)
    if "kodak" in str(src).lower():
        ap.error("never train on Kodak")
    kept = skipped = total = 0
    psnrs = []
    for p in list_images(src):
        with Image.open(p) as im:
            im = im.convert("RGB")
        if min(im.size) < args.min_side:
            skipped += 1
            continue
        dst = out / p.relative_to(src).with_suffix(".jpg")
        dst.parent.mkdir(parents=True, exist_ok=True)
        im.save(dst, "JPEG", quality=args.quality, subsampling=0)
        with Image.open(dst) as back:
            psnrs.append(psnr(np.asarray(im), np.asarray(back.convert("RGB"))))
        kept += 1
        total += dst.stat().st_size
    print(f"{kept} images -> {out} ({total / 2**20:.1f} MiB, JPEG q{args.quality} 4:4:4, "
          f"PSNR vs originals {np.mean(psnrs):.1f} dB mean, {np.min(psnrs):.1f} min); {skipped} smaller than "
          f"{args.min_side} px left out")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
