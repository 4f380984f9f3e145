"""The one quantizer of the project: every rounding of a latent happens here.

Training uses additive uniform noise U(-1/2, 1/2) (Balle et al. 2017), so that the
likelihood of the noisy latent is a differentiable proxy of the discrete rate.
Inference rounds to the nearest integer (torch.round: half to even), and the real
entropy coder codes exactly the integers produced here.

Optionally ("mixed" quantization, Minnen & Singh 2020) the synthesis transform sees
the rounded latent with a straight-through gradient while the rate term still sees
the noisy one; the model's config chooses.
"""
from __future__ import annotations

from enum import Enum

import torch
from torch import Tensor


class QuantMode(str, Enum):
    NOISE = "noise"  # training: y + U(-1/2, 1/2)
    ROUND = "round"  # inference: round(y)
    STE = "ste"      # round(y) forward, identity gradient


def quantize(y: Tensor, mode: QuantMode | str) -> Tensor:
    """Quantize ``y`` elementwise; shape is preserved."""
    mode = QuantMode(mode)
    if mode is QuantMode.NOISE:
        return y + torch.empty_like(y).uniform_(-0.5, 0.5)
    if mode is QuantMode.ROUND:
        return torch.round(y)
    return y + (torch.round(y) - y).detach()


def to_symbols(y: Tensor) -> Tensor:
    """Round ``y`` and return integer symbols (int32) for the entropy coder."""
    return torch.round(y).to(torch.int32)
