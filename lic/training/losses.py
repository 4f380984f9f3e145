"""Rate-distortion loss, CompressAI's convention: lmbda * 255^2 * MSE + bpp_est."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lic.models.base import RDOutput


@dataclass
class RDLoss:
    loss: Tensor      # scalar, what is minimised
    bpp_est: Tensor   # scalar, estimated bits per pixel (likelihoods), not real bytes
    mse: Tensor       # scalar, on [0, 1] images
    psnr: Tensor      # scalar, dB, from the batch MSE


def rate_distortion_loss(out: RDOutput, x: Tensor, lmbda: Tensor | float) -> RDLoss:
    """lmbda: a float, or a (B,) tensor for a variable-rate batch (one lambda per image)."""
    B, _, H, W = x.shape
    bpp_i = out.bits() / (H * W)                                      # (B,)
    mse_i = (out.x_hat - x).pow(2).flatten(1).mean(1)                 # (B,)
    lm = torch.as_tensor(lmbda, dtype=x.dtype, device=x.device).expand(B)
    loss = (lm * 255**2 * mse_i + bpp_i).mean()
    mse = mse_i.mean()
    psnr = -10 * torch.log10(mse.clamp_min(1e-10))
    return RDLoss(loss=loss, bpp_est=bpp_i.mean(), mse=mse, psnr=psnr)
