"""How much of an image k numbers per 16x16 block keep, at best with a LINEAR transform.

    python -m experiments.linear_ceiling [--k 48 64 96 128 192 256] [--train-images 300]

A Karhunen-Loeve transform (PCA) of 16x16x3 blocks, fitted on the training photos
(../shared/data/train), keeps the k strongest of the 768 components; the table gives the mean
PSNR on Kodak of the 8-bit reconstruction.  The learned model sees the same 1/16 grid: y has M
numbers per 16x16 block, and g_s's first block (``ResidualBlock(M, N_s)``) passes N_s of them on.
Its unquantized ceiling (``experiments/autoencoder_ceiling.py``) set beside this table says how many
numbers per block the trained transforms use in effect (docs/history.md, "The flat top").
No quantization, no entropy coding: a reference point for the transforms, not a codec.
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from lic.eval.metrics import psnr
from lic.training.datamodule import list_images

ROOT = Path(__file__).resolve().parents[1]
B = 16   # y's grid: one latent vector per 16x16 block


def blocks(path: Path) -> np.ndarray:
    """(n, 768) float64 blocks in [0, 1] of the image's top-left multiple-of-16 part."""
    a = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255.0
    h, w = (a.shape[0] // B) * B, (a.shape[1] // B) * B
    a = a[:h, :w]
    return a.reshape(h // B, B, w // B, B, 3).transpose(0, 2, 1, 3, 4).reshape(-1, B * B * 3)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--k", type=int, nargs="+", default=[48, 64, 96, 128, 192, 256])
    ap.add_argument("--train-images", type=int, default=300, help="training photos to fit the PCA on")
    ap.add_argument("--train-dir", type=Path, default=ROOT.parent / "shared" / "data" / "train")
    ap.add_argument("--kodak-dir", type=Path, default=ROOT.parent / "shared" / "data" / "kodak")
    args = ap.parse_args(argv)
    try:   # the images training reads (lic.training.datamodule.list_images), and Kodak's
        train, kodak = list_images(args.train_dir), list_images(args.kodak_dir)
    except FileNotFoundError as e:
        print(e, file=sys.stderr)
        return 2
    random.Random(0).shuffle(train)
    X = np.concatenate([blocks(p) for p in train[: args.train_images]])            # (n, 768)
    mu = X.mean(0)
    _, V = np.linalg.eigh(np.cov((X - mu).T))
    V = V[:, ::-1]                                                                  # strongest first
    kb = [blocks(p) for p in kodak]
    print(f"PCA of 16x16x3 blocks fitted on {min(len(train), args.train_images)} training photos "
          f"({X.shape[0]} blocks); mean PSNR over {len(kodak)} Kodak images")
    print("| numbers kept per 16x16 block (of 768) | PSNR (dB) |\n|---:|---:|")
    for k in args.k:
        P = V[:, :k]
        psnrs = []
        for b in kb:
            r = np.clip(np.round(((b - mu) @ P @ P.T + mu) * 255), 0, 255)
            # blocks as a (n, 256, 3) "image" of 8-bit values, for the one PSNR
            psnrs.append(psnr(np.round(b * 255).astype(np.uint8).reshape(-1, B * B, 3),
                              r.astype(np.uint8).reshape(-1, B * B, 3)))
        print(f"| {k} | {np.mean(psnrs):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
