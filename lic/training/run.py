"""The body of ``train.py``: instantiate everything from the Hydra config and fit."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def _instantiate_group(cfg: DictConfig | None) -> list:
    if not cfg:
        return []
    return [instantiate(c, _convert_="all") for c in cfg.values() if c is not None and "_target_" in c]


def train(cfg: DictConfig) -> dict[str, float]:
    os.environ.setdefault("WANDB_MODE", "offline")   # never block on a login prompt or the network
    os.environ.setdefault("WANDB_SILENT", "true")
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    torch.set_float32_matmul_precision(cfg.get("float32_matmul_precision", "high"))
    L.seed_everything(cfg.seed, workers=True)

    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

    datamodule = instantiate(cfg.data, _convert_="all")
    module = instantiate(cfg.model, _convert_="all")
    if cfg.get("init_from"):
        if cfg.get("ckpt_path"):
            raise ValueError("init_from starts a new run from weights; ckpt_path resumes one: give one of them")
        log.info("initialised from %s", module.init_weights_from(cfg.init_from))
    if cfg.get("compile"):
        module.net = torch.compile(module.net)
    callbacks = _instantiate_group(cfg.get("callbacks"))
    loggers = _instantiate_group(cfg.get("logger"))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, _convert_="all")
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    if cfg.get("save_final", True) and trainer.global_step > 0:
        # the state at the end of fit (max_steps or max_time reached), whatever the periodic checkpoints caught
        trainer.save_checkpoint(str(out_dir / "checkpoints" / "final.ckpt"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    log.info("done at step %d: %s", trainer.global_step, metrics)
    return metrics
