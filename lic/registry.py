"""Where the shipped weights live and what the registry lists, without torch (``lic.weights``
loads the weights; ``decode.py --info`` only needs to name them)."""
from __future__ import annotations

import json
import os
from pathlib import Path


def weights_dir() -> Path:
    env = os.environ.get("LIC_WEIGHTS_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "weights"


def read_registry() -> list[dict]:
    path = weights_dir() / "registry.json"
    if not path.exists():
        return []
    return json.loads(path.read_text())["models"]


def mode_ranges(model: str | None = None) -> list[tuple[float, float]]:
    """The (lowest, highest) mode of each shipped entry of ``model`` (a container model name; None:
    the default entries), as ``lic.weights.load_model`` chooses among them: a variable-rate entry codes
    every mode in between, a single-rate one its one mode.  Empty when nothing of it is shipped."""
    entries = read_registry()
    if model is None:
        entries = [e for e in entries if e.get("default")] or entries
    else:
        entries = [e for e in entries if e["name"] == model]
    return [(float(min(e["modes"])), float(max(e["modes"]))) for e in entries]


def describe_modes(ranges: list[tuple[float, float]]) -> str:
    """'modes 1-8' (or 'modes 1, 2, 5' for single-rate entries) for :func:`mode_ranges`' result."""
    lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
    if all(a == b for a, b in ranges):
        return "modes " + ", ".join(f"{m:g}" for m in sorted({a for a, _ in ranges}))
    return f"modes {lo:g}-{hi:g}"
