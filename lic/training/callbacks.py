"""Lightning callbacks as configs/callbacks/default.yaml uses them (the weight average is in ``ema``)."""
from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint, ThroughputMonitor


class PeriodicCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint (every N steps, the last ``save_top_k`` by step), plus one save when
    fit ends between two periodic ones (``trainer.max_steps`` or ``trainer.max_time`` reached), so the
    final state is one of the last K and ``last.ckpt`` (``save_last: link``) points at it: no
    separate final copy."""

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_step > 0 and not self._should_skip_saving_checkpoint(trainer):
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
        super().on_train_end(trainer, pl_module)


def _batch_size(batch) -> int:
    return int(batch.shape[0])   # (B, 3, H, W)


def _pixels(batch) -> int:
    return int(batch.shape[0] * batch.shape[-2] * batch.shape[-1])


def throughput_monitor(**kwargs) -> ThroughputMonitor:
    """Lightning's ThroughputMonitor on image batches: ``train|samples_per_sec`` (crops) and
    ``train|items_per_sec`` (pixels; ``|batches_per_sec`` too), every ``trainer.log_every_n_steps``."""
    return ThroughputMonitor(batch_size_fn=_batch_size, length_fn=_pixels, **kwargs)
