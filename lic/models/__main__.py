"""python -m lic.models: the registered architectures, their container ids, defaults and what
the encoder can do with them."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from lic import container
from lic.models import ARCHITECTURES, can_adapt, can_refine

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "model"


def rows() -> list[dict]:
    out = []
    for name, cls in sorted(ARCHITECTURES.items()):
        ids = {i: m.name for i, m in container.MODELS.items() if m.arch == name}
        out.append({"arch": name, "class": f"{cls.__module__}.{cls.__qualname__}",
                    "model_ids": ids, "defaults": cls.Config().to_dict(),
                    "downsampling": container.MODELS[next(iter(ids))].pad,
                    "refine": can_refine(cls), "adapt": can_adapt(cls),
                    "config": f"configs/model/{name}.yaml" if (CONFIGS / f"{name}.yaml").exists() else None})
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    table = rows()
    if "--json" in argv:
        print(json.dumps(table, indent=2))
        return 0
    print(f"{'architecture':28} {'container ids':34} {'pad':>4}  refine adapt  config / defaults")
    for r in table:
        ids = ", ".join(f"{i} {n}" for i, n in r["model_ids"].items())
        print(f"{r['arch']:28} {ids:34} {r['downsampling']:>4}  {'yes' if r['refine'] else 'no':6} "
              f"{'yes' if r['adapt'] else 'no':5}  {r['config'] or '-'}  {json.dumps(r['defaults'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
