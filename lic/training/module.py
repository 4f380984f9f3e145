"""LightningModule: trains ``Cheng2020GMM`` on the rate-distortion loss with noise quantization.

One optimizer with two parameter groups (the model, and the entropy bottleneck's
quantiles with their own learning rate) minimises rd_loss + aux_loss: the RD loss
puts no gradient on the quantiles, so this equals CompressAI's two-optimizer
recipe while Lightning's ``global_step`` advances once per batch.
"""
from __future__ import annotations

import json
import math
import time

import lightning as L
import torch

from lic.models.cheng2020 import Cheng2020GMM, ModelConfig
from lic.training.losses import rate_distortion_loss


class LitCodec(L.LightningModule):
    def __init__(self, model: dict, lmbda: float | None = 0.0067, lr: float = 1e-4, aux_lr: float = 1e-3,
                 lr_milestones: list[int] | tuple[int, ...] = (), lr_gamma: float = 0.1, warmup_steps: int = 0,
                 val_real_images: int = 2, val_modes: list[float] | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.config = ModelConfig.from_dict(model)
        self.net = Cheng2020GMM(self.config)
        if self.config.num_modes > 1:
            lm = torch.tensor(self.config.lmbdas or [lmbda] * self.config.num_modes, dtype=torch.float32)
            self.register_buffer("lmbdas", lm, persistent=False)
        elif lmbda is None:
            raise ValueError("a single-rate model needs lmbda")
        self._t_last = None

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
        if self.config.num_modes > 1:
            mode = torch.randint(0, self.config.num_modes, (B,), device=x.device)  # one mode per image
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

        self.net.update(force=True)
        bpps, psnrs = [], []
        for xi in x:
            pixels = io.from_tensor(xi[None])
            mode = 1.0 if q is None else q + 1.0
            data = codec.encode_with_net(self.net, pixels, mode=mode)
            rec = codec.decode_with_net(self.net, data)
            bpps.append(8 * len(data) / (pixels.shape[0] * pixels.shape[1]))
            mse = ((rec.astype("float64") - pixels.astype("float64")) ** 2).mean()
            psnrs.append(10 * math.log10(255**2 / max(mse, 1e-10)))
        self.log_dict({f"val/bpp{sfx}": sum(bpps) / len(bpps), f"val/psnr_real{sfx}": sum(psnrs) / len(psnrs)},
                      batch_size=len(bpps), sync_dist=True)

    def configure_optimizers(self):
        aux = [p for n, p in self.net.named_parameters() if n.endswith(".quantiles")]
        main = [p for n, p in self.net.named_parameters() if not n.endswith(".quantiles")]
        opt = torch.optim.Adam([{"params": main, "lr": self.hparams.lr},
                                {"params": aux, "lr": self.hparams.aux_lr}])
        milestones = sorted(self.hparams.lr_milestones or [])
        gamma, warm = self.hparams.lr_gamma, self.hparams.warmup_steps

        def factor(step: int) -> float:
            f = gamma ** sum(step >= m for m in milestones)
            return f * min(1.0, (step + 1) / warm) if warm else f

        # the aux group keeps its rate: quantiles must keep tracking the latents
        sched = torch.optim.lr_scheduler.LambdaLR(opt, [factor, lambda step: 1.0])
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint):
        checkpoint["lic_model_config"] = json.dumps(self.config.to_dict())
