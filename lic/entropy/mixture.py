"""Discretized Gaussian mixture (K components): likelihoods for training and
real, lossless entropy coding of integer latents with constriction's range coder.

Training side (torch, differentiable)::

    P(y_hat) = sum_k w_k [Phi((y_hat + 1/2 - mu_k) / sigma_k) - Phi((y_hat - 1/2 - mu_k) / sigma_k)]

Coding side (numpy, float64, deterministic): the mixture parameters are first
rounded to a fixed grid (``quantize_params``), so that encoder and decoder build
bit-identical tables even when the networks that produced the parameters differ
in the last bit (other thread count, other process). The probability tables are
then computed with ``scipy.special.ndtr`` (a plain C loop, the same result for the
same input on every run) and handed, a whole batch of symbols at a time, to
``constriction``'s ``Categorical`` model family: no Python loop per symbol.

A coded stream (bytes) is::

    lo int16 | hi int16 | range-coder words (uint32, little-endian)

where ``[lo, hi]`` is the support of the symbols in the stream; the two
end bins absorb the mixture's tails, so every symbol in the support has a
nonzero probability.  Every symbol's table spans the whole support, so a stream
costs (symbols x support) table entries to decode: readers are given the widest
support the model codes (``StreamReader(data, bound)``) and refuse wider ones
before building any table.
"""
from __future__ import annotations

import struct
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import constriction
import numpy as np
import torch
from compressai.ops.bound_ops import LowerBoundFunction
from scipy.special import ndtr
from torch import Tensor

LIKELIHOOD_MIN = 1e-9
SCALE_MIN = 0.11          # lower bound on mixture scales (network output)
MEAN_GRID = 64            # means rounded to multiples of 1/64
SCALE_GRID = 64           # scales rounded to multiples of 1/64, at least 8/64
SCALE_MIN_CODED = 8       # in units of 1/SCALE_GRID
WEIGHT_GRID = 256         # weights rounded to multiples of 1/256, at least 1/256, then renormalised
MAX_SUPPORT = 4096        # widest symbol range a stream may declare
_CHUNK_CELLS = 4_000_000  # bound on the size of one probability table batch
_HEADER = struct.Struct(">hh")


class MixtureStreamError(ValueError):
    """A mixture stream is malformed (declared support out of range, bad length)."""


def _cdf(x: Tensor) -> Tensor:
    return 0.5 * torch.erfc(-x * (2**-0.5))


def mixture_likelihood(y_hat: Tensor, weights: Tensor, means: Tensor, scales: Tensor) -> Tensor:
    """Likelihood of each element of ``y_hat`` under the discretized mixture.

    y_hat: (B, M, H, W); weights, means, scales: (B, K, M, H, W), weights summing
    to one over K. Returns (B, M, H, W), bounded below by 1e-9.
    """
    v = y_hat.unsqueeze(1) - means                  # (B, K, M, H, W)
    # Evaluate on the side of the mean where the tail is small (CompressAI's trick).
    sign = -torch.sign(v)
    upper = _cdf(sign * (v + 0.5) / scales)
    lower = _cdf(sign * (v - 0.5) / scales)
    lik = (weights * torch.abs(upper - lower)).sum(dim=1)  # (B, M, H, W)
    # CompressAI's LowerBound op (gradient passes where it pushes lik up), bound on lik's device
    return LowerBoundFunction.apply(lik, torch.tensor(LIKELIHOOD_MIN, dtype=lik.dtype, device=lik.device))


@dataclass(frozen=True)
class CodingParams:
    """Grid-rounded mixture parameters for n symbols: each (n, K) float64."""

    weights: np.ndarray
    means: np.ndarray
    scales: np.ndarray

    def __len__(self) -> int:
        return self.means.shape[0]

    def take(self, idx) -> "CodingParams":
        return CodingParams(self.weights[idx], self.means[idx], self.scales[idx])


def quantize_params(weights: Tensor, means: Tensor, scales: Tensor) -> CodingParams:
    """Round mixture parameters, given as (n, K) tensors, to the coding grid."""
    w = weights.detach().to(torch.float64).cpu().numpy()
    mu = means.detach().to(torch.float64).cpu().numpy()
    sigma = scales.detach().to(torch.float64).cpu().numpy()
    w_q = np.maximum(np.rint(w * WEIGHT_GRID), 1.0)
    w_q = w_q / w_q.sum(axis=1, keepdims=True)
    mu_q = np.rint(np.clip(mu, -30000.0, 30000.0) * MEAN_GRID) / MEAN_GRID
    sigma_q = np.maximum(np.rint(np.clip(sigma, 0.0, 30000.0) * SCALE_GRID), SCALE_MIN_CODED) / SCALE_GRID
    return CodingParams(w_q, mu_q, sigma_q)


# scipy's ndtr is exactly 1.0 for z >= 8.2924 (1 - 0.5 erfc(z / sqrt 2) rounds to 1) and exactly
# 0.0 for z <= -37.677 (erfc underflows): outside these bounds the table needs no ndtr call.
# tests/test_mixture_fast.py checks both on dense grids and that the tables are bit-identical.
_Z_ONE = 8.5
_Z_ZERO = -38.5


def _component_cdfs(mu: np.ndarray, sigma: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """CDF of each component (mu, sigma: (r,)) at ``edges`` (L + 1,), tails folded: (r, L + 1).

    Every element is ndtr of ``(edge - mu) / sigma``, evaluated only where it is neither exactly
    0 nor 1 (about three quarters of a live channel's row on kodim01 at mode 4, a quarter of a
    dead one's): this changes the speed, not a single bit.
    """
    z = (edges[None, :] - mu[:, None]) / sigma[:, None]            # (r, L + 1)
    cdf = (z >= _Z_ONE).astype(np.float64)
    # everything not provably 0 or 1, NaN included (non-finite parameters must stay non-finite:
    # constriction then refuses the table, as it did when every element went through ndtr)
    inner = ~((z <= _Z_ZERO) | (z >= _Z_ONE))
    cdf[inner] = ndtr(z[inner])
    cdf[:, 0] = 0.0   # fold the tails into the end bins
    cdf[:, -1] = 1.0
    return cdf


def _grid_keys(mu: np.ndarray, sigma: np.ndarray) -> np.ndarray | None:
    """One int64 per component, equal exactly when (mu, sigma) are equal; None unless every
    parameter is finite and on the coding grid (as ``quantize_params`` leaves them)."""
    m, s = mu * MEAN_GRID, sigma * SCALE_GRID          # exact: the grids are powers of two
    if not (np.isfinite(m).all() and np.isfinite(s).all()):
        return None
    mi, si = np.rint(m), np.rint(s)
    if not (np.array_equal(mi, m) and np.array_equal(si, s)):
        return None
    if m.size and (np.abs(mi).max() >= 2**30 or si.min() < 0 or si.max() >= 2**31):
        return None
    return ((mi.astype(np.int64) + 2**30) << 31) | si.astype(np.int64)


def mixture_pmf(p: CodingParams, lo: int, hi: int) -> np.ndarray:
    """Probability tables (n, hi - lo + 1), float64, rows summing to one.

    Defines the coded distribution (part of the format): row i is
    ``sum_k w_ik (cdf_ik[l + 1] - cdf_ik[l])`` with ``cdf_ik`` from ``_component_cdfs``.
    Components that share (mu, sigma) share their row: on the grid a pass repeats each pair
    about ten times (whole chunks of dead channels hold three or four pairs), so each distinct
    pair is computed once and gathered, which changes the speed, not a single bit
    (tests/test_mixture_fast.py compares with the element-by-element definition).
    """
    edges = np.arange(lo, hi + 2, dtype=np.float64) - 0.5          # (L + 1,)
    n, K = p.means.shape
    mu, sigma = p.means.reshape(-1), p.scales.reshape(-1)          # (n K,)
    keys = _grid_keys(mu, sigma)
    if keys is None:    # off the grid or non-finite: every component on its own
        comp = np.diff(_component_cdfs(mu, sigma, edges), axis=1)                   # (n K, L)
    else:
        _, first, inv = np.unique(keys, return_index=True, return_inverse=True)
        comp = np.diff(_component_cdfs(mu[first], sigma[first], edges), axis=1)[inv.reshape(-1)]
    return np.einsum("nk,nkl->nl", p.weights, comp.reshape(n, K, len(edges) - 1))


def _chunks(n: int, support: int):
    step = max(1, _CHUNK_CELLS // max(1, support * 3))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


_POOL: ThreadPoolExecutor | None = None
TABLE_THREADS = 2   # tables are built element-wise, so the thread count changes speed, not bits


def _tables(params: CodingParams, lo: int, hi: int):
    """(slice, pmf) for each chunk of ``_chunks``, in order.  The chunks are the same as ever (they
    bound memory); the tables of the next chunks are built on TABLE_THREADS threads while the
    caller codes this one, at most TABLE_THREADS + 1 tables in memory."""
    global _POOL
    chunks = list(_chunks(len(params), hi - lo + 1))
    if len(chunks) == 1:
        yield chunks[0], mixture_pmf(params.take(chunks[0]), lo, hi)
        return
    if _POOL is None:
        _POOL = ThreadPoolExecutor(TABLE_THREADS, thread_name_prefix="lic-pmf")
    pending = deque()
    nxt = 0
    for s in chunks:
        while nxt < len(chunks) and len(pending) < TABLE_THREADS:
            pending.append(_POOL.submit(mixture_pmf, params.take(chunks[nxt]), lo, hi))
            nxt += 1
        yield s, pending.popleft().result()


_FAMILY = constriction.stream.model.Categorical(perfect=False)


def encode_symbols(encoder, symbols: np.ndarray, params: CodingParams, lo: int, hi: int) -> None:
    """Append ``symbols`` (int, shape (n,), all in [lo, hi]) to a constriction RangeEncoder."""
    if hi == lo:
        return  # a one-symbol alphabet carries no information
    sym = np.ascontiguousarray(symbols, dtype=np.int32) - lo
    for s, pmf in _tables(params, lo, hi):
        encoder.encode(sym[s], _FAMILY, pmf)


def decode_symbols(decoder, params: CodingParams, lo: int, hi: int) -> np.ndarray:
    """Read len(params) symbols from a constriction RangeDecoder; returns int32 (n,)."""
    out = np.zeros(len(params), dtype=np.int32)
    if hi == lo:
        return out + lo
    for s, pmf in _tables(params, lo, hi):
        try:
            out[s] = decoder.decode(_FAMILY, pmf)
        except (AssertionError, ValueError) as e:
            # constriction: AssertionError for data that no encoder can have written with these
            # tables, ValueError for tables that are not distributions (non-finite parameters)
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise MixtureStreamError(f"corrupt latent stream ({first.rstrip('.')})") from None
    return out + lo


def support_of(symbols: np.ndarray) -> tuple[int, int]:
    if symbols.size == 0:
        return 0, 0
    lo, hi = int(symbols.min()), int(symbols.max())
    if lo < -32768 or hi > 32767 or hi - lo + 1 > MAX_SUPPORT:
        raise ValueError(f"latent range [{lo}, {hi}] is too wide to code")
    return lo, hi


class StreamWriter:
    """One range-coded substream: support header, then coded words."""

    def __init__(self, lo: int, hi: int):
        self.lo, self.hi = lo, hi
        self._enc = constriction.stream.queue.RangeEncoder()

    def write(self, symbols: np.ndarray, params: CodingParams) -> None:
        encode_symbols(self._enc, symbols, params, self.lo, self.hi)

    def getvalue(self) -> bytes:
        words = self._enc.get_compressed().astype("<u4")
        return _HEADER.pack(self.lo, self.hi) + words.tobytes()


class StreamReader:
    """Reads one substream.  ``bound``: refuse a declared support outside [-bound, bound] (the
    symbols the model codes, ``Cheng2020GMM.symbol_bound``); None: only MAX_SUPPORT applies."""

    def __init__(self, data: bytes, bound: int | None = None):
        if len(data) < _HEADER.size or (len(data) - _HEADER.size) % 4:
            raise MixtureStreamError("latent stream has a bad length")
        self.lo, self.hi = _HEADER.unpack_from(data)
        if self.hi < self.lo or self.hi - self.lo + 1 > MAX_SUPPORT:
            raise MixtureStreamError("latent stream declares an invalid symbol range")
        if bound is not None and not -bound <= self.lo <= self.hi <= bound:
            raise MixtureStreamError(f"latent stream declares symbols {self.lo}..{self.hi}, outside the "
                                     f"-{bound}..{bound} this model codes at this mode")
        words = np.frombuffer(data, dtype="<u4", offset=_HEADER.size).astype(np.uint32)
        self._dec = constriction.stream.queue.RangeDecoder(words)

    def read(self, params: CodingParams) -> np.ndarray:
        return decode_symbols(self._dec, params, self.lo, self.hi)
