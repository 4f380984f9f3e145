"""LightningModule: trains any registered model (``lic.models``) on a rate-distortion loss.

It receives the network (``configs/model/NAME.yaml`` instantiates it with ``_target_``) and
trains it through the model protocol: ``forward(x, mode) -> RDOutput`` (noise quantization in
training, as the model defines it), CompressAI's ``aux_loss``.  A variable-rate model
(``num_modes > 1``) draws a mode per image and weighs its distortion with that mode's lambda.

The parts, each in its own module: the loss (``lic.training.losses``, ``loss=mse | ms-ssim``), the
optimizer and LR schedule (``lic.training.optim``, ``optimizer=`` / ``scheduler=``), the weight
average (``lic.training.ema``, a callback), the dashboards (``lic.training.dashboard``).  This
class runs the steps and validation, and keeps what a checkpoint must carry for an exact resume
(the training facts, the LR budget drops, the RNG state).
"""
from __future__ import annotations

import dataclasses
import json
import time
import warnings

import lightning as L
import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.models.utils import update_registered_buffers

from lic.models.base import LicModel
from lic.training.losses import METRICS, rate_distortion_loss
from lic.training.optim import build_optimizer, build_scheduler

# the entropy models' coding tables: empty until update(), sized by it
_TABLES = {EntropyBottleneck: ["_quantized_cdf", "_offset", "_cdf_length"],
           GaussianConditional: ["_quantized_cdf", "_offset", "_cdf_length", "scale_table"]}

DEFAULT_OPTIMIZER = {"name": "adam", "lr": 1e-4, "aux_lr": 1e-3}
DEFAULT_SCHEDULER = {"name": "multistep"}


class LitCodec(L.LightningModule):
    """``model``: the network to train (a registered ``lic.models`` architecture)."""

    def __init__(self, model: LicModel, lmbda: float | None = 0.0067, loss: str = "mse",
                 optimizer: dict | None = None, scheduler: dict | None = None,
                 val_real_images: int = 2, val_modes: list[float] | None = None,
                 train_only: list[str] | tuple[str, ...] | None = None,
                 mode_weights: list[float] | tuple[float, ...] | None = None):
        super().__init__()
        if not isinstance(model, LicModel):
            raise TypeError(f"LitCodec trains a lic.models network, got {type(model).__name__} "
                            "(configs/model/*.yaml instantiate it with _target_)")
        if loss not in METRICS:
            raise ValueError(f"loss {loss!r}: one of {METRICS}")
        optimizer = {**DEFAULT_OPTIMIZER, **(optimizer or {})}
        scheduler = {**DEFAULT_SCHEDULER, **(scheduler or {})}
        # logger=False: train.py logs the whole Hydra config once; these would replace parts of it
        self.save_hyperparameters(logger=False, ignore=["model"])
        self._build_net(model, lmbda, train_only, mode_weights)
        lambdas = list(self.config.lmbdas) if self.config.num_modes > 1 else [lmbda]
        if loss == "ms-ssim" and max(lambdas) < 0.5:   # MS-SSIM lambdas are ~1000x the MSE ones
            warnings.warn(f"loss=ms-ssim with lambdas {lambdas}: these look like MSE lambdas "
                          "(CompressAI's MS-SSIM ones are 2.40 .. 220)", stacklevel=2)
        # training facts written into every checkpoint ("lic_train_stats"), carried across resumes
        self._stats_base = {"images_seen": 0, "pixels_seen": 0, "train_seconds": 0.0, "counted_from_step": 0}
        self._seg_images = self._seg_pixels = 0   # this session (since the start or the resume)
        self._seg_t0: float | None = None
        # steps at which a budget milestone dropped the LR (saved in checkpoints, so drops survive resumes)
        self._budget_drops: list[int] = []
        self._train_device: str | None = None   # read at train start (see on_train_start)
        self.run_record: dict = {}               # where the run logs (set by lic.training.run)
        self._val_step: int | None = None         # global step of the last validation
        self._plateau_step: int | None = None     # the validation the plateau schedule last saw
        self._rng_before_val: dict | None = None
        self._val_real: dict | None = None        # this validation's real-bitstream results (dashboard)
        self.flops_per_batch = None               # read by Lightning's ThroughputMonitor; not measured

    # ------------------------------------------------------------------ the network

    def _build_net(self, model: LicModel, lmbda, train_only, mode_weights) -> None:
        if model.num_modes <= 1 and lmbda is not None:   # the lambda a single-rate network is trained at
            model.config = dataclasses.replace(model.config, lmbdas=(float(lmbda),))
        self.net = model
        self.config = model.config
        # what the checkpoint's hyperparameters record of the network (it is saved in the state dict)
        self.hparams["model"] = {"arch": model.arch, **model.config.to_dict()}
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

    # the 0-based modes validated for a variable-rate model (default: every mode)
    def _val_modes(self) -> list[float | None]:
        n = self.config.num_modes
        if n <= 1:
            return [None]
        return list(self.hparams.val_modes or range(n))

    def _lmbda(self, q: float | None) -> float:
        return self.hparams.lmbda if q is None else float(self.lmbdas[int(q)])

    def forward(self, x, mode=None):
        return self.net(x, mode)

    # ------------------------------------------------------------------ steps

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
        rd = rate_distortion_loss(out, x, lmbda, self.hparams.loss)
        aux = self.net.aux_loss()
        if self._logs_this_step():
            logs = {"train/loss": rd.loss, "train/bpp_est": rd.bpp_est, "train/mse": rd.mse,
                    "train/psnr": rd.psnr, "train/aux_loss": aux}
            if rd.ms_ssim is not None:
                logs["train/ms_ssim"] = rd.ms_ssim
            self.log_dict(logs, on_step=True, prog_bar=False)
            self.log("train/loss_pb", rd.loss, prog_bar=True, logger=False)
        return rd.loss + aux

    def _logs_this_step(self) -> bool:
        """Whether this training step hands its values to Lightning: on the steps its logger writes
        (every ``trainer.log_every_n_steps``) and at the last step (``train`` reports the final
        values).  Lightning copies each value it is handed into its result collection: seven
        values at every step cost 1 % of a small model's training speed on the CPU
        (docs/models.md, "Parity with CompressAI's trainer")."""
        trainer = self._trainer
        if trainer is None:
            return True
        # Lightning's own test for the steps its loggers write (its LR and throughput monitors ask
        # it too); fast_dev_run writes every step (Lightning's update_train_step_metrics)
        writes = trainer._logger_connector.should_update_logs or bool(trainer.fast_dev_run)
        last = trainer.should_stop or 0 < trainer.max_steps <= self.global_step + 1
        return writes or last

    def validation_step(self, x, batch_idx):
        losses = []
        for q in self._val_modes():
            rd = rate_distortion_loss(self.net(x, q), x, self._lmbda(q), self.hparams.loss)
            sfx = "" if q is None else f"_q{int(q) + 1}"
            logs = {f"val/loss{sfx}": rd.loss, f"val/bpp_est{sfx}": rd.bpp_est, f"val/psnr{sfx}": rd.psnr}
            if rd.ms_ssim is not None:
                logs[f"val/ms_ssim{sfx}"] = rd.ms_ssim
            self.log_dict(logs, batch_size=x.shape[0], sync_dist=True)
            losses.append(rd.loss)
        if len(losses) > 1:   # a variable-rate model's objective: the mean over its modes
            self.log("val/loss", torch.stack(losses).mean(), batch_size=x.shape[0], sync_dist=True)
        if batch_idx == 0 and self.hparams.val_real_images > 0:
            self._val_real = self._real_bitstreams(x[: self.hparams.val_real_images])

    @torch.no_grad()
    def _real_bitstreams(self, x) -> dict:
        """Real files for a few validation crops, at every mode: bytes of the whole .lic file, header included.

        Returns the originals, the decoded images per 1-based mode and the RD point of each mode
        (mean bpp and PSNR over the crops), for the dashboard.
        """
        from lic import codec, io
        from lic.eval.metrics import psnr
        from lic.weights import fingerprint

        self.net.update(force=True)
        fp = fingerprint(self.net)
        originals = [io.from_tensor(xi[None]) for xi in x]   # (H, W, 3) uint8
        modes = [1.0] if self.config.num_modes <= 1 else [float(m) for m in range(1, self.config.num_modes + 1)]
        decoded, points = {}, []
        for mode in modes:
            recs, bpps, psnrs = [], [], []
            for pixels in originals:
                data = codec.encode_with_net(self.net, pixels, mode=mode, fp=fp)
                rec = codec.decode_with_net(self.net, data, fp=fp)
                recs.append(rec)
                bpps.append(8 * len(data) / (pixels.shape[0] * pixels.shape[1]))
                psnrs.append(min(psnr(pixels, rec), 100.0))
            sfx = "" if self.config.num_modes <= 1 else f"_q{int(mode)}"
            bpp, p = sum(bpps) / len(bpps), sum(psnrs) / len(psnrs)
            self.log_dict({f"val/bpp{sfx}": bpp, f"val/psnr_real{sfx}": p}, batch_size=len(bpps), sync_dist=True)
            decoded[mode] = recs
            points.append({"mode": mode, "bpp": bpp, "psnr": p})
        return {"originals": originals, "decoded": decoded, "points": points}

    # ------------------------------------------------------------------ validation bookkeeping

    def on_validation_start(self):
        # validation must not move the training RNG (noise, mode draws): a resumed run, which
        # skips the validation at its checkpoint's step, then draws the same numbers
        self._rng_before_val = _rng_state()

    def on_validation_end(self):
        if self._rng_before_val is not None:
            _set_rng_state(self._rng_before_val)
            self._rng_before_val = None

    def on_validation_epoch_end(self):
        trainer = self._trainer
        if trainer is None or trainer.sanity_checking:
            return
        self._val_step = int(trainer.global_step)
        real, self._val_real = self._val_real, None
        if real is not None and trainer.is_global_zero:
            from lic.training.dashboard import log_validation

            log_validation(trainer, self._val_step, real)

    # ------------------------------------------------------------------ optimization

    def configure_optimizers(self):
        opt = build_optimizer(self.net, self.hparams.optimizer)
        max_steps = self._trainer.max_steps if self._trainer is not None else None
        sched = build_scheduler(opt, self.hparams.scheduler, max_steps=max_steps, budget_drops=self._budget_drops)
        return {"optimizer": opt, "lr_scheduler": sched}

    def lr_scheduler_step(self, scheduler, metric):
        """The plateau schedule steps once per validation, on its loss; the others every step."""
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            if metric is not None and self._val_step is not None and self._val_step != self._plateau_step:
                scheduler.step(metric)
                self._plateau_step = self._val_step
            return
        scheduler.step()

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
        """Size the entropy models' tables like the checkpoint's before loading (resume, load_from_checkpoint).

        The tables (``_quantized_cdf``, ``_offset``, ``_cdf_length``; a Gaussian conditional's
        ``scale_table``) are empty until ``net.update()`` (called by the real-bitstream validation),
        so a checkpoint saved after a validation has them and a fresh module does not: a plain
        ``load_state_dict`` fails on their shapes.  (The network's own load_state_dict does this
        through CompressAI, but Lightning loads the LightningModule.)
        """
        for name, module in self.named_modules():
            names = next((b for kind, b in _TABLES.items() if isinstance(module, kind)), None)
            if names and any(k.startswith(f"{name}.") for k in state_dict):
                update_registered_buffers(module, name, names, state_dict, policy="resize")
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
        """``scheduler.budget_milestones`` (multistep): multiply the LR by ``gamma`` once at each of these
        fractions of the budget (a run bounded by ``trainer.max_time`` cannot know its step milestones ahead)."""
        todo = sorted(self.hparams.scheduler.get("budget_milestones") or [])[len(self._budget_drops):]
        if not todo:
            return
        # rank 0 decides: each DDP rank's Timer reads its own clock, and ranks that dropped at
        # different steps would apply different LRs to the same averaged gradient and drift apart
        if self._trainer.strategy.broadcast(self.budget_progress() >= todo[0], src=0):
            self._budget_drops.append(int(self._trainer.global_step))

    def init_weights_from(self, path: str) -> dict:
        """Start from another model's weights (``.safetensors`` or ``.ckpt``) with a fresh optimizer.

        The source must be the same architecture.  For one that can be widened (``widenable``:
        cheng2020-gmm) the source must be the same model (K, context; variable-rate or not), with transforms (N),
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
        if src.arch != self.net.arch:
            raise ValueError(f"init_from: the source is a {src.arch} model, this run trains {self.net.arch}")
        if getattr(self.net, "widenable", False):
            # one path for every start: the same size is the case where no channel is new
            self.net.load_state_dict(widened_state(src, self.net), strict=True)
        else:
            if src.config.to_dict() != {**self.config.to_dict(), "lmbdas": src.config.to_dict().get("lmbdas")}:
                raise ValueError(f"init_from: the source's config {src.config.to_dict()} is not this run's "
                                 f"{self.config.to_dict()} (only {self.net.arch} of the same size)")
            self.net.load_state_dict(src.state_dict(), strict=True)
        old = tuple(src.config.lmbdas)
        record = {"from": str(path), "lmbdas": list(old)}
        for width in ("M", "N", "N_s"):   # the source's widths where this run widened them
            if getattr(src.config, width, None) != getattr(self.config, width, None):
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
                # the weights of the checkpoint's state_dict: the running average (ema.decay) or None
                "ema_decay": self._ema_decay(),
                # where the run logged (its folder, the wandb run id and group): evaluate.py links to it
                **({"run": dict(self.run_record)} if self.run_record else {}),
                # the run these weights started from (init_from), whose training is not counted above
                **({"init_from": base["init_from"]} if base.get("init_from") else {})}

    def _ema_decay(self) -> float | None:
        from lic.training.ema import EMA

        callbacks = self._trainer.callbacks if self._trainer is not None else []
        return next((c.decay for c in callbacks if isinstance(c, EMA) and c.shadow is not None), None)

    def on_save_checkpoint(self, checkpoint):
        checkpoint["lic_arch"] = self.net.arch
        checkpoint["lic_model_config"] = json.dumps(self.config.to_dict())
        checkpoint["lic_train_stats"] = self.train_stats()
        checkpoint["lic_lr_budget_drops"] = list(self._budget_drops)
        checkpoint["lic_rng"] = _rng_state()   # the noise and mode draws continue exactly on resume

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
        if checkpoint.get("lic_rng"):
            _set_rng_state(checkpoint["lic_rng"])
        # a checkpoint of a run with ema.decay holds the average in state_dict: resume the training weights
        from lic.training.ema import use_training_weights

        use_training_weights(checkpoint)
        self._seg_images = self._seg_pixels = 0
        self._seg_t0 = None


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _device_name(device: torch.device) -> str:
    """The device for the stats: cpu, or cuda:<GPU name> (the card, not its index)."""
    if device.type == "cuda":
        try:
            return f"cuda:{torch.cuda.get_device_name(device)}"
        except Exception:  # noqa: BLE001
            return "cuda"
    return device.type
