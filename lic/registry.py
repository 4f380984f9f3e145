"""Where the shipped weights live and what the registry lists, without torch (``lic.weights``
loads the weights; ``decode.py --info`` only needs to name them)."""
from __future__ import annotations

import json
import os
from pathlib import Path


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
