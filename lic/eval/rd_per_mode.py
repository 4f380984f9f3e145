"""Per mode: the learned codec's bpp, PSNR and MS-SSIM, and its PSNR and MS-SSIM minus each
measured codec's at the same bpp, from the files an evaluate run wrote.

    python -m lic.eval.rd_per_mode logs/eval/<run>           # after: python evaluate.py dataset=kodak
    python -m lic.eval.rd_per_mode logs/eval/<run> --against logs/eval/<earlier run>   # two models

``--against`` adds a row per metric for the lic curve of another run (the previous model on the
same images) and its BD-rate / BD-PSNR (PCHIP) against it.

Reads the run's CompressAI-schema JSON (``lic-*.json`` and one per measured codec), joins each
codec's points linearly in log-bpp (``lic.eval.bdrate.gain_at_rate``) and prints one markdown row
per codec and metric; "(below)" / "(above)" where a mode's bpp lies outside that codec's rates.
The BD-rate table of the same run (``bd_rate.md``) summarises whole curves; this shows where
along the curve a codec wins or loses.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from lic.eval.bdrate import bd_psnr, bd_rate, gain_at_rate

METRICS = (("psnr-rgb", "PSNR (dB)", "+.2f"), ("ms-ssim-rgb", "MS-SSIM", "+.4f"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="an evaluate run folder (holds lic-*.json and the codecs' JSON)")
    ap.add_argument("--against", default=None, help="another evaluate run: compare with its lic curve too")
    args = ap.parse_args(argv)

    def lic_json(run: Path) -> Path:
        found = sorted(run.glob("lic-*.json"))
        if len(found) != 1:
            ap.error(f"{run}: expected one lic-*.json, found {len(found)}")
        return found[0]

    run = Path(args.run)
    ours = lic_json(run)
    lic = json.loads(ours.read_text())["results"]
    # (name, results) of every curve to compare with, each file read once
    curves = [(p.stem, json.loads(p.read_text()).get("results", {}))
              for p in sorted(run.glob("*.json")) if p != ours and p.name != "bd_rate.json"]
    if args.against:
        theirs = lic_json(Path(args.against))
        other = json.loads(theirs.read_text())["results"]
        curves.append((f"{theirs.stem} ({args.against})", other))
    def measured(res: dict, key: str) -> bool:
        """``key``'s values are all there (a run with ms_ssim=false writes nulls)."""
        return bool(res.get(key)) and all(v is not None for v in res[key])

    modes = range(1, len(lic["bpp"]) + 1)
    print(f"| {ours.stem} | " + " | ".join(f"mode {m}" for m in modes) + " |")
    print("|---|" + "---:|" * len(modes))
    print("| bpp | " + " | ".join(f"{b:.3f}" for b in lic["bpp"]) + " |")
    print("| PSNR RGB (dB) | " + " | ".join(f"{p:.2f}" for p in lic["psnr-rgb"]) + " |")
    if measured(lic, "ms-ssim-rgb"):
        print("| MS-SSIM | " + " | ".join(f"{v:.3f}" for v in lic["ms-ssim-rgb"]) + " |")
    for name, res in curves:
        for key, label, fmt in METRICS:
            if not (measured(res, key) and measured(lic, key)):
                continue
            cells = []
            for b, q in zip(lic["bpp"], lic[key]):
                g = gain_at_rate(b, q, res["bpp"], res[key])
                cells.append(format(g, fmt) if not math.isnan(g) else ("(below)" if b < min(res["bpp"]) else "(above)"))
            print(f"| {label} vs {name} | " + " | ".join(cells) + " |")
    if args.against:
        print()
        for key, label, _ in METRICS:
            if measured(lic, key) and measured(other, key):
                a, t = list(zip(other["bpp"], other[key])), list(zip(lic["bpp"], lic[key]))
                print(f"BD-rate ({label.split()[0]}) vs {args.against}: {bd_rate(a, t):+.2f} %", end="")
                print(f", BD-PSNR {bd_psnr(a, t):+.3f} dB" if key == "psnr-rgb" else "")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
