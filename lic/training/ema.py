"""Exponential moving average of the weights (``ema.decay`` in the config): validated and exported.

After every optimizer step, ``shadow = decay * shadow + (1 - decay) * weights`` over the model's
parameters.  Validation runs on the averaged weights (swapped in, then back).  A checkpoint holds
the averaged weights under ``state_dict`` (what ``python -m lic.export`` and ``evaluate.py`` read,
with ``lic_train_stats["ema_decay"]`` saying so) and the training weights under
``lic_train_weights``, from which a resume continues.  This is the layout of Lightning's
``WeightAveraging`` callback; that callback is not used because it also swaps the buffers, and
the entropy coder's tables are buffers whose size changes at every real-bitstream validation
(``net.update``), so the swap fails on their shapes.  Only parameters are averaged here: the tables
are recomputed from them.
"""
from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

#: checkpoint key of the training (not averaged) weights
TRAIN_WEIGHTS = "lic_train_weights"
#: where use_training_weights puts the average while a checkpoint is being loaded (never saved)
_LOADED_AVERAGE = "lic_loaded_average"


def use_training_weights(checkpoint: dict[str, Any]) -> None:
    """Before Lightning loads ``state_dict`` for a resume: put the training weights there, the average aside.

    Called by ``LitCodec.on_load_checkpoint``, which Lightning calls before it loads the weights and
    before the callbacks' hooks, so a run resumes its training weights with or without ``ema.decay``.
    """
    train = checkpoint.pop(TRAIN_WEIGHTS, None)
    if train is None:
        return
    state = checkpoint["state_dict"]
    checkpoint[_LOADED_AVERAGE] = {n: state[n] for n in train}
    state.update(train)


class EMA(Callback):
    def __init__(self, decay: float, start_step: int = 0):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema.decay must be in (0, 1), got {decay}")
        self.decay, self.start_step = float(decay), int(start_step)
        self.shadow: dict[str, torch.Tensor] | None = None
        self._last_step = -1
        self._swapped = False

    def _params(self, pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
        return dict(pl_module.named_parameters())

    def on_train_start(self, trainer, pl_module) -> None:
        if self.shadow is None:   # a fresh run (a resume has loaded it from the checkpoint)
            self.shadow = {n: p.detach().clone() for n, p in self._params(pl_module).items()}

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._last_step:   # no optimizer step in this batch (gradient accumulation)
            return
        self._last_step = step
        params = self._params(pl_module)
        if step <= self.start_step:   # follow the weights exactly until start_step
            for n, s in self.shadow.items():
                s.copy_(params[n])
            return
        names = list(self.shadow)
        torch._foreach_lerp_([self.shadow[n] for n in names], [params[n].detach() for n in names], 1.0 - self.decay)

    @torch.no_grad()
    def _swap(self, pl_module) -> None:
        params = self._params(pl_module)
        for n, s in self.shadow.items():
            tmp = params[n].detach().clone()
            params[n].copy_(s)
            s.copy_(tmp)
        self._swapped = not self._swapped

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if self.shadow is not None and not trainer.sanity_checking and not self._swapped:
            self._swap(pl_module)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._swapped:
            self._swap(pl_module)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if self.shadow is None:
            return
        state = checkpoint["state_dict"]
        # while swapped (a checkpoint saved during validation) the module holds the average
        train = self.shadow if self._swapped else {n: state[n] for n in self.shadow}
        avg = {n: state[n] for n in self.shadow} if self._swapped else self.shadow
        checkpoint[TRAIN_WEIGHTS] = {n: t.detach().clone() for n, t in train.items()}
        for n, t in avg.items():
            state[n] = t.detach().clone()

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        """Resume the average that :func:`use_training_weights` set aside (else start it at on_train_start)."""
        avg = checkpoint.get(_LOADED_AVERAGE)
        if avg is not None:
            self.shadow = {n: t.detach().clone().to(pl_module.device) for n, t in avg.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "last_step": self._last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._last_step = int(state_dict.get("last_step", -1))
