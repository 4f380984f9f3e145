"""Export a Lightning training checkpoint, or a CompressAI checkpoint, to inference weights, and
register them.

    python -m lic.export CKPT -o weights/NAME.safetensors [--half] [--register] [--default]
                         [--default-mode Q] [--mode Q]
    python -m lic.export --from-compressai FILE --arch NAME -o weights/NAME.safetensors
                         [--lmbda L] [--mode Q] [--half] [--register] [--default]

* loads ``CKPT`` with ``torch.load(weights_only=True)`` (no code from the file runs), keeps the
  model's weights (``net.*``), refuses non-finite ones;
* writes ``OUT`` with :func:`lic.weights.export`: entropy tables updated, safetensors, float32
  (``--half``: float16 weights, entropy tables exact), the model config and the training facts in
  the file's metadata;
* prints the registry entry (JSON) on stdout: name, file, sha256, fingerprint, modes, config,
  ``trained`` and ``default``;
* ``--register`` appends the entry to ``registry.json`` in OUT's folder, or replaces the entry
  for the same file name (create the registry if missing).  ``--default`` makes it the default
  model and clears the flag on the others; without it a replaced entry keeps its flag and a new
  one is not the default.  ``lic.weights`` reads the registry in ``weights/`` (or
  ``$LIC_WEIGHTS_DIR``): export there for ``encode.py`` / ``decode.py`` to find the model.

Training facts (``trained``): ``steps``, ``images_seen``, ``pixels_seen``, ``train_seconds``,
``device``, ``world_size`` come from the checkpoint's ``lic_train_stats`` (written by
``LitCodec.on_save_checkpoint``).  A checkpoint from before those stats existed gets estimates
(images = steps x batch size, pixels = images x crop^2, one process) and ``"estimated": true``;
``counted_from_step`` > 0 means the run was resumed from such a checkpoint, so the counts before
that step are estimates and ``train_seconds`` misses the time before it.

A single-rate model is registered under one compression mode (``--mode``; by default the
quality whose lambda the run used, see configs/quality/, else 1), so that
``lic.weights.load_model(mode=Q)`` finds the model trained for quality Q.

``--from-compressai FILE --arch NAME``: a CompressAI state dict (the format of its published
``.pth.tar`` zoo files, or a checkpoint of its ``examples/train.py`` with a ``state_dict``) of one of
CompressAI's architectures (``python -m lic.models`` lists them: bmshj2018-factorized, ...), loaded
with ``weights_only=True`` into the same network; its sizes (N, M) come from the tensors' shapes.
``--lmbda``: the lambda it was trained at, recorded in its config (the encoder's refine and adapt
weigh the rate with it), e.g. CompressAI's zoo quality 3 at MSE is 0.0067 (``--mode``: the mode it
is registered under, default 1).  Its files then evaluate with ``evaluate.py`` beside lic's own.

Exit status: 0 success, 1 failure (unreadable checkpoint, bad weights, cannot write), 2 usage.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from lic.atomic import atomic_write

# the paper's lambda for each quality (configs/quality/N.yaml), to name a single-rate model's mode
QUALITY_LAMBDAS = {1: 0.0016, 2: 0.0032, 3: 0.0075, 4: 0.015, 5: 0.03, 6: 0.045}

_STATS_KEYS = ("steps", "images_seen", "pixels_seen", "train_seconds", "device", "world_size", "counted_from_step")


class ExportError(RuntimeError):
    """The checkpoint cannot be exported (unreadable, not a lic checkpoint, bad weights)."""


def checkpoint_train_stats(ckpt: dict) -> dict:
    """The training facts of a loaded Lightning checkpoint (``lic_train_stats`` or estimates).

    Always has the keys of ``_STATS_KEYS`` plus ``estimated`` (bool); unknown values are None
    (``train_seconds`` and ``device`` of a checkpoint that predates the stats).
    """
    steps = int(ckpt.get("global_step") or 0)
    stats = ckpt.get("lic_train_stats")
    if isinstance(stats, dict):
        out = {k: stats.get(k) for k in _STATS_KEYS}
        out["steps"] = int(stats.get("steps", steps))
        out["counted_from_step"] = int(stats.get("counted_from_step") or 0)
        out["estimated"] = out["counted_from_step"] > 0
        return out
    dm = ckpt.get("datamodule_hyper_parameters") or {}
    batch, crop = dm.get("batch_size"), dm.get("crop")
    images = steps * int(batch) if batch else 0
    pixels = images * int(crop) ** 2 if crop else 0
    return {"steps": steps, "images_seen": images, "pixels_seen": pixels, "train_seconds": None,
            "device": None, "world_size": None, "counted_from_step": steps, "estimated": True}


def trained_facts(ckpt: dict, source: str | Path | None = None) -> dict:
    """What the registry records under ``trained``: the stats plus the run's settings."""
    facts = checkpoint_train_stats(ckpt)
    hp = ckpt.get("hyper_parameters") or {}
    dm = ckpt.get("datamodule_hyper_parameters") or {}
    model = hp.get("model") or {}
    facts["epochs"] = int(ckpt.get("epoch") or 0)
    facts["batch_size"] = dm.get("batch_size")
    facts["crop"] = dm.get("crop")
    if (model.get("num_modes") or 1) > 1:
        facts["lambdas"] = list(model.get("lmbdas") or [])
        if hp.get("mode_weights") is not None:   # recorded only when modes were not drawn uniformly
            facts["mode_weights"] = list(hp["mode_weights"])
    else:
        facts["lambda"] = hp.get("lmbda")
    opt, sched = hp.get("optimizer") or {}, hp.get("scheduler") or {}
    if opt:
        facts["optimizer"], facts["lr"] = opt.get("name"), opt.get("lr")
        facts["loss"] = hp.get("loss", "mse")
        if sched.get("name") and sched["name"] != "multistep":
            facts["scheduler"] = sched["name"]
        if sched.get("milestones"):
            facts["lr_milestones"] = list(sched["milestones"])
    for k in ("lr", "lr_milestones"):   # checkpoints from before the optimizer / scheduler groups
        if k in hp and k not in facts:
            facts[k] = list(hp[k]) if isinstance(hp[k], (list, tuple)) else hp[k]
    raw = ckpt.get("lic_train_stats")
    if isinstance(raw, dict):
        # the weights are the running average (ema_decay) or not; the run that wrote them; its start
        facts["ema_decay"] = raw.get("ema_decay")
        for k in ("run", "init_from"):
            if raw.get(k):
                facts[k] = raw[k]
    if source is not None:
        facts["checkpoint"] = Path(source).name
    if ckpt.get("pytorch-lightning_version"):
        facts["lightning_version"] = ckpt["pytorch-lightning_version"]
    return facts


def _load(path: str | Path):
    """``torch.load(weights_only=True)``: no code from the file runs; ExportError in one line."""
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ExportError(f"checkpoint not found: {path}") from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure is one clear error
        raise ExportError(f"{path}: cannot read the checkpoint "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None


def _refuse_non_finite(state: dict, path: str | Path) -> None:
    import torch

    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ExportError(f"{path}: non-finite weights in {len(bad)} tensors (first: {bad[0]}): refusing to export")


def load_training_checkpoint(path: str | Path):
    """(net, checkpoint dict) from a lic Lightning checkpoint, loaded with weights_only=True."""
    from lic.weights import LEGACY_ARCH, WeightsError, _build

    ckpt = _load(path)
    if not isinstance(ckpt, dict) or "lic_model_config" not in ckpt or "state_dict" not in ckpt:
        raise ExportError(f"{path}: not a lic training checkpoint (no lic_model_config / state_dict)")
    try:
        config = json.loads(ckpt["lic_model_config"])
        arch = str(ckpt.get("lic_arch", LEGACY_ARCH))
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"{path}: bad model config in the checkpoint ({type(e).__name__})") from None
    state = {k[4:]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    # a torch.compile'd net saves its weights as net._orig_mod.*
    state = {k[len("_orig_mod."):] if k.startswith("_orig_mod.") else k: v for k, v in state.items()}
    _refuse_non_finite(state, path)
    try:
        net = _build(arch, config, state, str(path))
    except WeightsError as e:
        raise ExportError(str(e)) from None
    return net, ckpt


def single_rate_mode(ckpt: dict) -> int:
    """The quality whose lambda a single-rate run used, else 1."""
    lmbda = (ckpt.get("hyper_parameters") or {}).get("lmbda")
    if isinstance(lmbda, (int, float)):
        for q, lq in QUALITY_LAMBDAS.items():
            if math.isclose(float(lmbda), lq, rel_tol=1e-6):
                return q
    return 1


def export_checkpoint(ckpt_path: str | Path, out: str | Path, half: bool = False, mode: int | None = None,
                      default_mode: float | None = None) -> dict:
    """Write ``out`` from a training checkpoint; returns its registry entry (``default`` False).

    ``default_mode``: a variable-rate model's mode for encoding without ``-q`` (registry ``default_mode``).
    """
    net, ckpt = load_training_checkpoint(ckpt_path)
    if default_mode is not None and not (net.config.num_modes > 1 and 1 <= default_mode <= net.config.num_modes):
        raise ExportError(f"--default-mode {default_mode:g} is not a mode of this model "
                          f"({net.config.num_modes} modes)")
    if net.config.num_modes > 1 and mode is not None:
        raise ExportError("--mode is for single-rate models; a variable-rate model has every mode")
    facts = trained_facts(ckpt, ckpt_path)
    q = single_rate_mode(ckpt) if mode is None else int(mode)
    entry = _write(net, Path(out), half, facts, q)
    if default_mode is not None:
        entry["default_mode"] = float(default_mode)
    return entry


def _write(net, out: Path, half: bool, facts: dict, mode: int) -> dict:
    """Write ``out`` beside itself and rename it into place (a failed export never leaves a truncated
    file under OUT's name); returns its registry entry, a single-rate model's under ``mode``."""
    from lic.weights import export

    if net.config.num_modes <= 1 and not 1 <= mode <= 255:
        raise ExportError(f"mode {mode} is outside 1..255")
    out.parent.mkdir(parents=True, exist_ok=True)
    # write beside OUT and rename: a failed export never leaves a truncated file under OUT's name
    with atomic_write(out) as tmp:
        entry = export(net, tmp, half=half, extra_meta={"lic_trained": facts})
    entry["file"] = out.name
    if net.config.num_modes <= 1:
        entry["modes"] = [mode]
    entry["half"] = bool(half)
    entry["trained"] = facts
    entry["default"] = False
    return entry


def load_compressai_state(path: str | Path, arch: str, lmbda: float | None = None):
    """A network of CompressAI architecture ``arch`` with the weights of a CompressAI state dict."""
    import torch

    from lic import models
    from lic.models.compressai_coding import CompressAIModel

    try:
        cls = models.get(arch)
    except KeyError as e:
        raise ExportError(str(e.args[0])) from None
    if not issubclass(cls, CompressAIModel):
        ours = sorted(a for a, c in models.ARCHITECTURES.items() if issubclass(c, CompressAIModel))
        raise ExportError(f"--from-compressai: {arch} is not one of CompressAI's architectures "
                          f"({', '.join(ours)})")
    obj = _load(path)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ExportError(f"{path}: not a CompressAI state dict")
    # a checkpoint saved from nn.DataParallel names every key module.*
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    _refuse_non_finite(state, path)
    try:
        net = cls(cls.config_from_state(state, lmbdas=(float(lmbda),) if lmbda else ()))
        net.load_state_dict(state, strict=True)   # CompressAI's: resizes the tables, renames old keys
    except (KeyError, RuntimeError, ValueError, IndexError) as e:
        raise ExportError(f"{path}: not a {arch} state dict ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
    return net.eval()


def export_compressai(path: str | Path, arch: str, out: str | Path, lmbda: float | None = None,
                      mode: int | None = None, half: bool = False) -> dict:
    """Write ``out`` from a CompressAI state dict of architecture ``arch``; returns its registry entry."""
    net = load_compressai_state(path, arch, lmbda)
    facts = {"source": "compressai", "file": Path(path).name}
    if lmbda:
        facts["lambda"] = float(lmbda)
    return _write(net, Path(out), half, facts, 1 if mode is None else int(mode))


def register(entry: dict, registry: str | Path, default: bool = False) -> list[dict]:
    """Add ``entry`` to ``registry`` (replacing the entry for the same file); returns the models.

    ``default``: the entry becomes the default model, and its modes the whole mode ladder (a
    ``ladder`` the registry had is dropped: ``lic.weights`` then derives it from the default)."""
    registry = Path(registry)
    doc: dict = {"models": []}
    if registry.exists():
        try:
            doc = json.loads(registry.read_text())
            doc["models"] = list(doc["models"])
        except (ValueError, KeyError, TypeError) as e:
            raise ExportError(f"{registry}: not a registry ({type(e).__name__}); fix or remove it") from None
    models = doc["models"]
    entry = dict(entry)
    old = next((i for i, e in enumerate(models) if e.get("file") == entry["file"]), None)
    entry["default"] = bool(default or (old is not None and models[old].get("default")))
    if default:
        for e in models:
            e["default"] = False
        doc.pop("ladder", None)
    if old is None:
        models.append(entry)
    else:
        models[old] = entry
    text = json.dumps(doc, indent=2) + "\n"
    with atomic_write(registry) as tmp:
        tmp.write_text(text)
    return models


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lic.export", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", metavar="CKPT", nargs="?", help="Lightning checkpoint (.ckpt) of a lic training run")
    p.add_argument("--from-compressai", metavar="FILE", default=None,
                   help="export a CompressAI state dict (its zoo's .pth.tar, or examples/train.py's checkpoint) "
                        "instead")
    p.add_argument("--arch", metavar="NAME", default=None, help="with --from-compressai: its architecture")
    p.add_argument("--lmbda", type=float, default=None,
                   help="with --from-compressai: the lambda it was trained at (recorded in its config)")
    p.add_argument("-o", "--output", metavar="OUT", required=True, help="weights file to write (.safetensors)")
    p.add_argument("--half", action="store_true", help="store float weights as float16 (entropy tables stay exact)")
    p.add_argument("--register", action="store_true", help="add or replace the entry in registry.json beside OUT")
    p.add_argument("--default", action="store_true", help="with --register: make this the default model")
    p.add_argument("--default-mode", type=float, default=None, metavar="Q",
                   help="variable-rate models: the mode encode.py uses without -q (registry default_mode)")
    p.add_argument("--mode", type=int, default=None,
                   help="single-rate models: the compression mode to register (default: from lambda)")
    args = p.parse_args(argv)
    if args.default and not args.register:
        p.error("--default needs --register")
    if (args.checkpoint is None) == (args.from_compressai is None):
        p.error("give a CKPT or --from-compressai FILE (one of them)")
    if (args.from_compressai is None) != (args.arch is None) or (args.lmbda is not None and args.arch is None):
        p.error("--from-compressai FILE goes with --arch NAME (and --lmbda), and they with it")
    if args.from_compressai is not None and args.default_mode is not None:
        p.error("--default-mode is for variable-rate models; CompressAI's are single-rate")
    out = Path(args.output)
    source = args.checkpoint or args.from_compressai
    if out.suffix != ".safetensors":
        p.error(f"OUT must end in .safetensors: {out}")
    if out.exists() and out.resolve() == Path(source).resolve():
        p.error("OUT is the checkpoint")
    try:
        if args.from_compressai is not None:
            entry = export_compressai(args.from_compressai, args.arch, out, lmbda=args.lmbda, mode=args.mode,
                                      half=args.half)
        else:
            entry = export_checkpoint(args.checkpoint, out, half=args.half, mode=args.mode,
                                      default_mode=args.default_mode)
        if args.register:
            from lic.weights import weights_dir

            registry = out.parent / "registry.json"
            models = register(entry, registry, default=args.default)
            entry = next(e for e in models if e["file"] == entry["file"])
            if out.parent.resolve() != weights_dir().resolve():
                print(f"lic.export: note: registered in {registry}; encode/decode read "
                      f"{weights_dir()}/registry.json (set LIC_WEIGHTS_DIR={out.parent})", file=sys.stderr)
    except (ExportError, OSError) as e:
        print(f"lic.export: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(entry, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
