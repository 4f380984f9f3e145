"""Rate-distortion losses, CompressAI's conventions (``compressai.losses.RateDistortionLoss``).

    metric "mse":      loss = lmbda * 255^2 * MSE + bpp_est          (MSE on [0, 1] images)
    metric "ms-ssim":  loss = lmbda * (1 - MS-SSIM) + bpp_est        (MS-SSIM on [0, 1], pytorch-msssim)

CompressAI's lambdas: MSE 0.0018 .. 0.18, MS-SSIM 2.40 .. 220 (qualities 1..8); the paper's MSE
lambdas for Cheng 2020 are in configs/quality/.  Both are written per image, so a variable-rate
batch weighs each image's distortion with its own mode's lambda.  (CompressAI's class takes one
scalar lambda and averages the distortion over the batch first, hence not used as is.)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from pytorch_msssim import ms_ssim
from torch import Tensor

from lic.eval.metrics import MS_SSIM_MIN_SIDE
from lic.models.base import RDOutput

METRICS = ("mse", "ms-ssim")


@dataclass
class RDLoss:
    loss: Tensor               # scalar, what is minimised
    bpp_est: Tensor            # scalar, estimated bits per pixel (likelihoods), not real bytes
    mse: Tensor                # scalar, on [0, 1] images
    psnr: Tensor               # scalar, dB, from the batch MSE
    ms_ssim: Tensor | None     # scalar, 0..1; None with metric "mse"


def rate_distortion_loss(out: RDOutput, x: Tensor, lmbda: Tensor | float, metric: str = "mse") -> RDLoss:
    """lmbda: a float, or a (B,) tensor for a variable-rate batch (one lambda per image)."""
    if metric not in METRICS:
        raise ValueError(f"loss metric {metric!r}: one of {METRICS}")
    B, _, H, W = x.shape
    bpp_i = out.bits() / (H * W)                                      # (B,)
    mse_i = (out.x_hat - x).pow(2).flatten(1).mean(1)                 # (B,)
    lm = torch.as_tensor(lmbda, dtype=x.dtype, device=x.device).expand(B)
    msssim = None
    if metric == "mse":
        distortion_i = 255**2 * mse_i
    else:
        if min(H, W) < MS_SSIM_MIN_SIDE:
            raise ValueError(f"loss=ms-ssim needs crops of at least {MS_SSIM_MIN_SIDE} pixels a side, got {H}x{W}")
        msssim_i = ms_ssim(out.x_hat, x, data_range=1.0, size_average=False)   # (B,)
        distortion_i = 1 - msssim_i
        msssim = msssim_i.mean()
    loss = (lm * distortion_i + bpp_i).mean()
    mse = mse_i.mean()
    psnr = -10 * torch.log10(mse.clamp_min(1e-10))
    return RDLoss(loss=loss, bpp_est=bpp_i.mean(), mse=mse, psnr=psnr, ms_ssim=msssim)
