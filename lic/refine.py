"""Encoder-side latent refinement: a better y for the same decoder (Yang, Bamler & Mandt,
NeurIPS 2020, "Improving Inference for Neural Image Compression").

g_a is amortized: one network maps every image to its latent, so for a given image its y is
not the latent that minimises that image's own rate-distortion cost under the decoder (g_s,
h_s, the context model and the mixture), which is fixed.  The decoder does not care how y was
chosen, so the encoder may search.  Gradient descent (Adam) on the gain-scaled y, from g_a's
y, on

    J(y) = lmbda * 255^2 * MSE(g_s(y_tilde * inverse gain), x) + bits(y_tilde, z_hat) / pixels

(the training loss of one image, ``lic.training.losses``), with y_tilde = annealed_round(y, tau)
(``lic.entropy.quantize``, stochastic Gumbel annealing) and tau decaying as
tau_max * exp(-4 t / steps), floored at tau_min; z = h_a(y) follows y and is rounded straight
through.  At the top modes (lambda >= ``mixed_from``) training's "mixed" stand-in does better
(noise for the rate, rounding straight through for g_s): the default proxy "auto" uses it there.
(``proxy`` picks one stand-in for every mode instead, for comparison: docs/refine.md.)
Every ``check_every`` steps, and after the last, the cost of ROUNDING y (what the coder will
code; the likelihood estimate behind ``bpp_est``) is measured, and the best y seen is returned,
g_a's own included: refinement never returns a latent whose rounded cost estimate is above g_a's.
The random draws are seeded, so on one machine and thread count the same input gives the same
file; another machine's float kernels may steer the search elsewhere, and any result decodes.

The file format does not change: a refined file is decoded by the same decoder, bit-exact,
and any decoder of its format version reads it.  Only encoding costs more: ``steps``
forward/backward passes of the networks per tile.  Figures: docs/refine.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from lic.entropy.quantize import QuantMode, annealed_round, quantize


class Refinable(Protocol):
    """What the search needs of a model (``lic.models.base.can_refine``): the bits of a latent
    the coder codes as round(y), y_rate quantized by the caller and its z by ``z_mode``, and the
    synthesis of y_syn, both differentiable."""

    def latent_rd(self, y_rate: Tensor, y_syn: Tensor, z_mode: QuantMode, rate: Any) -> tuple[Tensor, Tensor]: ...


PROXIES = {
    "sga": "annealed_round (SGA) for rate and distortion",
    "ste": "round with a straight-through gradient for rate and distortion",
    "mixed": "uniform noise for the rate, round straight through for g_s (training's 'mixed' quantization)",
    "auto": "sga below lambda mixed_from, mixed from it on (the default; docs/refine.md)",
}


@dataclass(frozen=True)
class RefineConfig:
    """How hard the encoder searches for each tile's latent (``steps`` 0: g_a's y as it is)."""

    steps: int = 0
    lr: float = 0.02           # Adam, on the gain-scaled y (integers are one unit apart)
    tau_max: float = 0.5       # SGA temperature at step 0
    tau_min: float = 0.1       # and its floor
    check_every: int = 10      # measure the rounded cost every this many steps (and after the last)
    seed: int = 0              # the random draws (the same input, machine and threads: the same file)
    proxy: str = "auto"        # what stands in for rounding while searching (PROXIES)
    mixed_from: float = 0.07   # "auto": "mixed" from this lambda on, "sga" below (the shipped model: modes
                               # 7-8 mixed, 1-6 SGA; measured per mode in docs/refine.md)

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 0:
            raise ValueError(f"refinement steps must be an integer >= 0, got {self.steps!r}")
        if self.proxy not in PROXIES:
            raise ValueError(f"refinement proxy must be one of {sorted(PROXIES)}, got {self.proxy!r}")
        if not (self.lr > 0 and 0 < self.tau_min <= self.tau_max and self.check_every >= 1 and self.mixed_from > 0):
            raise ValueError("refinement needs lr > 0, 0 < tau_min <= tau_max, check_every >= 1 and mixed_from > 0")

    def proxy_for(self, lmbda: float) -> str:
        """The stand-in used for a mode of this lambda ("auto" resolved)."""
        if self.proxy != "auto":
            return self.proxy
        return "mixed" if lmbda >= self.mixed_from else "sga"

    def tau(self, step: int) -> float:
        return max(self.tau_min, self.tau_max * math.exp(-4.0 * step / max(1, self.steps)))


@dataclass
class RefineResult:
    y: Tensor              # (1, M, h, w): the gain-scaled latent the coder rounds and codes
    cost_start: float      # rounded cost estimate J of g_a's y (lmbda * 255^2 * MSE + bits / pixel)
    cost: float            # ... of the returned y (<= cost_start)
    best_step: int         # the step that gave it (0: g_a's y)
    bpp_est: float         # bits / pixel of the returned y, estimated from the likelihoods
    psnr_est: float        # dB, of g_s(round(y)) before clamping and 8-bit rounding


def mode_lmbda(lmbdas: tuple[float, ...], mode: float | None) -> float:
    """The lambda of a 0-based (possibly fractional) mode: log-linear between the modes' lambdas,
    as the gains are.  A single-rate model (mode None) needs its one lambda in ``lmbdas``."""
    if not lmbdas:
        raise ValueError("this model records no lambda, so its rate-distortion cost is unknown: "
                         "it cannot be refined")
    if mode is None or len(lmbdas) == 1:
        return float(lmbdas[0])
    q = min(max(float(mode), 0.0), len(lmbdas) - 1.0)
    i = min(int(math.floor(q)), len(lmbdas) - 2)
    f = q - i
    return math.exp((1 - f) * math.log(lmbdas[i]) + f * math.log(lmbdas[i + 1]))


def _cost(net: Refinable, x: Tensor, y_rate: Tensor, y_syn: Tensor, z_mode: QuantMode, rate, lmbda: float,
          valid: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """(J, bits per pixel, MSE): the rate of y_rate, the distortion of g_s(y_syn) over the valid
    h x w pixels only; z = h_a(y_rate) quantized by ``z_mode``."""
    h, w = valid
    bits, x_hat = net.latent_rd(y_rate, y_syn, z_mode, rate)    # x_hat (1, 3, H, W)
    bpp = bits / (h * w)
    mse = (x_hat[..., :h, :w] - x[..., :h, :w]).pow(2).mean()
    return lmbda * 255**2 * mse + bpp, bpp, mse


def refine_latent(net: Refinable, x: Tensor, y: Tensor, rate, lmbda: float, cfg: RefineConfig,
                  valid: tuple[int, int] | None = None) -> RefineResult:
    """Search from g_a's (gain-scaled) ``y`` (1, M, H/16, W/16) for a latent that codes the padded
    tile ``x`` (1, 3, H, W), of which the top-left ``valid`` (h, w) pixels are the image, at a lower
    cost.  ``rate``: the model's ``rate_of(mode)`` (cheng2020-gmm: its gains), None for a
    single-rate model.  The networks' parameters are not changed (gradients are taken with respect
    to y only)."""
    valid = valid or tuple(x.shape[-2:])
    proxy = cfg.proxy_for(lmbda)
    generator = torch.Generator(device=y.device).manual_seed(cfg.seed)

    def rounded_cost(v: Tensor) -> tuple[float, float, float]:
        with torch.no_grad():
            y_hat = quantize(v, QuantMode.ROUND)
            j, bpp, mse = _cost(net, x, y_hat, y_hat, QuantMode.ROUND, rate, lmbda, valid)
        return float(j), float(bpp), float(mse)

    best = rounded_cost(y)
    start, best_y, best_step = best[0], y.detach().clone(), 0
    var = y.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([var], lr=cfg.lr)
    with torch.enable_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)     # "mixed" draws its noise (lic.entropy.quantize) from torch's generator
        for step in range(1, cfg.steps + 1):
            if proxy == "sga":
                y_rate = y_syn = annealed_round(var, cfg.tau(step - 1), generator)
                z_mode = QuantMode.STE
            elif proxy == "ste":
                y_rate = y_syn = quantize(var, QuantMode.STE)
                z_mode = QuantMode.STE
            else:   # mixed
                y_rate, y_syn = quantize(var, QuantMode.NOISE), quantize(var, QuantMode.STE)
                z_mode = QuantMode.NOISE
            j, _, _ = _cost(net, x, y_rate, y_syn, z_mode, rate, lmbda, valid)
            (grad,) = torch.autograd.grad(j, var)
            var.grad = grad
            opt.step()
            if step % cfg.check_every == 0 or step == cfg.steps:
                now = rounded_cost(var.detach())
                if now[0] < best[0]:
                    best, best_y, best_step = now, var.detach().clone(), step
    return RefineResult(y=best_y, cost_start=start, cost=best[0], best_step=best_step, bpp_est=best[1],
                        psnr_est=-10 * math.log10(max(best[2], 1e-12)))
