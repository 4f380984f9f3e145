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


def annealed_round(y: Tensor, tau: float, generator: torch.Generator | None = None) -> Tensor:
    """Stochastic Gumbel annealing (SGA; Yang, Bamler & Mandt, NeurIPS 2020): a differentiable,
    random stand-in for round(y), used only by the encoder's latent refinement (``lic.refine``).

    Each element goes to floor(y) or floor(y) + 1, drawn through a Gumbel-softmax at temperature
    ``tau`` whose logits -atanh(distance) / tau favour the nearer integer; the output is the soft
    mix of the two.  As ``tau`` -> 0 it becomes round(y) (the coder then codes ``round``'s integers,
    so this never decides a symbol).  ``generator`` makes the draws reproducible.
    """
    y_floor = torch.floor(y)
    eps = 1e-5
    r = (y - y_floor).clamp(eps, 1 - eps)                                   # distance to floor(y)
    logits = torch.stack([-torch.atanh(r), -torch.atanh(1 - r)], dim=-1) / tau   # (..., 2)
    u = torch.rand(logits.shape, generator=generator, dtype=y.dtype, device=y.device)
    gumbel = -torch.log(-torch.log(u.clamp_min(1e-20)))
    w = torch.softmax((logits + gumbel) / tau, dim=-1)
    return y_floor + w[..., 1]                                              # floor * w0 + (floor + 1) * w1
