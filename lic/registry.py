"""Where the shipped weights live and what the registry lists, without torch (``lic.weights``
loads the weights; ``decode.py --info`` only needs to name them)."""
from __future__ import annotations

import json
import os
from pathlib import Path

LEGACY_ARCH = "cheng2020-gmm"   # weights, checkpoints and registry entries that name no architecture


def weights_dir() -> Path:
    env = os.environ.get("LIC_WEIGHTS_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "weights"


def _read() -> dict:
    path = weights_dir() / "registry.json"
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def read_registry() -> list[dict]:
    """The registry's model entries (``lic.weights`` describes them)."""
    return _read().get("models", [])


def read_ladder() -> dict | None:
    """The registry's mode ladder (``lic.weights`` describes it), or None when it has none."""
    return _read().get("ladder")


def mode_ranges(model: str | None = None) -> list[tuple[float, float]]:
    """The (lowest, highest) mode of what ``lic.weights.load_model`` can code for ``model`` (a
    container model name or an architecture), as it chooses: None, the ladder's rungs (or, without
    a ladder, the default entries); otherwise each shipped entry of that model, a variable-rate one
    coding every mode in between, a single-rate one its one mode.  Empty when nothing is shipped."""
    entries = read_registry()
    if model is None:
        ladder = read_ladder()
        if ladder and ladder.get("rungs"):
            return [(float(min(r["modes"])), float(max(r["modes"]))) for r in ladder["rungs"]]
        entries = [e for e in entries if e.get("default")] or entries
    else:
        entries = [e for e in entries if model in (e["name"], e.get("arch", LEGACY_ARCH))]
    return [(float(min(e["modes"])), float(max(e["modes"]))) for e in entries]


def describe_modes(ranges: list[tuple[float, float]]) -> str:
    """'modes 1-8' (or 'modes 1, 2, 5' for single-rate entries) for :func:`mode_ranges`' result."""
    lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
    if all(a == b for a, b in ranges):
        return "modes " + ", ".join(f"{m:g}" for m in sorted({a for a, _ in ranges}))
    return f"modes {lo:g}-{hi:g}"
