"""Model weights: the registry of shipped models, safe loading, fingerprints, export.

Weights are only ever read from safetensors files, or from Lightning checkpoints
with ``torch.load(weights_only=True)``; a registry file is loaded only after its
sha256 matches the registry. Nothing in a ``.lic`` file names a path to load: the
decoder looks its model up by (model_id, mode, fingerprint) in the registry.

Registry: ``weights/registry.json`` at the repository root (override the folder
with ``LIC_WEIGHTS_DIR``)::

    {"models": [{"name": "cheng2020-gmm-vr-checkerboard", "file": "...safetensors",
                 "sha256": "...", "fingerprint": 1234, "modes": [1, 2, 3, 4, 5, 6],
                 "default": true, "config": {...}, "trained": {...}}]}
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lic.container import MODEL_IDS
from lic.models.cheng2020 import Cheng2020GMM, ModelConfig
from lic.registry import read_registry, weights_dir  # noqa: F401  (re-exported: lic.weights.read_registry)

DEFAULT_MODE = 3.0   # the default mode of a registry entry without "default_mode" (and of checkpoints)
_MODEL_KEYS = {("checkerboard", False): 1, ("serial", False): 2, ("checkerboard", True): 3, ("serial", True): 4}


class WeightsError(RuntimeError):
    """Weights missing, unreadable, or not matching their recorded sha256."""


class UnknownModeError(WeightsError):
    """The requested compression mode does not exist for this model."""


def model_id_of(config: ModelConfig) -> int:
    return _MODEL_KEYS[(config.context, config.num_modes > 1)]


def fingerprint(net: torch.nn.Module) -> int:
    """u32 fingerprint of a model's state (names, shapes, dtypes and bytes), as written in .lic files."""
    h = hashlib.sha256()
    for name, t in sorted(net.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return int.from_bytes(h.digest()[:4], "big")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class LoadedModel:
    net: Cheng2020GMM
    model_id: int
    name: str
    mode: int = 1          # 1-based compression mode written in the file
    mode_frac: int = 0     # 0..255, variable-rate models only
    fingerprint: int = 0
    source: str = ""
    modes: list[int] = field(default_factory=list)

    @property
    def q(self) -> float | None:
        """The model's continuous 0-based mode, or None for a single-rate model."""
        if self.net.config.num_modes <= 1:
            return None
        return self.mode - 1 + self.mode_frac / 256


def split_mode(mode: float, num_modes: int) -> tuple[int, int]:
    """1-based (possibly fractional) mode -> (mode, mode_frac/256) for the file header."""
    if not math.isfinite(mode):
        raise UnknownModeError(f"mode must be a number, got {mode}")
    if num_modes <= 1:
        if mode != int(mode) or not 1 <= mode <= 255:
            raise UnknownModeError(f"mode {mode:g} is not an integer mode")
        return int(mode), 0
    if not 1 <= mode <= num_modes:
        raise UnknownModeError(f"mode {mode:g} is outside 1..{num_modes}")
    m = int(math.floor(mode))
    frac = int(round((mode - m) * 256))
    if frac == 256:
        m, frac = m + 1, 0
    if m == num_modes and frac:
        raise UnknownModeError(f"mode {mode:g} is outside 1..{num_modes}")
    return m, frac


def _build(config: ModelConfig, state: dict[str, torch.Tensor], source: str) -> Cheng2020GMM:
    net = Cheng2020GMM(config)
    try:
        net.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError, ValueError) as e:
        raise WeightsError(f"{source}: weights do not fit the model: {str(e).splitlines()[0]}") from None
    if net.entropy_bottleneck._quantized_cdf.numel() == 0:
        net.update(force=True)
    return net.eval()


def load_safetensors(path: str | Path) -> tuple[Cheng2020GMM, dict]:
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
        config = ModelConfig.from_dict(json.loads(meta["lic_config"]))
    except FileNotFoundError:
        raise WeightsError(f"weights file not found: {path}") from None
    except Exception as e:  # noqa: BLE001 - any parse failure is one clear error
        raise WeightsError(f"{path}: not a lic safetensors file ({type(e).__name__})") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    return _build(config, state, str(path)), meta


def load_lightning_checkpoint(path: str | Path) -> Cheng2020GMM:
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
        config = ModelConfig.from_dict(json.loads(ckpt["lic_model_config"]))
        state = {k[4:].replace("_orig_mod.", "", 1): v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    except FileNotFoundError:
        raise WeightsError(f"checkpoint not found: {path}") from None
    except Exception as e:  # noqa: BLE001
        raise WeightsError(f"{path}: not a lic training checkpoint ({type(e).__name__})") from None
    return _build(config, state, str(path))


def load_checkpoint(path: str | Path) -> Cheng2020GMM:
    """A model from an exported ``.safetensors`` file or a Lightning ``.ckpt``."""
    if str(path).endswith(".safetensors"):
        return load_safetensors(path)[0]
    return load_lightning_checkpoint(path)


def _registry_entry(model: str | None, mode: float | None, model_id: int | None = None,
                    fp: int | None = None) -> dict:
    entries = read_registry()
    if not entries:
        raise WeightsError(f"no shipped weights in {weights_dir()}: train and export a model, "
                           "or pass --checkpoint / LIC_CHECKPOINT")
    cands = [e for e in entries if (model is None or e["name"] == model)
             and (model_id is None or MODEL_IDS.get(model_id) == e["name"])
             and (fp is None or e["fingerprint"] == fp)]
    if model is None and model_id is None and fp is None:
        cands = [e for e in cands if e.get("default")] or cands
    if mode is not None:
        cands = [e for e in cands if min(e["modes"]) <= mode <= max(e["modes"])]
    cands.sort(key=lambda e: not e.get("default"))   # among entries of one name, the default first
    if not cands:
        if fp is not None:
            raise WeightsError("no shipped weights match this file's fingerprint "
                               "(made with other weights? give them with --checkpoint)")
        raise UnknownModeError(f"no shipped model {model or ''} has mode {mode:g}".replace("  ", " "))
    return cands[0]


def _load_entry(entry: dict) -> tuple[Cheng2020GMM, str]:
    path = weights_dir() / entry["file"]
    if not path.exists():
        raise WeightsError(f"weights file missing: {path}")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise WeightsError(f"{path.name}: sha256 mismatch (file is {digest[:12]}..., registry says "
                           f"{entry['sha256'][:12]}...): refusing to load")
    return load_safetensors(path)[0], str(path)


def load_entry(entry: dict) -> LoadedModel:
    """The model of one registry entry (sha256-checked), at its lowest mode: one file, whatever is default."""
    net, source = _load_entry(entry)
    m, frac = split_mode(float(min(entry["modes"])), net.config.num_modes)
    return LoadedModel(net, model_id_of(net.config), MODEL_IDS[model_id_of(net.config)], m, frac,
                       fingerprint(net), source, list(entry["modes"]))


def default_mode_of(entry: dict) -> float:
    """A registry entry's default compression mode: its ``default_mode``, else DEFAULT_MODE (clamped)."""
    if "default_mode" in entry:
        return float(entry["default_mode"])
    return float(min(max(DEFAULT_MODE, min(entry["modes"])), max(entry["modes"])))


def default_mode(model: str | None = None) -> float:
    """The default compression mode of the shipped model ``model`` (None: the default model)."""
    return default_mode_of(_registry_entry(model, None))


def load_model(mode: float | None = None, model: str | None = None, checkpoint: str | None = None) -> LoadedModel:
    """The model to encode with, at 1-based compression ``mode`` (default: the registry entry's
    ``default_mode``; a checkpoint's: DEFAULT_MODE)."""
    checkpoint = checkpoint or os.environ.get("LIC_CHECKPOINT") or None
    if checkpoint:
        net = load_checkpoint(checkpoint)
        source, modes = str(checkpoint), list(range(1, max(1, net.config.num_modes) + 1))
        if mode is None:
            mode = min(DEFAULT_MODE, float(net.config.num_modes)) if net.config.num_modes > 1 else 1.0
    else:
        if mode is None:   # the model's own default mode (the registry's "default_mode")
            entry = _registry_entry(model, None)
            mode = default_mode_of(entry)
        else:
            entry = _registry_entry(model, mode)
        net, source = _load_entry(entry)
        modes = list(entry["modes"])
        if net.config.num_modes <= 1:
            if len(modes) != 1 or mode != modes[0]:
                raise UnknownModeError(f"mode {mode:g} is not an integer mode of this model")
    m, frac = split_mode(mode, net.config.num_modes)
    return LoadedModel(net, model_id_of(net.config), MODEL_IDS[model_id_of(net.config)], m, frac,
                       fingerprint(net), source, modes)


def load_for_header(model_id: int, mode: int, fp: int, checkpoint: str | None = None) -> LoadedModel:
    """The model that decodes a file with this header's model_id, mode and fingerprint."""
    checkpoint = checkpoint or os.environ.get("LIC_CHECKPOINT") or None
    if checkpoint:
        net, source = load_checkpoint(checkpoint), str(checkpoint)
    else:
        net, source = _load_entry(_registry_entry(None, None, model_id=model_id, fp=fp))
    return LoadedModel(net, model_id_of(net.config), MODEL_IDS[model_id_of(net.config)], mode, 0,
                       fingerprint(net), source)


def export(net: Cheng2020GMM, path: str | Path, half: bool = False, extra_meta: dict | None = None) -> dict:
    """Write inference weights (entropy tables updated) to safetensors; returns a registry entry."""
    from safetensors.torch import save_file
    net = net.eval()
    net.update(force=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    if half:
        # tables and integer buffers stay exact; only float weights are stored in fp16
        state = {k: v.half() if v.is_floating_point() and not k.startswith("entropy_bottleneck") else v
                 for k, v in state.items()}
    meta = {"lic_config": json.dumps(net.config.to_dict())}
    meta.update({k: json.dumps(v) for k, v in (extra_meta or {}).items()})
    save_file(state, str(path), metadata=meta)
    reloaded, _ = load_safetensors(path)   # the fingerprint of what a user will load
    cfg = net.config
    return {"name": MODEL_IDS[model_id_of(cfg)], "file": Path(path).name, "sha256": sha256_file(path),
            "fingerprint": fingerprint(reloaded), "modes": list(range(1, max(1, cfg.num_modes) + 1)),
            "config": cfg.to_dict()}
