"""Check that Pillow JPEG on the 24 Kodak images reproduces CompressAI's ``jpeg.json``.

    python -m bench.jpeg_anchor [--bpp-tol 0.1] [--psnr-tol 0.1] [--ms-ssim] [--standalone]

Runs :class:`lic.eval.baselines.JPEG` (quality 5..95 step 5, 4:2:0, optimize=False) on
``<repo>/../shared/data/kodak``, averages per quality over the 24 images (per-image PSNR
over RGB, then the mean; bpp of whole files, then the mean) and compares every point with
``<repo>/../shared/reference/kodak/jpeg.json``.  Prints each point and the worst
deviations; exits 0 when every point is within the tolerances (bpp relative, in %;
PSNR absolute, in dB), 1 when not, 2 when the data is missing.

Known result: ``jpeg.json`` was made with Pillow 7.1.2, whose wheels link IJG libjpeg
9d; it is reproduced exactly (bpp to 1e-15, PSNR to 1e-7 dB) with that Pillow::

    python3.8 -m venv /tmp/pil7 && /tmp/pil7/bin/pip install Pillow==7.1.2 "numpy<1.25"
    /tmp/pil7/bin/python -m bench.jpeg_anchor --standalone      # -> REPRODUCED

(``--standalone`` measures with Pillow + numpy only, no ``lic`` import.)
Current Pillow wheels link libjpeg-turbo, which (a) down-samples chroma by box
averaging instead of IJG 9's DCT-domain scaling, so files differ (up to ~0.3 % smaller
at q >= 80), and (b) up-samples chroma with a triangle filter instead of IJG 9's scaled
IDCT, which decodes the same file ~0.1-0.2 dB higher.  So with libjpeg-turbo the check
fails by about +0.07..+0.13 dB and up to -0.3 % bpp; the project uses the published
``jpeg.json`` as the BD-rate anchor and reports the measured JPEG beside it.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, features

REPO = Path(__file__).resolve().parents[1]
QUALITIES = list(range(5, 100, 5))


def _measure_standalone(images, with_ms_ssim):
    """The same measurement with Pillow + numpy only (runs on Python 3.8 / Pillow 7.1.2)."""
    if with_ms_ssim:
        raise SystemExit("--ms-ssim needs the lic package (not --standalone)")
    arrs = [np.asarray(Image.open(p).convert("RGB")) for p in images]
    bpp, psnr = [], []
    for q in QUALITIES:
        b_i, p_i = [], []
        for a in arrs:
            buf = io.BytesIO()
            Image.fromarray(a).save(buf, format="jpeg", quality=q)
            data = buf.getvalue()
            r = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.float64)
            # lic.eval.metrics.psnr's formula, written out: this path runs without lic (Python 3.8)
            mse = np.mean((a.astype(np.float64) - r) ** 2)
            p_i.append(10 * np.log10(255.0 ** 2 / mse))
            b_i.append(8.0 * len(data) / (a.shape[0] * a.shape[1]))
        bpp.append(float(np.mean(b_i)))
        psnr.append(float(np.mean(p_i)))
    return bpp, psnr, []


def _measure_lic(images, with_ms_ssim):
    from lic.eval.baselines import JPEG
    from lic.eval.runner import aggregate, run_codecs

    codec = JPEG()
    assert codec.settings == QUALITIES
    records = run_codecs(images, [codec], with_ms_ssim=with_ms_ssim, progress=False)
    (curve,) = aggregate(records, [codec])
    return curve.bpp, curve.psnr, curve.ms_ssim


def _shared() -> Path:
    try:
        from lic.eval.datasets import shared_dir

        return shared_dir()
    except Exception:  # noqa: BLE001 - standalone: <repo>/../shared
        return REPO.parent / "shared"


def _bd_rate(ref_bpp, ref_psnr, bpp, psnr):
    try:
        from lic.eval.bdrate import bd_rate

        return bd_rate(list(zip(ref_bpp, ref_psnr)), list(zip(bpp, psnr)))
    except Exception:  # noqa: BLE001
        return float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bpp-tol", type=float, default=0.1, help="relative bpp tolerance in %%")
    ap.add_argument("--psnr-tol", type=float, default=0.1, help="PSNR tolerance in dB")
    ap.add_argument("--ms-ssim", action="store_true", help="also compare MS-SSIM (slower)")
    ap.add_argument("--standalone", action="store_true",
                    help="Pillow + numpy only, without the lic package (e.g. Pillow 7.1.2 on Python 3.8)")
    args = ap.parse_args(argv)

    shared = _shared()
    kodak = shared / "data" / "kodak"
    ref_path = shared / "reference" / "kodak" / "jpeg.json"
    images = sorted(kodak.glob("*.png")) if kodak.is_dir() else []
    if len(images) != 24 or not ref_path.is_file():
        print(f"missing data: need 24 PNGs in {kodak} and {ref_path}")
        return 2
    with open(ref_path) as f:
        ref_json = json.load(f)
    ref = ref_json["results"]

    turbo = None
    try:
        if features.check_feature("libjpeg_turbo"):
            turbo = features.version("libjpeg_turbo")
    except Exception:  # noqa: BLE001 - old Pillow has no such feature
        pass
    print(f"Pillow {PIL.__version__}, libjpeg-turbo {turbo or 'no'}; "
          f"reference: {ref_json.get('description')}")
    print(f"{len(images)} images from {kodak}")

    measure = _measure_standalone if args.standalone else _measure_lic
    bpp, psnr, ms = measure(images, args.ms_ssim)

    print(f"{'q':>3} {'bpp':>9} {'ref bpp':>9} {'dbpp %':>8} {'PSNR':>8} {'ref PSNR':>8} {'dPSNR':>7}"
          + (f" {'dMS-SSIM':>9}" if args.ms_ssim else ""))
    d_bpp, d_psnr, d_ms = [], [], []
    for i, q in enumerate(QUALITIES):
        db = 100.0 * (bpp[i] / ref["bpp"][i] - 1.0)
        dp = psnr[i] - ref["psnr-rgb"][i]
        d_bpp.append(db)
        d_psnr.append(dp)
        line = (f"{q:>3} {bpp[i]:9.5f} {ref['bpp'][i]:9.5f} {db:+8.4f} "
                f"{psnr[i]:8.4f} {ref['psnr-rgb'][i]:8.4f} {dp:+7.4f}")
        if args.ms_ssim:
            d_ms.append(ms[i] - ref["ms-ssim-rgb"][i])
            line += f" {d_ms[-1]:+9.5f}"
        print(line)

    ib = int(np.argmax(np.abs(d_bpp)))
    ip = int(np.argmax(np.abs(d_psnr)))
    print(f"worst bpp deviation:  {d_bpp[ib]:+.4f} % at q={QUALITIES[ib]} (tolerance {args.bpp_tol} %)")
    print(f"worst PSNR deviation: {d_psnr[ip]:+.4f} dB at q={QUALITIES[ip]} (tolerance {args.psnr_tol} dB)")
    if d_ms:
        im = int(np.argmax(np.abs(d_ms)))
        print(f"worst MS-SSIM deviation: {d_ms[im]:+.5f} at q={QUALITIES[im]}")
    bd = _bd_rate(ref["bpp"], ref["psnr-rgb"], bpp, psnr)
    if bd == bd:  # not nan (needs the lic package)
        print(f"BD-rate of measured vs published JPEG: {bd:+.2f} % (PCHIP)")
    n_bad = sum(abs(b) > args.bpp_tol or abs(p) > args.psnr_tol for b, p in zip(d_bpp, d_psnr))
    if n_bad:
        print(f"NOT REPRODUCED: {n_bad}/{len(d_bpp)} points outside tolerance.")
        if turbo:
            print("Cause: this Pillow links libjpeg-turbo; jpeg.json was made with Pillow 7.1.2 "
                  "(IJG libjpeg 9d), which differs in chroma down-/up-sampling. See the docstring.")
        return 1
    print(f"REPRODUCED: all {len(d_bpp)} points within tolerance.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
