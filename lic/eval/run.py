"""The body of ``evaluate.py``: the learned codec and the classical ones on real files."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from lic.eval.baselines import available_baselines
from lic.eval.datasets import resolve_dataset
from lic.eval.lic_codec import LicCodec
from lic.eval.plot import DEFAULT_REFERENCES, load_curve, load_reference_curves, side_by_side_standard
from lic.eval.runner import EvalResult, RecordCache, evaluate
from lic.refine import RefineConfig

log = logging.getLogger(__name__)


def _references(cfg: DictConfig, full_kodak: bool):
    spec = cfg.references
    if spec in (None, "none") or (spec == "auto" and not full_kodak):
        return []
    if spec == "auto":
        return load_reference_curves(DEFAULT_REFERENCES)
    if spec == "all":
        return load_reference_curves(None)
    return load_reference_curves(list(spec))


def build_codec(cfg: DictConfig) -> LicCodec:
    m = cfg.model
    modes = [float(q) for q in m.modes] if m.modes else None
    proxy = m.get("refine_proxy")
    refine = RefineConfig(steps=int(m.get("refine") or 0), **({"proxy": str(proxy)} if proxy else {}))
    adapt = bool(m.get("adapt", False))
    if m.checkpoints:
        return LicCodec.from_checkpoints(list(m.checkpoints), modes, m.label, refine=refine, adapt=adapt)
    return LicCodec.shipped(m.name, modes, m.label, refine=refine, adapt=adapt)


def scored_runs(paths: list[str]) -> list[dict]:
    """The training run behind each scored checkpoint: ``lic_train_stats`` of a ``.ckpt``, the training
    record (``lic_trained``) exported into a ``.safetensors``.  ``run`` holds the run's folder and wandb
    id and group (``None`` for weights from before runs were recorded)."""
    out = []
    for p in paths:
        try:
            if str(p).endswith(".safetensors"):
                from safetensors import safe_open

                with safe_open(str(p), framework="pt") as f:
                    trained = json.loads((f.metadata() or {}).get("lic_trained") or "{}")
            else:
                trained = torch.load(str(p), map_location="cpu", weights_only=True).get("lic_train_stats") or {}
        except Exception:  # noqa: BLE001 - the link is a nicety; the scoring already read the file
            trained = {}
        out.append({"checkpoint": str(p), "steps": trained.get("steps"), "ema_decay": trained.get("ema_decay"),
                    "run": trained.get("run")})
    return out


def _log_wandb(cfg: DictConfig, out: Path, result: EvalResult) -> None:
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    config = OmegaConf.to_container(cfg, resolve=True)
    group = None
    if cfg.model.checkpoints:
        # linked to the training runs it scored: their ids in the config, and the first one's wandb group
        config["scored"] = scored_runs(list(cfg.model.checkpoints))
        group = next((s["run"].get("wandb_group") for s in config["scored"] if s["run"]), None)
    run = wandb.init(project=cfg.wandb.project, job_type="eval", dir=str(out), name=f"eval-{cfg.dataset.name}",
                     group=group, config=config, mode=os.environ["WANDB_MODE"])
    rows = [[c.label, s, b, p] for c in result.curves
            for s, b, p in zip(c.settings or [None] * len(c.bpp), c.bpp, c.psnr)]
    run.log({"rd_points": wandb.Table(columns=["codec", "setting", "bpp", "psnr"], data=rows)})
    for key, path in result.files.items():
        if str(path).endswith(".png"):
            run.log({key.replace(".png", ""): wandb.Image(str(path))})
    if result.bd is not None:
        run.log({"bd_rate_md": wandb.Html(f"<pre>{result.bd.to_markdown()}</pre>")})
    run.finish()


def spread(settings: list, n: int | None) -> list:
    """``n`` of ``settings`` spread evenly over the list, its first and last included (all when
    ``n`` is None or not smaller)."""
    if not n or n >= len(settings):
        return list(settings)
    if n == 1:
        return [settings[len(settings) // 2]]
    return [settings[round(i * (len(settings) - 1) / (n - 1))] for i in range(n)]


def _baseline_settings(cfg: DictConfig) -> int | None:
    """``baseline_settings``: N, null (all), or auto (all over a whole dataset, 5 with limit / crop)."""
    n = cfg.get("baseline_settings")
    if str(n).lower() == "auto":
        return 5 if (cfg.limit or cfg.crop) else None
    return int(n) if n else None


def _side_by_side_wanted(cfg: DictConfig) -> bool:
    """``side_by_side.enabled``: true, false, or auto (only for runs over a whole dataset)."""
    want = cfg.side_by_side.enabled
    if str(want).lower() == "auto":
        return not cfg.limit and not cfg.crop
    return bool(want)


def run(cfg: DictConfig) -> EvalResult:
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

    files = resolve_dataset(cfg.dataset.path)
    if cfg.limit:
        files = files[: int(cfg.limit)]
    lic_codec = build_codec(cfg) if cfg.model.get("enabled", True) else None
    baselines = available_baselines(list(cfg.baselines or []))
    for b in baselines:
        b.settings = spread(b.settings, _baseline_settings(cfg))
    codecs = ([lic_codec] if lic_codec is not None else []) + baselines
    kodak = Path(cfg.paths.data_dir) / "kodak"
    full_kodak = (kodak.is_dir() and Path(cfg.dataset.path).resolve() == kodak.resolve()
                  and not cfg.limit and not cfg.crop)
    cache = RecordCache(Path(cfg.cache_dir) / "records.sqlite") if cfg.get("cache_dir") else None
    earlier = [load_curve(p, published=False) for p in (cfg.get("curves") or [])]
    result = evaluate(files, codecs, out, references=earlier + _references(cfg, full_kodak), anchor=cfg.anchor,
                      with_ms_ssim=cfg.ms_ssim, crop=cfg.crop,
                      title=f"{cfg.dataset.name} ({len(files)} images)", cache=cache,
                      workers=int(cfg.get("workers") or 1))
    if cache is not None:
        log.info(cache.summary())
        cache.close()
    if lic_codec is not None and _side_by_side_wanted(cfg):
        try:
            mode = cfg.side_by_side.mode
            if mode is None:   # the shipped model's default mode (a checkpoint: lic.weights.DEFAULT_MODE)
                from lic.weights import DEFAULT_MODE, default_mode
                mode = DEFAULT_MODE if cfg.model.checkpoints else default_mode(cfg.model.name)
            mode = float(mode)
            mode = min(lic_codec.settings, key=lambda s: abs(s - mode))
            for p in side_by_side_standard(lic_codec, mode, out / "side_by_side", names=list(cfg.side_by_side.names)):
                result.files[f"side_by_side.{p.suffix[1:]}"] = p
        except FileNotFoundError as e:
            log.warning("side-by-side figure skipped: %s", e)
    # logged, not printed: under Hydra the console and the run's evaluate.log both get them
    if result.bd is not None:
        log.info("BD-rate table (bd_rate.md):\n%s", result.bd.to_markdown())
    log.info("files:\n%s", "\n".join(f"{key}: {path}" for key, path in result.files.items()))
    if cfg.wandb.enabled:
        _log_wandb(cfg, out, result)
    return result
