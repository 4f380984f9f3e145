"""The coding parameters every machine computes to the same bits (format version 2).

The entropy decoder must rebuild the encoder's probability tables exactly.  Those tables come
from networks (``h_s``, the context model, the mixture head ``entropy_parameters``), and a
float32 network gives results that differ in the last bits between CPUs with other instruction
sets (oneDNN and ATen pick AVX-512, AVX2 or SSE kernels at run time, each summing in its own
order): measured with ``python -m bench.determinism --worker-env ONEDNN_MAX_CPU_ISA=AVX2
--worker-env ATEN_CPU_CAPABILITY=avx2``, a version-1 file made with AVX-512 kernels failed to
decode with AVX2 ones.  Rounding the parameters to a grid (``quantize_params``) does not help
when a last-bit difference straddles a grid step, and among millions of parameters per image
some always do.

Here those three networks run so that their result does not depend on the order of any sum:

* weights are rounded to multiples of 2^-``W_FRAC``, biases to 2^-(``X_FRAC`` + ``W_FRAC``),
  activations (each layer's input) clamped to +-``ACT_LIMIT`` and rounded to 2^-``X_FRAC``;
* convolutions and matrix products run in float64, where every product and every partial sum
  is then an integer multiple of 2^-(X_FRAC + W_FRAC) smaller than 2^(53 - X_FRAC - W_FRAC)
  in magnitude (checked per layer from its weights, ``ExactHead`` refuses weights that could
  break it): exactly representable, so the sum is exact in any order, with or without FMA;
* LeakyReLU is one IEEE multiply (correctly rounded everywhere), max is exact, and the next
  layer's rounding to the activation grid is exact.

So ``psi``, the context features and the mixture head's outputs are the same bits on every
IEEE-754 machine.  What is left is the softmax of the K logits (float64 ``exp``, within an ulp
across libraries) before the weights are rounded to 1/256, and the Gaussian CDFs (scipy's
``ndtr`` in float64) before the tables are rounded to integers: a different table needs an ulp
to straddle a rounding step, about 1e-13 per value.

The grids are fine enough that the parameters match the float32 network's to well within the
coding grid (1/64 for means and scales): the rate changes by hundredths of a percent (measured
in docs/robustness.md).  Training is untouched; only the coding paths call this.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lic.entropy.mixture import CodingParams, quantize_params

X_FRAC = 12                  # activations: multiples of 2^-12
W_FRAC = 16                  # weights: multiples of 2^-16
ACT_LIMIT = 4096.0           # activations clamped to +-ACT_LIMIT before each layer
EXACT_LIMIT = 2.0 ** (53 - X_FRAC - W_FRAC)   # every partial sum must stay below this in magnitude


def act(x: Tensor) -> Tensor:
    """A layer's input on the activation grid (float64)."""
    s = 2.0 ** X_FRAC
    return torch.round(x.to(torch.float64).clamp(-ACT_LIMIT, ACT_LIMIT) * s) / s


class _Layer:
    """One convolution's weights on the grid; ``__call__`` is exact for inputs from ``act``."""

    def __init__(self, name: str, weight: Tensor, bias: Tensor | None, stride=1, padding=0):
        w = weight.detach().to(torch.float64, copy=True)
        self.w = torch.round(w * 2.0 ** W_FRAC) / 2.0 ** W_FRAC                  # (out, in, k, k)
        b = torch.zeros(w.shape[0], dtype=torch.float64) if bias is None else bias.detach().to(torch.float64)
        self.b = torch.round(b * 2.0 ** (X_FRAC + W_FRAC)) / 2.0 ** (X_FRAC + W_FRAC)
        self.stride, self.padding = stride, padding
        bound = float(ACT_LIMIT * self.w.abs().flatten(1).sum(1).max() + self.b.abs().max())
        if not bound < EXACT_LIMIT:
            raise ValueError(f"{name}: weights too large for exact coding parameters "
                             f"(worst-case sum {bound:.3g} >= {EXACT_LIMIT:.3g})")

    def __call__(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.w, self.b, stride=self.stride, padding=self.padding)

    def matmul(self, cols: Tensor) -> Tensor:
        """(in * k * k, n) columns -> (out, n): the convolution at n chosen positions."""
        return self.w.flatten(1) @ cols + self.b[:, None]


def _conv(name: str, m: nn.Conv2d, mask: Tensor | None = None) -> _Layer:
    w = m.weight if mask is None else m.weight * mask
    return _Layer(name, w, m.bias, m.stride, m.padding)


def _leaky(x: Tensor, m: nn.LeakyReLU) -> Tensor:
    return act(F.leaky_relu(x, m.negative_slope))


class ExactHead:
    """``h_s``, the context model and the mixture head of a ``Cheng2020GMM``, evaluated exactly.

    Built per coding call from the model's current weights (about 10 ms for N = 64, M = 192).
    """

    def __init__(self, net: nn.Module):
        cfg = net.config
        self.K, self.M = cfg.K, cfg.M
        self.scale_min = float(net.scale_lower_bound.bound)
        self.h_s: list = []
        for i, m in enumerate(net.h_s):
            if isinstance(m, nn.Conv2d):
                self.h_s.append(_conv(f"h_s.{i}", m))
            elif isinstance(m, nn.Sequential):          # subpel_conv3x3: Conv2d + PixelShuffle
                conv, shuffle = m
                self.h_s.append((_conv(f"h_s.{i}", conv), shuffle.upscale_factor))
            elif isinstance(m, nn.LeakyReLU):
                self.h_s.append(m)
            else:
                raise TypeError(f"h_s.{i}: {type(m).__name__} has no exact evaluation")
        ctx = net.context_prediction
        self.ctx = _conv("context_prediction", ctx, ctx.mask)
        self.k = ctx.kernel_size[0]
        # the mask's live taps (12 of 25 for both masks): the matrix products skip the zero ones,
        # which changes no sum (they add exact zeros)
        self.taps = ctx.mask.flatten().nonzero().squeeze(1)                  # (t,)
        w = self.ctx.w.flatten(2)[:, :, self.taps]                           # (2M, M, t)
        self.ctx_w = w.reshape(w.shape[0], -1)                               # (2M, M t)
        self.head: list = []
        for i, m in enumerate(net.entropy_parameters):
            if isinstance(m, nn.Conv2d):
                self.head.append(_conv(f"entropy_parameters.{i}", m))
            elif isinstance(m, nn.LeakyReLU):
                self.head.append(m)
            else:
                raise TypeError(f"entropy_parameters.{i}: {type(m).__name__} has no exact evaluation")

    def psi(self, z_hat: Tensor) -> Tensor:
        """h_s(z_hat): (1, 2M, 4h, 4w) float64 on the activation grid."""
        x = act(z_hat)
        for layer in self.h_s:
            if isinstance(layer, nn.LeakyReLU):
                x = _leaky(x, layer)
            elif isinstance(layer, tuple):
                conv, r = layer
                x = F.pixel_shuffle(conv(x), r)
            else:
                x = layer(x)
        return act(x)

    def context_at(self, y_in: Tensor, pos: Tensor, rows_per_chunk: int = 16) -> Tensor:
        """The context model's output (2M, n) at flat positions ``pos`` (row-major, ascending) of
        y_in (1, M, H, W).  Unfolded a band of rows at a time, so the float64 columns stay small
        (M k^2 x 16 W values: 79 MB for M = 192 and a 1024-pixel-wide tile)."""
        _, _, H, W = y_in.shape
        p = self.k // 2
        y_pad = F.pad(act(y_in), (p, p, p, p))                              # (1, M, H + 2p, W + 2p)
        out = []
        for r0 in range(0, H, rows_per_chunk):
            r1 = min(H, r0 + rows_per_chunk)
            sel = pos[(pos >= r0 * W) & (pos < r1 * W)] - r0 * W            # positions in this band
            if sel.numel():
                cols = F.unfold(y_pad[:, :, r0:r1 + 2 * p], self.k)[0]      # (M k k, (r1 - r0) W)
                out.append(self._ctx_matmul(cols[:, sel]))
        return torch.cat(out, dim=1)

    def _ctx_matmul(self, cols: Tensor) -> Tensor:
        """(M k k, n) unfolded patches -> (2M, n), over the mask's live taps only."""
        live = cols.reshape(self.M, self.k * self.k, -1)[:, self.taps]       # (M, t, n)
        return self.ctx_w @ live.reshape(-1, cols.shape[1]) + self.ctx.b[:, None]

    def context_of_patch(self, patch: Tensor) -> Tensor:
        """The context model's output (2M, 1) for one k x k patch (1, M, k, k) of decoded latents."""
        return self._ctx_matmul(act(patch).reshape(-1, 1))

    def params(self, ctx: Tensor, psi_cols: Tensor) -> CodingParams:
        """The mixture head at n positions: ctx and psi_cols (2M, n) -> coding parameters, (M n, K)
        in the order ``Cheng2020GMM._flat_params`` gives (channel-major, then position)."""
        x = act(torch.cat([ctx, psi_cols], dim=0))                           # (4M, n)
        for layer in self.head:
            x = _leaky(x, layer) if isinstance(layer, nn.LeakyReLU) else layer.matmul(x)
        K, M, n = self.K, self.M, x.shape[1]
        logits, means, scales = x.reshape(3, K, M, n).unbind(0)             # (K, M, n) each

        def flat(t: Tensor) -> Tensor:                                       # (K, M, n) -> (M n, K)
            return t.permute(1, 2, 0).reshape(M * n, K)
        return quantize_params(flat(torch.softmax(logits, dim=0)), flat(means),
                               flat(torch.clamp(scales, min=self.scale_min)))
