"""The body of ``train.py``: instantiate everything from the Hydra config and fit."""
from __future__ import annotations

import logging
import os
import sys
import warnings
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


def _hydra_job() -> dict:
    """This job's place in a Hydra run: {"multirun", "sweep_dir", "num", "overrides"}; {} outside Hydra."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return {"multirun": False}
    return {"multirun": True, "sweep_dir": hc.sweep.dir, "num": hc.job.num, "overrides": list(hc.overrides.task)}


def _ddp_children_run_this_job(job: dict, out_dir: Path) -> None:
    """Lightning starts DDP processes 1..N-1 by re-running ``sys.argv`` with ``hydra.run.dir=<hydra.run.dir>``.

    Inside a multirun that command is the whole sweep (``-m quality=q1,q2``), and hydra.run.dir is
    not this job's folder: each child would run every job of the sweep into a second folder.  So
    the children get this job's own overrides and its folder (Hydra's ``run.dir``, read by Lightning).
    """
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import read_write

    sys.argv = [sys.argv[0], *job["overrides"]]
    hc = HydraConfig.get()
    with read_write(hc):
        hc.run.dir = str(out_dir)


#: what Lightning's DDP launcher sets in its own process; a later job of the same multirun would read
#: LOCAL_RANK as "the processes are started by someone else" and start none
_DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def _end_multirun_job(env_before: dict) -> None:
    """After one job of a multirun: close its process group and put the DDP variables back."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    for k in _DDP_ENV:
        if k in env_before:
            os.environ[k] = env_before[k]
        else:
            os.environ.pop(k, None)


def _wandb_identity(cfg: DictConfig, job: dict, out_dir: Path) -> dict:
    """name / group / job_type for a wandb logger: the jobs of one sweep share a group, <task_name>/<sweep
    folder>; a single run is a group of its own, <task_name>/<run folder> (evaluate.py joins it)."""
    if job.get("multirun"):
        return {"job_type": "train", "name": f"{cfg.task_name}-{job['num']}",
                "group": f"{cfg.task_name}/{Path(job['sweep_dir']).name}"}
    return {"job_type": "train", "name": str(cfg.task_name), "group": f"{cfg.task_name}/{out_dir.name}"}


def _make_loggers(cfg: DictConfig, job: dict, out_dir: Path) -> list:
    loggers = []
    for c in (cfg.get("logger") or {}).values():
        if c is None or "_target_" not in c:
            continue
        kw = {}
        if c["_target_"].endswith("WandbLogger"):
            kw = {k: v for k, v in _wandb_identity(cfg, job, out_dir).items() if c.get(k) is None}
        lg = instantiate(c, **kw, _convert_="all")
        if c["_target_"].endswith("WandbLogger"):
            # Lightning always passes wandb.init(anonymous=None), and wandb >= 0.22 warns about the
            # setting on every run; the setting does nothing, so it is not passed
            lg._wandb_init.pop("anonymous", None)
        loggers.append(lg)
    return loggers


def _run_record(out_dir: Path, loggers: list) -> dict:
    """What a checkpoint records of the run that wrote it (lic_train_stats["run"])."""
    from lightning.pytorch.loggers import WandbLogger

    record = {"dir": str(out_dir)}
    for lg in loggers:
        if isinstance(lg, WandbLogger):
            exp = lg.experiment
            record.update(wandb_id=exp.id, wandb_project=exp.project, wandb_group=exp.group or None)
    return record


def _finish_wandb() -> None:
    """Close the wandb run, if one is open: its config and summary files are written then (and a
    sweep runs its jobs one after the other in one process)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()


def build_callbacks(cfg: DictConfig, with_loggers: bool = True) -> list:
    from lightning.pytorch.callbacks import LearningRateMonitor

    callbacks = _instantiate_group(cfg.get("callbacks"))
    if not with_loggers:   # logger=none: Lightning refuses a LearningRateMonitor with nothing to log to
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    ema = cfg.get("ema") or {}
    if ema.get("decay"):
        from lic.training.ema import EMA

        callbacks.append(EMA(float(ema.decay), int(ema.get("start_step") or 0)))
    return callbacks


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
    job = _hydra_job()

    datamodule = instantiate(cfg.data, _convert_="all")
    module = instantiate(cfg.model, loss=cfg.loss.metric, optimizer=cfg.optimizer, scheduler=cfg.scheduler,
                         _convert_="all")
    if cfg.get("init_from"):
        if cfg.get("ckpt_path"):
            raise ValueError("init_from starts a new run from weights; ckpt_path resumes one: give one of them")
        log.info("initialised from %s", module.init_weights_from(cfg.init_from))
    if cfg.get("compile"):
        module.net = torch.compile(module.net)
    loggers = _make_loggers(cfg, job, out_dir)
    callbacks = build_callbacks(cfg, with_loggers=bool(loggers))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, _convert_="all")
    if trainer.is_global_zero:
        # the whole resolved config, once (the module and datamodule log none of their own)
        for lg in loggers:
            lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        module.run_record = _run_record(out_dir, loggers)

    # the data module continues a partly done epoch itself (lic.training.datamodule), which Lightning
    # cannot see: its warning that the loader is not resumable does not apply
    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
    argv, env = list(sys.argv), {k: os.environ[k] for k in _DDP_ENV if k in os.environ}
    if job.get("multirun"):
        _ddp_children_run_this_job(job, out_dir)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    finally:
        sys.argv = argv
        if job.get("multirun"):
            _end_multirun_job(env)
    _finish_wandb()
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    log.info("done at step %d: %s", trainer.global_step, metrics)
    return metrics
