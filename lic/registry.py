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
