"""Optimizers and learning-rate schedules from the config (configs/optimizer/, configs/scheduler/).

One optimizer with two parameter groups: the model (``lr``) and the entropy bottleneck's quantiles
(``aux_lr``, CompressAI's aux loss).  The RD loss puts no gradient on the quantiles, so one
optimizer minimising rd_loss + aux_loss is CompressAI's two-optimizer recipe with one Lightning
step per batch.  ``compressai.optimizers.net_aux_optimizer`` makes the same split but returns two
optimizers, which Lightning's automatic optimization (and its gradient clipping) does not take,
and it rejects frozen parameters (``model.train_only``).  The aux group keeps its rate under
every schedule: the quantiles must keep tracking the latents.

Optimizers: ``adam``, ``adamw`` (torch) and ``soap`` (Vyas et al. 2024, "SOAP: Improving and
Stabilizing Shampoo using Adam", from the ``pytorch-optimizer`` package: Adam run in the
eigenbasis of Shampoo's preconditioner).  Schedules: ``multistep`` (warmup, then x ``gamma`` at
step ``milestones`` and at fractions ``budget_milestones`` of the run's budget),
``cosine`` (linear warmup, then half a cosine down to ``min_factor`` x lr at ``total_steps``) and
``plateau`` (ReduceLROnPlateau on the validation loss, CompressAI's default: x ``factor`` after
``patience`` validations without improvement).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

OPTIMIZERS = ("adam", "adamw", "soap")
SCHEDULERS = ("multistep", "cosine", "plateau")


def param_groups(net: nn.Module, lr: float, aux_lr: float) -> list[dict]:
    """[model group, quantiles group]; frozen parameters (requires_grad False) are left out."""
    named = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    main = [p for n, p in named if not n.endswith(".quantiles")]
    aux = [p for n, p in named if n.endswith(".quantiles")]
    groups = [{"params": main, "lr": lr}]
    if aux:   # (train_only may freeze the entropy bottleneck)
        # no weight decay on the quantiles: they are positions on the latent axis, not weights
        groups.append({"params": aux, "lr": aux_lr, "weight_decay": 0.0})
    return groups


def build_optimizer(net: nn.Module, cfg: dict) -> torch.optim.Optimizer:
    """cfg: ``name``, ``lr``, ``aux_lr`` and the optimizer's own keyword arguments."""
    cfg = dict(cfg)
    name = cfg.pop("name", "adam")
    groups = param_groups(net, float(cfg.pop("lr")), float(cfg.pop("aux_lr")))
    if "betas" in cfg:
        cfg["betas"] = tuple(cfg["betas"])
    if name == "adam":
        return torch.optim.Adam(groups, **cfg)
    if name == "adamw":
        return torch.optim.AdamW(groups, **cfg)
    if name == "soap":
        from pytorch_optimizer import SOAP

        return SOAP(groups, **cfg)
    raise ValueError(f"optimizer {name!r}: one of {OPTIMIZERS}")


def warmup_factor(step: int, warmup_steps: int) -> float:
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def multistep_factor(milestones: Iterable[int], gamma: float, warmup_steps: int,
                     budget_drops: list[int]) -> Callable[[int], float]:
    """lr factor at a step: warmup, then x gamma at each milestone and at each budget drop so far.

    ``budget_drops`` is read at every call (the module appends to it when a budget fraction is reached).
    """
    ms = sorted(int(m) for m in milestones)

    def factor(step: int) -> float:
        n = sum(step >= m for m in ms) + sum(step >= m for m in budget_drops)
        return gamma ** n * warmup_factor(step, warmup_steps)

    return factor


def cosine_factor(total_steps: int, warmup_steps: int, min_factor: float) -> Callable[[int], float]:
    """Linear warmup to 1, then half a cosine from 1 down to ``min_factor`` at ``total_steps`` (and flat after)."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return warmup_factor(step, warmup_steps)
        t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * t))

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: dict, *, max_steps: int | None,
                    budget_drops: list[int]) -> dict:
    """The ``lr_scheduler`` entry of ``configure_optimizers`` (Lightning's dict)."""
    cfg = dict(cfg)
    name = cfg.pop("name", "multistep")
    keep = lambda step: 1.0  # noqa: E731 - the aux group's factor
    n_groups = len(optimizer.param_groups)
    if name == "multistep":
        f = multistep_factor(cfg.get("milestones") or [], float(cfg.get("gamma", 0.1)),
                             int(cfg.get("warmup_steps") or 0), budget_drops)
        sched = torch.optim.lr_scheduler.LambdaLR(optimizer, [f, keep][:n_groups])
        return {"scheduler": sched, "interval": "step"}
    if name == "cosine":
        total = cfg.get("total_steps") or max_steps
        if not total or total <= 0:
            raise ValueError("scheduler=cosine needs scheduler.total_steps or trainer.max_steps")
        f = cosine_factor(int(total), int(cfg.get("warmup_steps") or 0), float(cfg.get("min_factor", 0.0)))
        sched = torch.optim.lr_scheduler.LambdaLR(optimizer, [f, keep][:n_groups])
        return {"scheduler": sched, "interval": "step"}
    if name == "plateau":
        aux_lr = [g["lr"] for g in optimizer.param_groups[1:]]
        # min_lr per group: the aux group's floor is its own rate, so only the model's rate drops
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=float(cfg.get("factor", 0.1)), patience=int(cfg.get("patience", 10)),
            threshold=float(cfg.get("threshold", 1e-4)), min_lr=[float(cfg.get("min_lr", 0.0)), *aux_lr])
        # stepped by LitCodec.lr_scheduler_step once per validation (Lightning would call it every step)
        return {"scheduler": sched, "interval": "step", "monitor": cfg.get("monitor", "val/loss"), "strict": False}
    raise ValueError(f"scheduler {name!r}: one of {SCHEDULERS}")
