"""Command-line fix-ups for Hydra overrides (imported by train.py before Hydra parses sys.argv).

Hydra reads ``quality=3`` as the integer 3, and a config group override must be a string:
``python train.py quality=3`` and ``python train.py -m quality=1,2,3`` fail with "Config group
override must be a string or a list. Got int" unless the numbers are quoted (``quality='3'``).
:func:`quote_numeric_choices` quotes them for every config group whose options are numbers
(configs/quality/1.yaml ... 6.yaml), so the documented commands work as written.
"""
from __future__ import annotations

import re
from pathlib import Path

_OVERRIDE = re.compile(r"^(?P<prefix>\+{0,2})(?P<key>[A-Za-z_][\w/.]*)=(?P<value>\d+(?:,\d+)*)$")


def numeric_groups(config_dir: str | Path) -> set[str]:
    """Config groups (paths relative to ``config_dir``) that have an option named by a number."""
    root = Path(config_dir)
    return {p.parent.relative_to(root).as_posix() for p in root.rglob("*.yaml") if p.stem.isdigit()}


def quote_numeric_choices(argv: list[str], config_dir: str | Path) -> list[str]:
    """``quality=1,2`` -> ``quality='1','2'`` for numeric config groups; other arguments unchanged."""
    groups = numeric_groups(config_dir)
    out = []
    for arg in argv:
        m = _OVERRIDE.match(arg)
        if m and m["key"] in groups:
            arg = f"{m['prefix']}{m['key']}=" + ",".join(f"'{v}'" for v in m["value"].split(","))
        out.append(arg)
    return out
