"""Where the bits go: the cost of every latent element under the REAL entropy coder.

For one image and one model, :func:`bit_map` runs the encoder's own steps
(``g_a``, gains, ``h_a``, the hyper-latent stream, ``h_s`` and, for the
checkerboard model, the two passes of ``Cheng2020GMM.checkerboard_passes``; for
the serial model, the raster loop of ``serial_positions``: the very code the
encoder and decoder run) and, instead of writing the symbols, records what each
one costs:

* y (the latent): ``-log2`` of the probability the range coder uses for the
  symbol, i.e. the row of :func:`lic.entropy.mixture.mixture_pmf` for the
  grid-rounded parameters of :func:`lic.entropy.mixture.quantize_params`, over the
  stream's support ``[lo, hi]`` (the same tables :class:`~lic.entropy.mixture.StreamWriter`
  hands to constriction), after constriction's 24-bit fixed-point "leaky"
  quantization (every symbol of the support gets one extra 2^-24 unit, the rest is
  scaled by ``1 - L 2^-24``; its +-1 unit floor rounding is ignored). A stream
  whose support is a single symbol costs nothing (the coder writes no word).
* z (the hyper-latent): ``-log2`` of the 16-bit frequency CompressAI's rANS coder
  uses (``entropy_bottleneck._quantized_cdf``), plus its 4-bit bypass nibbles
  for values outside the table.

Summed over channels, they give a map over the latent grid of the padded image
(``H/16 x W/16`` for y, ``H/64 x W/64`` for z, ``H, W`` rounded up to multiples
of 64). The sum of the y map equals the coded y streams to within the range
coder's termination (a few words per stream); the file adds the container
header (32 bytes + 4 per stream + CRC) and each y stream's 4-byte support header.

Tiled images (see :mod:`lic.codec`) are handled tile by tile, as the encoder does.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lic import codec, io
from lic.entropy.mixture import CodingParams, mixture_pmf, support_of
from lic.models.cheng2020 import Cheng2020GMM, decoder_threads

__all__ = ["BitMap", "bit_map", "symbol_bits", "hyper_bits"]

RANGE_CODER_PRECISION = 24   # constriction's default models: 24-bit fixed-point probabilities
_RANS_PRECISION = 16         # CompressAI's rANS coder (hyper-latent)
_BYPASS_BITS = 4
_MAX_BYPASS = (1 << _BYPASS_BITS) - 1
_CHUNK_CELLS = 4_000_000


@dataclass(frozen=True)
class BitMap:
    """Bits per latent position of one image under the real coder (all float64).

    ``y_bits[i, j]``: the bits of the M latent channels at latent position (i, j),
    over the padded image's latent grid (``latent_shape``). ``z_bits``: likewise
    for the hyper-latent (``H/64 x W/64``). ``y_channel_bits[c]``: the bits of
    channel c over all positions. The image's own pixels cover the top-left
    ``ceil(height / 16) x ceil(width / 16)`` positions of ``y_bits``.
    """

    y_bits: np.ndarray
    z_bits: np.ndarray
    y_channel_bits: np.ndarray
    height: int
    width: int
    mode: float

    @property
    def latent_shape(self) -> tuple[int, int]:
        return tuple(self.y_bits.shape)  # type: ignore[return-value]

    @property
    def y_total(self) -> float:
        return float(self.y_bits.sum())

    @property
    def z_total(self) -> float:
        return float(self.z_bits.sum())

    @property
    def total(self) -> float:
        """Bits of y and z together (the payload, without any headers)."""
        return self.y_total + self.z_total

    @property
    def bpp(self) -> float:
        """``total`` per pixel of the (unpadded) image."""
        return self.total / (self.height * self.width)

    def y_bpp_map(self) -> np.ndarray:
        """``y_bits`` per pixel of each 16 x 16 block: bits / 256."""
        return self.y_bits / 256.0


# --------------------------------------------------------------------------- per-symbol costs


def symbol_bits(symbols: np.ndarray, params: CodingParams, lo: int, hi: int) -> np.ndarray:
    """Bits of each symbol (n,) coded with ``params`` over support ``[lo, hi]``, as the range coder codes it.

    ``-log2`` of the probability of :func:`~lic.entropy.mixture.mixture_pmf` after
    the coder's 24-bit leaky quantization; 0 for a one-symbol support.
    """
    sym = np.asarray(symbols, dtype=np.int64).reshape(-1)
    out = np.zeros(len(sym), dtype=np.float64)
    if hi == lo or len(sym) == 0:
        return out
    if sym.min() < lo or sym.max() > hi:
        raise ValueError(f"symbols outside the support [{lo}, {hi}]")
    L = hi - lo + 1
    one = 2.0 ** -RANGE_CODER_PRECISION
    step = max(1, _CHUNK_CELLS // (3 * L))
    for start in range(0, len(sym), step):
        s = slice(start, min(len(sym), start + step))
        pmf = mixture_pmf(params.take(s), lo, hi)
        rows = np.arange(pmf.shape[0])
        p = pmf[rows, sym[s] - lo] / pmf.sum(axis=1)
        out[s] = -np.log2(p * (1.0 - L * one) + one)
    return out


def hyper_bits(net: Cheng2020GMM, z: torch.Tensor) -> np.ndarray:
    """Bits of each hyper-latent element, (C, H, W) for z (1, C, H, W), as CompressAI's rANS codes it."""
    eb = net.entropy_bottleneck
    medians = eb._extend_ndims(eb._get_medians().detach(), 2).expand(z.size(0), -1, -1, -1)
    sym = eb.quantize(z, "symbols", medians)[0].to(torch.int64).numpy()        # (C, H, W)
    C = sym.shape[0]
    cdf = eb._quantized_cdf.to(torch.int64).numpy()                             # (C, Lmax)
    length = eb._cdf_length.reshape(-1).to(torch.int64).numpy()                 # (C,)
    offset = eb._offset.reshape(-1).to(torch.int64).numpy()                     # (C,)
    max_value = (length - 2)[:, None, None]
    value = sym - offset[:, None, None]
    raw = np.where(value < 0, -2 * value - 1, np.where(value >= max_value, 2 * (value - max_value), 0))
    value = np.where((value < 0) | (value >= max_value), max_value, value)
    ch = np.arange(C)[:, None, None]
    freq = cdf[ch, value + 1] - cdf[ch, value]
    bits = _RANS_PRECISION - np.log2(freq.astype(np.float64))
    # bypass: a run of nibbles giving the count of value nibbles (15 = "more follow"), then those nibbles
    n_nib = np.zeros_like(raw)
    r = raw.copy()
    while (r > 0).any():
        n_nib += r > 0
        r >>= _BYPASS_BITS
    escaped = value == max_value
    bits += np.where(escaped, _BYPASS_BITS * (n_nib // _MAX_BYPASS + 1 + n_nib), 0)
    return bits


# --------------------------------------------------------------------------- the two context models


def _checkerboard_bits(net: Cheng2020GMM, psi: torch.Tensor, y_sym: torch.Tensor, head) -> np.ndarray:
    """The encoder's checkerboard passes (``net.checkerboard_passes``), costing instead of writing: (M, H, W)."""
    bits = np.zeros(y_sym.shape[1:], dtype=np.float64)

    def cost(p: int, sel: torch.Tensor, params: CodingParams) -> np.ndarray:
        sym = y_sym[0][sel].to(torch.int64).numpy()
        bits[sel.numpy()] = symbol_bits(sym, params, *support_of(sym))
        return sym

    net.checkerboard_passes(psi, cost, head)
    return bits


def _serial_bits(net: Cheng2020GMM, psi: torch.Tensor, y_sym: torch.Tensor, head) -> np.ndarray:
    """The encoder's raster loop (``net.serial_positions``), costing instead of writing: (M, H, W)."""
    sym_all = y_sym.to(torch.int64).numpy()                                 # (1, M, H, W)
    lo, hi = support_of(sym_all)
    bits = np.zeros(sym_all.shape[1:], dtype=np.float64)

    def cost(h: int, w: int, params: CodingParams) -> np.ndarray:
        bits[:, h, w] = symbol_bits(sym_all[0, :, h, w], params, lo, hi)
        return sym_all[0, :, h, w]

    net.serial_positions(psi, cost, head)
    return bits


@torch.no_grad()
def _tile_bits(net: Cheng2020GMM, x: torch.Tensor, q: float | None) -> tuple[np.ndarray, np.ndarray]:
    """(y bits (M, H/16, W/16), z bits (N, H/64, W/64)) of one padded tile, as ``compress`` codes it."""
    gains = net._gains(q, 1, x.device)
    y = net.g_a(x)
    if gains is not None:
        y = y * gains[0]
    z = net.h_a(y)
    eb = net.entropy_bottleneck
    z_strings = eb.compress(z)
    y_sym = net.coding_symbols(y, q)
    with decoder_threads():   # the tables are derived exactly as in compress / decompress
        z_hat = eb.decompress(z_strings, z.shape[-2:])
        head = net.coding_head(exact=True)           # as the files this build writes (version 2)
        psi = net.coding_psi(z_hat, head)
        if net.config.context == "checkerboard":
            yb = _checkerboard_bits(net, psi, y_sym, head)
        else:
            yb = _serial_bits(net, psi, y_sym, head)
    return yb, hyper_bits(net, z)


def bit_map(net: Cheng2020GMM, pixels: np.ndarray, mode: float = 1.0, *,
            tile_size: int | None = None) -> BitMap:
    """The per-latent bit map of ``pixels`` (H, W, 3) uint8 coded by ``net`` at 1-based ``mode``.

    Same arguments as :func:`lic.codec.encode_with_net` (a single-rate model takes
    any integer ``mode``: it only goes into the file header).
    """
    m, frac, q, pixels = codec.prepare_input(net, pixels, mode)
    h, w = pixels.shape[:2]
    t = codec.choose_tile_size(h, w, tile_size)
    tiles = codec.tile_grid(h, w, t, net.downsampling)
    hp, wp = tiles[-1][0] + tiles[-1][2], tiles[-1][1] + tiles[-1][3]
    M = net.config.M
    y_map = np.zeros((hp // 16, wp // 16), dtype=np.float64)
    z_map = np.zeros((hp // 64, wp // 64), dtype=np.float64)
    per_channel = np.zeros(M, dtype=np.float64)
    was_training = net.training
    net.eval()
    try:
        for top, left, th, tw in tiles:
            x = codec.pad(io.to_tensor(pixels[top:top + th, left:left + tw]), net.downsampling)
            yb, zb = _tile_bits(net, x, q)
            y_map[top // 16:(top + th) // 16, left // 16:(left + tw) // 16] = yb.sum(axis=0)
            z_map[top // 64:(top + th) // 64, left // 64:(left + tw) // 64] = zb.sum(axis=0)
            per_channel += yb.sum(axis=(1, 2))
    finally:
        net.train(was_training)
    return BitMap(y_bits=y_map, z_bits=z_map, y_channel_bits=per_channel, height=h, width=w,
                  mode=float(m + frac / 256))
