"""A per-image update of the synthesis transform's last layer, fitted by the encoder and sent in the file.

For any model whose g_s ends in a sub-pixel convolution (``lic.models.base.can_adapt``: the
model names the layer, ``last_layer()``, and computes its inputs, ``synth_features``).  There
g_s ends in one linear layer (``subpel_conv3x3``: a 3x3 convolution from N feature maps at half
resolution to 12 maps, then a pixel shuffle to RGB): x_hat = shuffle(W * f + b), with f =
g_s[:-1](y_hat * inverse gain) the features the decoder computes anyway.  For one image and its
coded latent, the W and b that minimise the squared error are a linear least-squares problem, as
for the adaptive loop filter of VVC (a Wiener filter signalled per picture), here on the
decoder's own features (instance-adaptive compression: van Rozendaal, Huijben & Cohen, ICLR
2021, fine-tune the decoder per image and send the change).  ``KINDS`` says which entries a
change D may move (0: the whole layer; 1: the centre taps and biases, a 1x1 convolution, the one
the encoder tries, ``DEFAULT_KINDS``).  The encoder

1. accumulates the normal equations of D over the image's tiles, only for the columns of the
   kinds it tries (``Fit``: G = sum a a^T, B = sum a r^T over the valid positions, a the layer's
   inputs in those columns, r the shipped layer's residual in 8-bit levels);
2. solves ridge least squares for D, pulled towards no change (``RIDGE``);
3. quantizes D on each step 2^-e of ``STEP_EXPONENTS`` (rounding in
   :func:`lic.entropy.quantize.quantize`, the project's one quantizer) and codes the integers
   with a range coder under a discretized Cauchy model whose scale is chosen per file;
4. keeps the choice (no update included) with the lowest rate-distortion cost
   lmbda * MSE_8bit + bits / pixels at the mode's lambda (the training loss), the distortion
   computed exactly from G, B and ||r||^2 (a quadratic form), the bits the code's exact length.

The decoder reads the update stream (:func:`decode_update`), adds q * 2^-e to the shipped float32
weights, and uses them in place of the last layer for every tile (the model's ``synthesize``'s
``last``).  The model is never modified.  The update only changes pixels, never the latents or
their probability tables, so the file stays decodable on any machine (docs/robustness.md).

Stream layout (all in the one stream that follows every tile's streams, the container's flag
``FLAG_SYNTHESIS_UPDATE``; format version 3)::

    u8   e        step exponent: the update is q * 2^-e, e in STEP_EXPONENTS_READ
    u8   k        Cauchy scale code: scale^2 = SCALE_SQUARED[k] (2^-12 .. 2^20), k <= MAX_SCALE_CODE
    u8   kind     which entries move (KINDS): 0 every weight and bias, 1 the centre taps and biases
    ...           range-coded words (u32 little-endian): the integers q of the kind's columns of
                  [weight | bias] (12 rows of 9N + 1, or of N + 1), row-major, each in [-QMAX, QMAX]

The Cauchy table is built from exact binary fractions and integers, divisions (correctly rounded
by IEEE 754) and an exactly rounded sum (``math.fsum``), so it is the same on every machine before
constriction quantizes it.
Figures: docs/adapt.md.
"""
from __future__ import annotations

import functools
import math
import struct
from dataclasses import dataclass
from typing import Protocol

import constriction
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lic.entropy.quantize import QuantMode, quantize


class Adaptable(Protocol):
    """What the update needs of a model (``lic.models.base.SubpelSynthesis`` provides it)."""

    def last_layer(self) -> torch.nn.Conv2d: ...

    def synth_features(self, y_hat: Tensor, rate) -> Tensor: ...

STEP_EXPONENTS = (6, 7, 8, 9, 10, 11)        # steps the encoder tries: 2^-6 (0.0156) .. 2^-11 (0.00049)
STEP_EXPONENTS_READ = range(1, 25)           # what a decoder accepts
# Cauchy scale code k -> the scale squared: powers of 2 below 1 (for updates that are mostly zeros),
# then round(2^(j / 2)) written out; every one exact in float64
SCALE_SQUARED = (2.0**-12, 2.0**-10, 2.0**-8, 2.0**-6, 2.0**-4, 2.0**-2, 0.5,
                 1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, 91, 128, 181, 256, 362, 512, 724, 1024, 1448,
                 2048, 2896, 4096, 5793, 8192, 11585, 16384, 23170, 32768, 46341, 65536, 92682, 131072,
                 185364, 262144, 370728, 524288, 741455, 1048576)
MAX_SCALE_CODE = len(SCALE_SQUARED) - 1      # scales from 2^-6 up to 2^10 integer steps
QMAX = 4095                                  # |q| at most this: the alphabet is [-QMAX, QMAX]
RIDGE = 1e-4                                 # ridge weight per position, towards the shipped layer
_HEADER = struct.Struct("<BBB")

# kind -> which entries of [weight | bias] the update moves (the others stay as shipped).
# APPEND-ONLY: files name these numbers.
KINDS = {
    0: "every weight of the 3x3 kernels, and the biases",
    1: "the kernels' centre taps (a 1x1 convolution), and the biases",
}
DEFAULT_KINDS = (1,)   # what the encoder tries (docs/adapt.md, "Which entries")


class UpdateStreamError(ValueError):
    """A synthesis-update stream that cannot have been written by an encoder for this model."""


@dataclass(frozen=True)
class Update:
    """A decoded (or chosen) update: integers q (12, 9N + 1), step 2^-e, and the kind (KINDS)
    that says which entries may be nonzero."""

    q: np.ndarray          # int32 (out_channels, in_channels * 9 + 1): [weight | bias]
    exponent: int
    kind: int = 0

    @property
    def step(self) -> float:
        return 2.0 ** -self.exponent


def kind_columns(kind: int, width: int) -> np.ndarray:
    """The columns of [weight | bias] (``width`` = 9N + 1) that an update of ``kind`` moves."""
    if kind == 0:
        return np.arange(width)
    if kind == 1:
        return np.append(np.arange(4, width - 1, 9), width - 1)   # (c, 1, 1) of each 3x3 kernel; bias
    raise ValueError(f"unknown update kind {kind}")


def shipped_matrix(net: Adaptable) -> Tensor:
    """The shipped last layer as one float32 matrix (out, in * 9 + 1): [weight | bias]."""
    conv = net.last_layer()
    return torch.cat([conv.weight.detach().float().reshape(conv.out_channels, -1),
                      conv.bias.detach().float()[:, None]], 1)


def updated_layer(net: Adaptable, update: Update) -> tuple[Tensor, Tensor]:
    """(weight, bias) of the last layer with ``update`` applied, float32, as the decoder uses them.

    q * 2^-e is exact in float32 (|q| <= QMAX), and the one addition to the shipped weight is
    correctly rounded, so encoder and decoder get the same bits on any machine."""
    conv = net.last_layer()
    w0 = shipped_matrix(net)
    q = torch.from_numpy(np.ascontiguousarray(update.q, dtype=np.float32))
    if q.shape != w0.shape:
        raise UpdateStreamError(f"update has shape {tuple(q.shape)}, the model's last layer {tuple(w0.shape)}")
    w = w0 + q * update.step
    return w[:, :-1].reshape_as(conv.weight).contiguous(), w[:, -1].contiguous()


# ---------------------------------------------------------------------------- the code


@functools.lru_cache(maxsize=None)
def _pmf(scale_code: int) -> np.ndarray:
    """Discretized Cauchy over [-QMAX, QMAX], p(k) ~ 1 / (s^2 + k^2), the same bits on every machine:
    the denominators are exact in float64, each division is correctly rounded, and so is the sum.
    Built once per scale code (the encoder prices every code for every step it tries); read-only."""
    k = np.arange(-QMAX, QMAX + 1, dtype=np.float64)
    p = 1.0 / (float(SCALE_SQUARED[scale_code]) + k * k)
    p /= math.fsum(p.tolist())
    p.flags.writeable = False
    return p


def _model(scale_code: int):
    """The one constriction model every integer of the update is coded with."""
    return constriction.stream.model.Categorical(_pmf(scale_code), perfect=False)


def _bits(q: np.ndarray, scale_code: int) -> float:
    """Ideal code length of q under the scale's table (the choice; the real code is a few bytes more)."""
    pmf = _pmf(scale_code)
    return float(-np.log2(pmf[q.reshape(-1) + QMAX]).sum())


def encode_update(update: Update) -> bytes:
    """The update stream: exponent, scale code (the cheapest for these integers), kind, coded words
    (the kind's columns of q, row by row)."""
    full = np.asarray(update.q, dtype=np.int32)
    cols = kind_columns(update.kind, full.shape[1])
    if np.count_nonzero(full) != np.count_nonzero(full[:, cols]):
        raise ValueError(f"an update of kind {update.kind} moves only {KINDS[update.kind]}")
    q = np.ascontiguousarray(full[:, cols]).reshape(-1)
    if q.size and (q.min() < -QMAX or q.max() > QMAX):
        raise ValueError(f"update integers must lie in [-{QMAX}, {QMAX}]")
    if update.exponent not in STEP_EXPONENTS_READ:
        raise ValueError(f"step exponent {update.exponent} out of range")
    return _encode(q, update.exponent, min(range(MAX_SCALE_CODE + 1), key=lambda c: _bits(q, c)), update.kind)


def _encode(q: np.ndarray, exponent: int, scale_code: int, kind: int) -> bytes:
    enc = constriction.stream.queue.RangeEncoder()
    enc.encode(q + QMAX, _model(scale_code))
    return _HEADER.pack(exponent, scale_code, kind) + enc.get_compressed().astype("<u4").tobytes()


def decode_update(data: bytes, shape: tuple[int, int]) -> Update:
    """Inverse of :func:`encode_update` for a layer of ``shape``; UpdateStreamError on bad input.

    Only what an encoder writes is accepted: the decoded integers, coded again with the stream's
    step and scale, must give the stream back byte for byte (so trailing or altered words that a
    range decoder would silently skip are refused too)."""
    if len(data) < _HEADER.size or (len(data) - _HEADER.size) % 4:
        raise UpdateStreamError("synthesis update stream has a bad length")
    e, k, kind = _HEADER.unpack_from(data)
    if e not in STEP_EXPONENTS_READ or k > MAX_SCALE_CODE or kind not in KINDS:
        raise UpdateStreamError("synthesis update stream declares an invalid step, scale or kind")
    cols = kind_columns(kind, shape[1])
    n = shape[0] * len(cols)
    words = np.frombuffer(data, dtype="<u4", offset=_HEADER.size).astype(np.uint32)
    try:
        q = np.asarray(constriction.stream.queue.RangeDecoder(words).decode(_model(k), n), dtype=np.int32) - QMAX
    except (AssertionError, ValueError) as err:
        raise UpdateStreamError(f"corrupt synthesis update stream ({type(err).__name__})") from None
    if _encode(q, e, k, kind) != bytes(data):
        raise UpdateStreamError("corrupt synthesis update stream (not what an encoder writes)")
    full = np.zeros(shape, dtype=np.int32)
    full[:, cols] = q.reshape(shape[0], len(cols))
    return Update(q=full, exponent=e, kind=kind)


# ---------------------------------------------------------------------------- the fit


class Fit:
    """Normal equations of a change D to the last layer, over an image's valid pixels, tile by tile.

    Only the columns that ``kinds`` may move are accumulated (for kind 1, the features themselves
    and a one: N + 1 columns, no 3x3 neighbourhoods), against the residual r = t - 255 W0 a of the
    shipped layer W0, so that for any D moving those columns

        SSE(W0 + D) = ||r||^2 - 2 * 255 tr(D_c B) + 255^2 tr(D_c G D_c^T),
        G = sum a_c a_c^T,  B = sum a_c r^T,  in 8-bit levels.
    """

    def __init__(self, net: Adaptable, kinds: tuple[int, ...] = DEFAULT_KINDS):
        self.net = net
        self.kinds = tuple(kinds)
        self.w0 = shipped_matrix(net)                           # (12, 9N + 1) float32
        width = self.w0.shape[1]
        self.cols = np.unique(np.concatenate([kind_columns(k, width) for k in self.kinds]))
        d = len(self.cols)
        self.G = torch.zeros(d, d, dtype=torch.float64)
        self.B = torch.zeros(d, self.w0.shape[0], dtype=torch.float64)
        self.rr = 0.0                                           # ||r||^2: the shipped layer's SSE
        self.positions = 0
        self.pixels = 0

    @torch.no_grad()
    def add_tile(self, feats: Tensor, x: Tensor, valid: tuple[int, int], rows: int = 32) -> None:
        """feats: (1, N, th/2, tw/2), the input of the last layer for a tile whose pixels are x
        (1, 3, th, tw) in [0, 1]; only the ``valid`` (h, w) top-left part counts (positions whose
        2 x 2 block lies inside it: with an odd side the last row or column is left out of the fit).

        The convolution's zero padding at the tile's edges is the decoder's (each tile is decoded
        on its own).  The sums are float32 products over ``rows`` feature rows at a time, added up
        in float64: the fit need not be exact (the decoder never repeats it), only good."""
        conv = self.net.last_layer()
        feats = feats.float()
        out0 = F.conv2d(feats, conv.weight.float(), conv.bias.float(), padding=1)   # (1, 12, th/2, tw/2)
        resid = F.pixel_unshuffle(x.float(), 2) * 255.0 - 255.0 * out0            # r, 8-bit levels
        h2, w2 = feats.shape[-2:]
        hh, ww = valid[0] // 2, valid[1] // 2
        width = self.w0.shape[1]
        centre_only = np.array_equal(self.cols, kind_columns(1, width))
        for r0 in range(0, hh, rows):
            r1 = min(hh, r0 + rows)
            if centre_only:                                   # the centre taps: the features themselves
                a = feats[0, :, r0:r1, :ww].reshape(feats.shape[1], -1)           # (N, P)
            else:
                slab = feats[:, :, max(0, r0 - 1):min(h2, r1 + 1)]
                slab = F.pad(slab, (1, 1, int(r0 == 0), int(r1 == h2)))        # the conv's zero padding
                unf = F.unfold(slab, 3)                                         # (1, 9N, (r1 - r0) * w2)
                a = unf.reshape(unf.shape[1], r1 - r0, w2)[:, :, :ww].reshape(unf.shape[1], -1)
                a = a[torch.from_numpy(self.cols[self.cols < width - 1])]      # the columns in use
            a = torch.cat([a, torch.ones(1, a.shape[1])])                      # (|cols|, P): the bias last
            r = resid[0, :, r0:r1, :ww].reshape(resid.shape[1], -1)            # (12, P)
            self.G += (a @ a.T).double()
            self.B += (a @ r.T).double()
            self.rr += float((r.double() ** 2).sum())
            self.positions += a.shape[1]
        self.pixels += valid[0] * valid[1]

    def solve(self, kind: int) -> Tensor:
        """The ridge least-squares change D (12, 9N + 1), float64, zero off the ``kind``'s columns,
        in the units of the layer's output in [0, 1] (pulled towards no change by ``RIDGE``)."""
        if kind not in self.kinds:
            raise ValueError(f"this fit did not accumulate the columns of kind {kind}")
        cols = kind_columns(kind, self.w0.shape[1])
        idx = torch.from_numpy(np.searchsorted(self.cols, cols))   # where they sit in G and B
        rho = RIDGE * max(1, self.positions)
        G = self.G[idx][:, idx] + rho * torch.eye(len(idx), dtype=torch.float64)
        delta = torch.zeros(self.w0.shape, dtype=torch.float64)
        delta[:, torch.from_numpy(cols)] = torch.linalg.solve(G, self.B[idx] / 255.0).T
        return delta

    def sse(self, delta: Tensor | None = None) -> float:
        """Sum of squared errors (8-bit levels) over the fitted positions with the layer W0 + delta
        (12, 9N + 1; None: the shipped layer), before clamping and rounding."""
        if delta is None:
            return self.rr
        d = delta.double()[:, torch.from_numpy(self.cols)]                   # (12, |cols|)
        return float(self.rr - 2 * 255.0 * torch.sum(d.T * self.B) + 255.0**2 * torch.sum((d @ self.G) * d))


def choose_update(fit: Fit, lmbda: float) -> Update | None:
    """The update (or None) with the lowest lmbda * MSE + bits / pixels, over the fit's kinds and
    ``STEP_EXPONENTS`` (MSE of the fitted values in 8-bit levels, bits of the update's stream and
    length field)."""
    if fit.positions == 0:
        return None
    values = fit.w0.shape[0] * fit.positions
    best_cost, best = lmbda * fit.sse() / values, None
    for kind in fit.kinds:
        u = fit.solve(kind)                                     # (12, 9N + 1), zero off the kind's columns
        for e in STEP_EXPONENTS:
            q = quantize(u * 2.0**e, QuantMode.ROUND).clamp(-QMAX, QMAX)
            update = Update(q=q.numpy().astype(np.int32), exponent=e, kind=kind)
            bits = 8 * (len(encode_update(update)) + 4)         # its stream and its length field
            cost = lmbda * fit.sse(q * 2.0**-e) / values + bits / fit.pixels
            if cost < best_cost:
                best_cost, best = cost, update
    return best
