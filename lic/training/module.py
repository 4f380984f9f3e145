"""LightningModule: trains ``Cheng2020GMM`` on the rate-distortion loss with noise quantization.

One optimizer with two parameter groups (the model, and the entropy bottleneck's
quantiles with their own learning rate) minimises rd_loss + aux_loss: the RD loss
puts no gradient on the quantiles, so this equals CompressAI's two-optimizer
recipe while Lightning's ``global_step`` advances once per batch.
"""
from __future__ import annotations

import json
import time

import lightning as L
import torch

from lic.models.cheng2020 import Cheng2020GMM, ModelConfig
from lic.training.losses import rate_distortion_loss

# the entropy bottleneck's coding tables: empty until update(), sized by it
_TABLES = ("_quantized_cdf", "_offset", "_cdf_length")


class LitCodec(L.LightningModule):
    def __init__(self, model: dict, lmbda: float | None = 0.0067, lr: float = 1e-4, aux_lr: float = 1e-3,
                 lr_milestones: list[int] | tuple[int, ...] = (), lr_gamma: float = 0.1, warmup_steps: int = 0,
                 val_real_images: int = 2, val_modes: list[float] | None = None,
                 lr_budget_milestones: list[float] | tuple[float, ...] = (),
                 train_only: list[str] | tuple[str, ...] | None = None,
                 mode_weights: list[float] | tuple[float, ...] | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.config = ModelConfig.from_dict(model)
        self.net = Cheng2020GMM(self.config)
        if train_only:   # e.g. [g_s, log_inv_gain]: the rest frozen (not in the optimizer)
            names = {n.split(".")[0] for n, _ in self.net.named_parameters()}
            unknown = sorted(set(train_only) - names)
            if unknown:
                raise ValueError(f"train_only: no parameters named {unknown} (the model has {sorted(names)})")
            for n, p in self.net.named_parameters():
                p.requires_grad_(n.split(".")[0] in train_only)
        if self.config.num_modes > 1:
            lm = torch.tensor(self.config.lmbdas or [lmbda] * self.config.num_modes, dtype=torch.float32)
            self.register_buffer("lmbdas", lm, persistent=False)
            # how often each mode is drawn in training (None: uniform, drawn with randint)
            mode_p = None
            if mode_weights is not None:
                w = torch.tensor(mode_weights, dtype=torch.float32)
                if (w.shape != (self.config.num_modes,) or not bool(torch.isfinite(w).all())
                        or bool((w < 0).any()) or float(w.sum()) <= 0):
                    raise ValueError(f"mode_weights: {self.config.num_modes} non-negative weights with a "
                                     f"positive sum, got {mode_weights}")
                mode_p = w / w.sum()
            self.register_buffer("mode_p", mode_p, persistent=False)
        elif mode_weights is not None:
            raise ValueError("mode_weights: only for a variable-rate model (num_modes > 1)")
        elif lmbda is None:
            raise ValueError("a single-rate model needs lmbda")
        self._t_last = None
        # training facts written into every checkpoint ("lic_train_stats"), carried across resumes
        self._stats_base = {"images_seen": 0, "pixels_seen": 0, "train_seconds": 0.0, "counted_from_step": 0}
        self._seg_images = self._seg_pixels = 0   # this session (since the start or the resume)
        self._seg_t0: float | None = None
        # steps at which a budget milestone dropped the LR (saved in checkpoints, so drops survive resumes)
        self._budget_drops: list[int] = []
        self._train_device: str | None = None   # read at train start (see on_train_start)

    # the 0-based modes validated for a variable-rate model (default: lowest, middle, highest)
    def _val_modes(self) -> list[float | None]:
        n = self.config.num_modes
        if n <= 1:
            return [None]
        return list(self.hparams.val_modes or sorted({0, (n - 1) // 2, n - 1}))

    def forward(self, x, mode=None):
        return self.net(x, mode)

    def training_step(self, x, batch_idx):
        B = x.shape[0]
        ws = self._trainer.world_size if self._trainer is not None else 1   # every rank sees a batch
        self._seg_images += B * ws
        self._seg_pixels += B * x.shape[-2] * x.shape[-1] * ws
        if self.config.num_modes > 1:
            if self.mode_p is None:   # (B,): one 0-based mode per image
                mode = torch.randint(0, self.config.num_modes, (B,), device=x.device)
            else:
                mode = torch.multinomial(self.mode_p, B, replacement=True)
            lmbda = self.lmbdas[mode]
            out = self.net(x, mode.float())
        else:
            lmbda = self.hparams.lmbda
            out = self.net(x)
        rd = rate_distortion_loss(out, x, lmbda)
        aux = self.net.aux_loss()
        now = time.perf_counter()
        if self._t_last is not None:
            self.log("train/sec_per_step", now - self._t_last, on_step=True)
        self._t_last = now
        self.log_dict({"train/loss": rd.loss, "train/bpp_est": rd.bpp_est, "train/mse": rd.mse,
                       "train/psnr": rd.psnr, "train/aux_loss": aux}, on_step=True, prog_bar=False)
        self.log("train/loss_pb", rd.loss, prog_bar=True, logger=False)
        return rd.loss + aux

    def validation_step(self, x, batch_idx):
        for q in self._val_modes():
            out = self.net(x, q)
            lmbda = self.hparams.lmbda if q is None else float(self.lmbdas[int(q)])
            rd = rate_distortion_loss(out, x, lmbda)
            sfx = "" if q is None else f"_q{int(q) + 1}"
            self.log_dict({f"val/loss{sfx}": rd.loss, f"val/bpp_est{sfx}": rd.bpp_est, f"val/psnr{sfx}": rd.psnr},
                          batch_size=x.shape[0], sync_dist=True)
            if batch_idx == 0 and self.hparams.val_real_images > 0:
                self._log_real(x[: self.hparams.val_real_images], q, sfx)

    @torch.no_grad()
    def _log_real(self, x, q, sfx):
        """Real bitstreams on a few validation crops: bytes of the whole .lic file, header included."""
        from lic import codec, io
        from lic.eval.metrics import psnr

        self.net.update(force=True)
        bpps, psnrs = [], []
        for xi in x:
            pixels = io.from_tensor(xi[None])
            mode = 1.0 if q is None else q + 1.0
            data = codec.encode_with_net(self.net, pixels, mode=mode)
            rec = codec.decode_with_net(self.net, data)
            bpps.append(8 * len(data) / (pixels.shape[0] * pixels.shape[1]))
            psnrs.append(psnr(pixels, rec))
        self.log_dict({f"val/bpp{sfx}": sum(bpps) / len(bpps), f"val/psnr_real{sfx}": sum(psnrs) / len(psnrs)},
                      batch_size=len(bpps), sync_dist=True)

    def configure_optimizers(self):
        aux = [p for n, p in self.net.named_parameters() if n.endswith(".quantiles") and p.requires_grad]
        main = [p for n, p in self.net.named_parameters() if not n.endswith(".quantiles") and p.requires_grad]
        groups = [{"params": main, "lr": self.hparams.lr}]
        if aux:   # (train_only may freeze the entropy bottleneck)
            groups.append({"params": aux, "lr": self.hparams.aux_lr})
        opt = torch.optim.Adam(groups)
        milestones = sorted(self.hparams.lr_milestones or [])
        gamma, warm = self.hparams.lr_gamma, self.hparams.warmup_steps

        def factor(step: int) -> float:
            f = gamma ** (sum(step >= m for m in milestones) + sum(step >= m for m in self._budget_drops))
            return f * min(1.0, (step + 1) / warm) if warm else f

        # the aux group keeps its rate: quantiles must keep tracking the latents
        sched = torch.optim.lr_scheduler.LambdaLR(opt, [factor, lambda step: 1.0][: len(groups)])
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Clip the model's gradients only, never the entropy bottleneck's quantiles (group 1).

        The aux loss (thousands while the quantiles are far off; 1,400 -> 3,100 over the CPU run's
        last 800 steps) sends its gradient to the quantiles alone; clipped together with the model,
        it set the total norm and so rescaled every model gradient by an amount that changed from
        step to step.  CompressAI's recipe clips the main optimizer only; so does this.
        """
        if not gradient_clip_val:
            return
        main = [p for p in optimizer.param_groups[0]["params"] if p.grad is not None]
        if gradient_clip_algorithm in (None, "norm"):
            torch.nn.utils.clip_grad_norm_(main, gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_value_(main, gradient_clip_val)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Size the entropy coder's tables like the checkpoint's before loading (resume, load_from_checkpoint).

        The tables (``_quantized_cdf``, ``_offset``, ``_cdf_length``) are empty until ``net.update()``
        (called by the real-bitstream validation), so a checkpoint saved after a validation has them
        and a fresh module does not: a plain ``load_state_dict`` fails on their shapes.  (Cheng2020GMM's
        own load_state_dict does this through CompressAI, but Lightning loads the LightningModule.)
        """
        for name, buf in list(self.named_buffers()):
            if name.rsplit(".", 1)[-1] in _TABLES and name in state_dict and state_dict[name].shape != buf.shape:
                module_name, attr = name.rsplit(".", 1)
                module = self.get_submodule(module_name)
                module._buffers[attr] = torch.empty_like(state_dict[name], device=buf.device)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def on_train_start(self):
        self._seg_t0 = time.perf_counter()
        # where it trains, read now: after fit Lightning moves the module back to the CPU, so a
        # checkpoint saved then (final.ckpt) would otherwise say "cpu"
        self._train_device = _device_name(self.device)

    def budget_progress(self) -> float:
        """How much of the run's budget is spent, 0..1: the larger of steps / ``max_steps`` and, with
        the trainer's ``max_time``, training time / ``max_time`` (Lightning's Timer, which counts
        across resumes)."""
        from lightning.pytorch.callbacks import Timer

        t = self._trainer
        if t is None:
            return 0.0
        fracs = [t.global_step / t.max_steps] if t.max_steps and t.max_steps > 0 else [0.0]
        for cb in t.callbacks:
            if isinstance(cb, Timer) and cb._duration:
                fracs.append(cb.time_elapsed("train") / cb._duration)
        return max(fracs)

    def on_train_batch_start(self, batch, batch_idx):
        """``lr_budget_milestones``: multiply the LR by ``lr_gamma`` once at each of these fractions of
        the budget (a run bounded by ``trainer.max_time`` cannot know its step milestones ahead)."""
        todo = sorted(self.hparams.lr_budget_milestones or [])[len(self._budget_drops):]
        if not todo:
            return
        # rank 0 decides: each DDP rank's Timer reads its own clock, and ranks that dropped at
        # different steps would apply different LRs to the same averaged gradient and drift apart
        if self._trainer.strategy.broadcast(self.budget_progress() >= todo[0], src=0):
            self._budget_drops.append(int(self._trainer.global_step))

    def init_weights_from(self, path: str) -> dict:
        """Start from another model's weights (``.safetensors`` or ``.ckpt``) with a fresh optimizer.

        The source must be the same model (K, context; variable-rate or not), with transforms (N),
        y (M) and g_s's 1/16 stage (N_s) as wide as this one's or narrower: a narrower model is
        widened without changing what it computes (``lic.training.widen``).  Gains of a
        variable-rate model: with the same number of modes, mode i stays mode i and moves by half
        the log-ratio of its lambdas (the gain grows like sqrt(lambda)); with another number of
        modes, each mode takes the gain of its lambda on the source's learned gain curve.  Returns
        what is recorded in the stats.
        """
        from lic.training.widen import widened_state
        from lic.weights import load_checkpoint, load_safetensors

        # a .safetensors export carries its training record in the metadata it is loaded with
        src, meta = load_safetensors(path) if str(path).endswith(".safetensors") else (load_checkpoint(path), {})
        # one path for every start: the same size is the case where no channel is new
        self.net.load_state_dict(widened_state(src, self.net), strict=True)
        old = tuple(src.config.lmbdas)
        record = {"from": str(path), "lmbdas": list(old)}
        for width in ("M", "N", "N_s"):   # the source's widths where this run widened them
            if getattr(src.config, width) != getattr(self.config, width):
                record[width] = getattr(src.config, width)
        if meta.get("lic_trained"):
            record["trained"] = json.loads(meta["lic_trained"])
        self._stats_base["init_from"] = record
        return record

    def train_stats(self) -> dict:
        """Training facts so far, across resumes: what ``lic_train_stats`` holds in a checkpoint."""
        base = self._stats_base
        elapsed = time.perf_counter() - self._seg_t0 if self._seg_t0 is not None else 0.0
        trainer = self._trainer
        return {"steps": int(trainer.global_step) if trainer is not None else 0,
                "images_seen": int(base["images_seen"] + self._seg_images),
                "pixels_seen": int(base["pixels_seen"] + self._seg_pixels),
                "train_seconds": round(float(base["train_seconds"]) + elapsed, 3),
                "device": self._train_device or _device_name(self.device),
                "world_size": int(trainer.world_size) if trainer is not None else 1,
                # > 0: a checkpoint from before these stats existed was resumed; the counts before
                # this step are estimates (steps x batch) and its training time is not included
                "counted_from_step": int(base.get("counted_from_step", 0)),
                # the run these weights started from (init_from), whose training is not counted above
                **({"init_from": base["init_from"]} if base.get("init_from") else {})}

    def on_save_checkpoint(self, checkpoint):
        checkpoint["lic_model_config"] = json.dumps(self.config.to_dict())
        checkpoint["lic_train_stats"] = self.train_stats()
        checkpoint["lic_lr_budget_drops"] = list(self._budget_drops)

    def on_load_checkpoint(self, checkpoint):
        from lic.export import checkpoint_train_stats

        stats = checkpoint_train_stats(checkpoint)
        self._stats_base = {"images_seen": stats["images_seen"] or 0, "pixels_seen": stats["pixels_seen"] or 0,
                            "train_seconds": stats["train_seconds"] or 0.0,
                            "counted_from_step": stats["counted_from_step"]}
        raw = checkpoint.get("lic_train_stats")
        if isinstance(raw, dict) and raw.get("init_from"):
            self._stats_base["init_from"] = raw["init_from"]
        self._budget_drops = [int(s) for s in checkpoint.get("lic_lr_budget_drops", [])]
        self._seg_images = self._seg_pixels = 0
        self._seg_t0 = None


def _device_name(device: torch.device) -> str:
    """The device for the stats: cpu, or cuda:<GPU name> (the card, not its index)."""
    if device.type == "cuda":
        try:
            return f"cuda:{torch.cuda.get_device_name(device)}"
        except Exception:  # noqa: BLE001
            return "cuda"
    return device.type
