"""The main job in one command: encode one image with the shipped default model, decode it,
and print what a user wants to know (real file size, bpp including the header, PSNR, times).

    python -m lic.demo [IMAGE] [-q MODE] [-o OUTDIR]

IMAGE defaults to Kodak's kodim23 from ../shared/data/kodak (or a generated test image when
that folder is absent). Writes OUTDIR/NAME.lic and OUTDIR/NAME.decoded.png (default: demo_out/).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _default_image() -> tuple[str, np.ndarray]:
    from lic import io

    path = REPO.parent / "shared" / "data" / "kodak" / "kodim23.png"
    if path.exists():
        return path.stem, io.read_image(path).pixels
    yy, xx = np.mgrid[0:512, 0:768]
    img = np.stack([128 + 100 * np.sin(xx / 40.0) * np.cos(yy / 55.0), (xx + yy) / 5.0, 255 - yy / 2.0], -1)
    return "synthetic", np.clip(img, 0, 255).astype(np.uint8)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("image", nargs="?")
    ap.add_argument("-q", "--quality", type=float, default=None, help="compression mode (default: the shipped default)")
    ap.add_argument("-o", "--outdir", default="demo_out")
    args = ap.parse_args(argv)

    from lic import codec, io
    from lic.eval.lic_codec import widths_label
    from lic.eval.metrics import psnr
    from lic.weights import load_model

    if args.image:
        name, pixels = Path(args.image).stem, io.read_image(args.image).pixels
    else:
        name, pixels = _default_image()
    loaded = load_model(mode=args.quality)
    t0 = time.perf_counter()
    data = codec.encode_image(loaded, pixels)
    t1 = time.perf_counter()
    out = codec.decode_image(data)
    t2 = time.perf_counter()

    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / f"{name}.lic").write_bytes(data)
    io.write_image(outdir / f"{name}.decoded.png", out)
    h, w = pixels.shape[:2]
    db = psnr(pixels, out)
    print(f"model   {loaded.name} ({widths_label(loaded.net.config)}), mode {loaded.mode_value:g}")
    print(f"image   {name}: {w}x{h}")
    print(f"file    {outdir / (name + '.lic')}: {len(data)} bytes")
    print(f"bpp     {8 * len(data) / (h * w):.4f}  (real file bytes, header included)")
    print(f"PSNR    {db:.2f} dB (RGB)")
    print(f"time    encode {t1 - t0:.2f} s, decode {t2 - t1:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
