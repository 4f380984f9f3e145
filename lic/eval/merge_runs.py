"""One evaluation from two: the lic curve of a first ``evaluate.py`` run with some of its modes
replaced by a second run's, which measured only those modes (``model.modes=[...]``), with
everything a run writes (per-image CSV, per-codec JSON, RD plots, BD-rate table) redone.

    python -m lic.eval.merge_runs logs/eval/<whole run> logs/eval/<run of some modes> --out logs/eval/<merged> \\
        [--label "lic ..."] [--curves earlier.json ...]

For when a change touches only some modes (the refining encoder's stand-in at modes 7-8, say),
so that re-coding the other modes, which would give the same files, is not needed.  Every
number comes from the runs' own per-image records (``per_image.csv``): the classical codecs
and the untouched modes from the first run, the replaced modes from the second, all on the
same images.  The published Kodak curves are added when both runs covered all 24 Kodak images.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from lic.eval.plot import DEFAULT_REFERENCES, load_curve, load_reference_curves
from lic.eval.runner import ImageRecord, aggregate, read_csv, write_outputs


def lic_name(records: list[ImageRecord], run: Path) -> str:
    names = {r.codec for r in records if r.codec.startswith("lic ")}
    if len(names) != 1:
        raise SystemExit(f"{run}: expected one lic curve, found {sorted(names)}")
    return names.pop()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("whole", type=Path, help="a run of every mode (and the classical codecs)")
    ap.add_argument("part", type=Path, help="a run of some modes, on the same images")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--label", default=None, help="the merged lic curve's label (default: the second run's)")
    ap.add_argument("--curves", nargs="*", default=[], help="earlier measured curves (.json) drawn beside")
    args = ap.parse_args(argv)

    whole, part = read_csv(args.whole / "per_image.csv"), read_csv(args.part / "per_image.csv")
    a, b = lic_name(whole, args.whole), lic_name(part, args.part)
    label = args.label or b
    images = {r.image for r in whole if r.codec == a}
    replaced = sorted({r.setting for r in part if r.codec == b})
    if {r.image for r in part if r.codec == b} != images:
        raise SystemExit("the two runs did not code the same images")
    lic = ([r for r in whole if r.codec == a and r.setting not in replaced]
           + [r for r in part if r.codec == b])
    lic = sorted(lic, key=lambda r: (r.setting, r.image))
    for r in lic:
        r.codec = label
    records = lic + [r for r in whole if r.codec != a]
    curves = aggregate(records)
    full_kodak = len(images) == 24 and all(n.startswith("kodim") for n in images)
    references = [load_curve(p, published=False) for p in args.curves]
    references += load_reference_curves(DEFAULT_REFERENCES) if full_kodak else []
    bd, files = write_outputs(args.out, records, curves, references,
                              title=f"kodak ({len(images)} images)" if full_kodak else None)
    print(f"{label}: modes {', '.join(f'{s:g}' for s in replaced)} from {args.part}, the rest from {args.whole}")
    if bd is not None:
        print(bd.to_markdown())
    for key, path in files.items():
        print(f"{key}: {path}")


if __name__ == "__main__":
    main()
