"""Model weights: the registry of shipped models, safe loading, fingerprints, export.

Weights are only ever read from safetensors files, or from Lightning checkpoints
with ``torch.load(weights_only=True)``; a registry file is loaded only after its
sha256 matches the registry. Nothing in a ``.lic`` file names a path to load: the
decoder looks its model up by (model_id, mode, fingerprint) in the registry.

Registry: ``weights/registry.json`` at the repository root (override the folder
with ``LIC_WEIGHTS_DIR``)::

    {"ladder": {"default_mode": 4,
                "rungs": [{"modes": [1, 8], "file": "...safetensors", "model_mode": 1}, ...]},
     "models": [{"name": "cheng2020-gmm-vr-checkerboard", "arch": "cheng2020-gmm",
                 "file": "...safetensors", "sha256": "...", "fingerprint": 1234,
                 "modes": [1, 2, 3, 4, 5, 6], "default": true, "config": {...}, "trained": {...}}]}

An entry names its architecture (``arch``, the ``lic.models`` registry; entries and weights
files from before architectures were named are ``cheng2020-gmm``), its container model name
(``name``) and its hyperparameters (``config``); the weights file's metadata says the same.

The ladder maps the user's compression modes (``encode.py -q``) to weights and to that model's
own mode: user mode u of the rung whose ``modes`` [lo, hi] hold it is coded by the rung's file
at model mode ``model_mode + (u - lo)`` (fractional u for a variable-rate model; a single-rate
rung has lo = hi and no ``model_mode``, its files record u).  Appending a rung served by another
architecture is a change of this file only.  Without a ``ladder`` the default entry's modes
are the ladder.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lic import models
from lic.container import MODEL_IDS, FormatError, mode_value
from lic.models.base import LicModel, entropy_tables_ready
from lic.registry import LEGACY_ARCH, read_ladder, read_registry, weights_dir  # noqa: F401  (re-exported)

DEFAULT_MODE = 3.0   # the default mode of a registry entry without "default_mode" (and of checkpoints)


class WeightsError(RuntimeError):
    """Weights missing, unreadable, or not matching their recorded sha256."""


class UnknownModeError(WeightsError):
    """The requested compression mode does not exist for this model."""


def model_mode(mode: int, mode_frac: int, num_modes: int) -> float | None:
    """The model's continuous 0-based mode of a header's (mode, mode_frac), None for a single-rate
    model (whose header mode only records the user's mode)."""
    return None if num_modes <= 1 else mode_value(mode, mode_frac) - 1


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
    net: LicModel
    model_id: int
    name: str
    mode: int = 1          # 1-based compression mode written in the file
    mode_frac: int = 0     # 0..255, variable-rate models only
    fingerprint: int = 0
    source: str = ""
    modes: list[int] = field(default_factory=list)

    @property
    def mode_value(self) -> float:
        """The 1-based mode it codes at, mode_frac included (what the file header records)."""
        return mode_value(self.mode, self.mode_frac)

    @property
    def q(self) -> float | None:
        """The model's continuous 0-based mode, or None for a single-rate model."""
        return model_mode(self.mode, self.mode_frac, self.net.num_modes)

    def with_mode(self, mode: float) -> "LoadedModel":
        m, frac = split_mode(mode, self.net.num_modes)
        return LoadedModel(self.net, self.model_id, self.name, m, frac, self.fingerprint, self.source, self.modes)


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


def build_net(arch: str, config: dict, source: str) -> LicModel:
    """A fresh network of a recorded architecture and config; WeightsError if this build has no
    such architecture or the config does not fit it."""
    try:
        return models.build(arch, config)
    except KeyError as e:
        raise WeightsError(f"{source}: {e.args[0]}") from None
    except (TypeError, ValueError) as e:
        raise WeightsError(f"{source}: bad {arch} config ({str(e).splitlines()[0]})") from None


def _build(arch: str, config: dict, state: dict[str, torch.Tensor], source: str) -> LicModel:
    net = build_net(arch, config, source)
    try:
        net.load_state_dict(state, strict=True)   # CompressAI's: sizes the coding tables first
    except (RuntimeError, KeyError, ValueError) as e:
        raise WeightsError(f"{source}: weights do not fit the model: {str(e).splitlines()[0]}") from None
    if not entropy_tables_ready(net):
        net.update(force=True)
    return net.eval()


def load_safetensors(path: str | Path) -> tuple[LicModel, dict]:
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
        config = json.loads(meta["lic_config"])
        arch = meta.get("lic_arch", LEGACY_ARCH)
    except FileNotFoundError:
        raise WeightsError(f"weights file not found: {path}") from None
    except Exception as e:  # noqa: BLE001 - any parse failure is one clear error
        raise WeightsError(f"{path}: not a lic safetensors file ({type(e).__name__})") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    return _build(arch, config, state, str(path)), meta


def load_lightning_checkpoint(path: str | Path) -> LicModel:
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
        config = json.loads(ckpt["lic_model_config"])
        arch = ckpt.get("lic_arch", LEGACY_ARCH)
        state = {k[4:].replace("_orig_mod.", "", 1): v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    except FileNotFoundError:
        raise WeightsError(f"checkpoint not found: {path}") from None
    except Exception as e:  # noqa: BLE001
        raise WeightsError(f"{path}: not a lic training checkpoint ({type(e).__name__})") from None
    return _build(arch, config, state, str(path))


def load_checkpoint(path: str | Path) -> LicModel:
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
    cands = [e for e in entries if (model is None or model in (e["name"], e.get("arch", LEGACY_ARCH)))
             and (model_id is None or MODEL_IDS.get(model_id) == e["name"])
             and (fp is None or e["fingerprint"] == fp)]
    if model is None and model_id is None and fp is None:
        cands = [e for e in cands if e.get("default")] or cands
    if mode is not None:
        cands = [e for e in cands if min(e["modes"]) <= mode <= max(e["modes"])]
    cands.sort(key=lambda e: not e.get("default"))   # among entries of one name, the default first
    if not cands:
        if fp is not None:
            _raise_field_mismatch(entries, model_id, fp)
            raise WeightsError("no shipped weights match this file's fingerprint "
                               "(made with other weights? give them with --checkpoint)")
        if mode is None:   # (formatting None with :g was a TypeError)
            raise UnknownModeError(f"no shipped model {model}")
        raise UnknownModeError(f"no shipped model {model or ''} has mode {mode:g}".replace("  ", " "))
    return cands[0]


def _raise_field_mismatch(entries: list[dict], model_id: int | None, fp: int) -> None:
    """A file whose fingerprint names shipped weights but whose model_id names another model has a
    corrupt header: say which field disagrees (FormatError), rather than blame the fingerprint."""
    known = [e for e in entries if e["fingerprint"] == fp]
    if known and model_id is not None and MODEL_IDS.get(model_id) != known[0]["name"]:
        ids = {name: i for i, name in MODEL_IDS.items()}
        raise FormatError(f"lic: corrupt file: its model_id {model_id} ({MODEL_IDS.get(model_id)}) does not match "
                          f"the weights its fingerprint {fp:08x} names ({known[0]['file']}: model_id "
                          f"{ids.get(known[0]['name'])}, {known[0]['name']})")


def _load_entry(entry: dict) -> tuple[LicModel, str]:
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
    m, frac = split_mode(float(min(entry["modes"])), net.num_modes)
    return LoadedModel(net, net.model_id, net.format.name, m, frac, fingerprint(net), source, list(entry["modes"]))


def default_mode_of(entry: dict) -> float:
    """A registry entry's default compression mode: its ``default_mode``, else DEFAULT_MODE (clamped)."""
    if "default_mode" in entry:
        return float(entry["default_mode"])
    return float(min(max(DEFAULT_MODE, min(entry["modes"])), max(entry["modes"])))


@dataclass(frozen=True)
class Rung:
    """User modes lo..hi of the ladder, coded by ``entry`` at model mode ``model_mode + (u - lo)``
    (``model_mode`` None: a single-rate entry, lo = hi)."""

    lo: float
    hi: float
    entry: dict
    model_mode: float | None


def _variable_rate(entry: dict) -> bool:
    return int((entry.get("config") or {}).get("num_modes", 1)) > 1


def ladder() -> tuple[list[Rung], float]:
    """The registry's mode ladder and its default mode (see the module docstring)."""
    entries = read_registry()
    if not entries:
        raise WeightsError(f"no shipped weights in {weights_dir()}: train and export a model, "
                           "or pass --checkpoint / LIC_CHECKPOINT")
    spec = read_ladder()
    if spec:
        by_file = {e["file"]: e for e in entries}
        rungs = []
        for r in spec["rungs"]:
            if r["file"] not in by_file:
                raise WeightsError(f"registry ladder names {r['file']}, which no registry entry lists")
            lo, hi = float(r["modes"][0]), float(r["modes"][-1])
            e = by_file[r["file"]]
            rungs.append(Rung(lo, hi, e, float(r.get("model_mode", 1)) if _variable_rate(e) else None))
        return rungs, float(spec.get("default_mode", rungs[0].lo))
    default = next((e for e in entries if e.get("default")), entries[0])
    family = [e for e in entries if e["name"] == default["name"] and not _variable_rate(e)] \
        if not _variable_rate(default) else [default]
    rungs = [Rung(float(min(e["modes"])), float(max(e["modes"])), e, float(min(e["modes"])))
             if _variable_rate(e) else Rung(float(m), float(m), e, None)
             for e in family for m in (e["modes"] if not _variable_rate(e) else e["modes"][:1])]
    return sorted(rungs, key=lambda r: r.lo), default_mode_of(default)


def ladder_modes() -> list[float]:
    """The ladder's integer user modes, in order."""
    rungs, _ = ladder()
    return sorted({float(m) for r in rungs for m in range(int(math.ceil(r.lo)), int(math.floor(r.hi)) + 1)})


def _rung(mode: float) -> Rung:
    rungs, _ = ladder()
    for r in rungs:
        if r.lo <= mode <= r.hi and (r.model_mode is not None or mode == r.lo):
            return r
    top = max(r.hi for r in rungs)
    raise UnknownModeError(f"mode {mode:g} is outside 1..{top:g}" if not 1 <= mode <= top
                           else f"mode {mode:g} is not a mode of the shipped models")


def default_mode(model: str | None = None) -> float:
    """The default compression mode of the shipped model ``model`` (None: the ladder's)."""
    if model is None:
        return ladder()[1]
    return default_mode_of(_registry_entry(model, None))


def load_model(mode: float | None = None, model: str | None = None, checkpoint: str | None = None) -> LoadedModel:
    """The model to encode with, at 1-based compression ``mode``.

    Without ``model`` or ``checkpoint``, ``mode`` is a mode of the registry's ladder (default: its
    ``default_mode``).  With ``model`` (a container model name or an architecture), the mode is
    that registry model's own (default: the entry's ``default_mode``).  A checkpoint's modes are
    its own (default: DEFAULT_MODE)."""
    checkpoint = checkpoint or os.environ.get("LIC_CHECKPOINT") or None
    if checkpoint:
        net = load_checkpoint(checkpoint)
        source, modes = str(checkpoint), list(range(1, max(1, net.num_modes) + 1))
        if mode is None:
            mode = min(DEFAULT_MODE, float(net.num_modes)) if net.num_modes > 1 else 1.0
    elif model is None:
        if mode is None:
            mode = ladder()[1]
        if not math.isfinite(mode):
            raise UnknownModeError(f"mode must be a number, got {mode}")
        rung = _rung(mode)
        net, source = _load_entry(rung.entry)
        modes = list(rung.entry["modes"])
        if rung.model_mode is not None:
            mode = rung.model_mode + (mode - rung.lo)
    else:
        if mode is None:   # the model's own default mode (the registry's "default_mode")
            entry = _registry_entry(model, None)
            mode = default_mode_of(entry)
        else:
            entry = _registry_entry(model, mode)
        net, source = _load_entry(entry)
        modes = list(entry["modes"])
        if net.num_modes <= 1:
            if len(modes) != 1 or mode != modes[0]:
                raise UnknownModeError(f"mode {mode:g} is not an integer mode of this model")
    m, frac = split_mode(mode, net.num_modes)
    return LoadedModel(net, net.model_id, net.format.name, m, frac, fingerprint(net), source, modes)


def load_for_header(model_id: int, mode: int, fp: int, checkpoint: str | None = None) -> LoadedModel:
    """The model that decodes a file with this header's model_id, mode and fingerprint."""
    checkpoint = checkpoint or os.environ.get("LIC_CHECKPOINT") or None
    if checkpoint:
        net, source = load_checkpoint(checkpoint), str(checkpoint)
    else:
        net, source = _load_entry(_registry_entry(None, None, model_id=model_id, fp=fp))
    return LoadedModel(net, net.model_id, net.format.name, mode, 0, fingerprint(net), source)


def _entropy_model_prefixes(net: torch.nn.Module) -> tuple[str, ...]:
    from compressai.entropy_models import EntropyModel

    return tuple(f"{name}." for name, m in net.named_modules() if isinstance(m, EntropyModel))


def export(net: LicModel, path: str | Path, half: bool = False, extra_meta: dict | None = None) -> dict:
    """Write inference weights (entropy tables updated) to safetensors; returns a registry entry."""
    from safetensors.torch import save_file
    net = net.eval()
    net.update(force=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    if half:
        # the entropy models (tables, quantiles, densities) stay exact; only other float weights are fp16
        exact = _entropy_model_prefixes(net)
        state = {k: v.half() if v.is_floating_point() and not k.startswith(exact) else v
                 for k, v in state.items()}
    meta = {"lic_arch": net.arch, "lic_config": json.dumps(net.config.to_dict())}
    meta.update({k: json.dumps(v) for k, v in (extra_meta or {}).items()})
    save_file(state, str(path), metadata=meta)
    reloaded, _ = load_safetensors(path)   # the fingerprint of what a user will load
    cfg = net.config
    return {"name": net.format.name, "arch": net.arch, "file": Path(path).name, "sha256": sha256_file(path),
            "fingerprint": fingerprint(reloaded), "modes": list(range(1, max(1, cfg.num_modes) + 1)),
            "config": cfg.to_dict()}
