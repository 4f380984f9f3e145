"""The coded distribution is part of the format: the faster table builder (ndtr only where it is
neither exactly 0 nor 1, tables built on threads) must give bit-identical tables and streams."""
from __future__ import annotations

import constriction
import numpy as np
import pytest
from scipy.special import ndtr

from lic.entropy import mixture as mx


def reference_pmf(p: mx.CodingParams, lo: int, hi: int) -> np.ndarray:
    """mixture_pmf as it was first written (ndtr of every element): what files were coded with."""
    edges = np.arange(lo, hi + 2, dtype=np.float64) - 0.5
    z = (edges[None, None, :] - p.means[:, :, None]) / p.scales[:, :, None]
    cdf = ndtr(z)
    cdf[:, :, 0] = 0.0
    cdf[:, :, -1] = 1.0
    return np.einsum("nk,nkl->nl", p.weights, np.diff(cdf, axis=2))


def random_params(n: int, spread: float, seed: int) -> mx.CodingParams:
    import torch

    g = torch.Generator().manual_seed(seed)
    w = torch.softmax(torch.randn(n, 3, generator=g) * 2, dim=1)
    mu = torch.randn(n, 3, generator=g) * spread
    sigma = torch.exp(torch.randn(n, 3, generator=g) * 1.5)          # 0.01 .. 100: every regime
    return mx.quantize_params(w, mu, sigma)


def test_ndtr_is_exactly_zero_and_one_beyond_the_bounds():
    hi = np.concatenate([np.linspace(mx._Z_ONE, 60.0, 500_001), [1e3, 1e300, np.inf]])
    lo = np.concatenate([np.linspace(-2000.0, mx._Z_ZERO, 500_001), [-1e300, -np.inf]])
    assert (ndtr(hi) == 1.0).all()
    assert (ndtr(lo) == 0.0).all()
    # and the bounds are not loose by much: just inside them ndtr is not yet 0 / 1
    assert ndtr(8.2) < 1.0 and ndtr(-37.6) > 0.0


@pytest.mark.parametrize("lo,hi,spread", [(-3, 3, 1.0), (-40, 40, 8.0), (-200, 190, 60.0), (0, 1, 0.3)])
def test_tables_are_bit_identical_to_the_reference(lo, hi, spread):
    p = random_params(3000, spread, seed=hi - lo)
    fast, ref = mx.mixture_pmf(p, lo, hi), reference_pmf(p, lo, hi)
    assert fast.dtype == ref.dtype and fast.shape == ref.shape
    assert np.array_equal(fast.view(np.uint64), ref.view(np.uint64))


def test_non_finite_parameters_give_the_same_non_finite_tables():
    """NaN / inf parameters (a broken network) gave NaN tables, which the coder refuses; still so."""
    p = random_params(200, 4.0, seed=3)
    means, scales = p.means.copy(), p.scales.copy()
    means[5, 0], means[6, 1], scales[7, 2], scales[8, 0] = np.nan, np.inf, np.nan, np.inf
    bad = mx.CodingParams(p.weights, means, scales)
    fast, ref = mx.mixture_pmf(bad, -6, 6), reference_pmf(bad, -6, 6)
    assert np.isnan(ref).any()
    assert np.array_equal(fast, ref, equal_nan=True)
    enc = constriction.stream.queue.RangeEncoder()
    with pytest.raises(ValueError):
        mx.encode_symbols(enc, np.zeros(200, dtype=np.int32), bad, -6, 6)


def test_threaded_chunks_code_the_same_stream(monkeypatch):
    """Many chunks (tables built ahead on threads) vs one chunk: the same words, and they decode."""
    p = random_params(5000, 6.0, seed=7)
    rng = np.random.default_rng(0)
    sym = np.clip(np.rint(p.means[np.arange(5000), rng.integers(0, 3, 5000)] + rng.normal(0, 1, 5000)), -30, 30)
    sym = sym.astype(np.int32)
    lo, hi = int(sym.min()), int(sym.max())

    def code() -> np.ndarray:
        enc = constriction.stream.queue.RangeEncoder()
        mx.encode_symbols(enc, sym, p, lo, hi)
        return enc.get_compressed()

    one = code()
    monkeypatch.setattr(mx, "_CHUNK_CELLS", 3 * (hi - lo + 1) * 97)     # 97 symbols a chunk: 52 chunks
    assert len(list(mx._chunks(len(p), hi - lo + 1))) > 10
    many = code()
    assert np.array_equal(one, many)
    dec = constriction.stream.queue.RangeDecoder(many)
    assert np.array_equal(mx.decode_symbols(dec, p, lo, hi), sym)


def pooled_params(n: int, pool: int, seed: int) -> mx.CodingParams:
    """Components drawn from a small pool of (mu, sigma) pairs, as a real pass repeats them."""
    base = random_params(pool, 5.0, seed)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, pool, size=(n, 3))
    w = random_params(n, 1.0, seed + 1).weights
    return mx.CodingParams(w, base.means[pick, 0], base.scales[pick, 0])


@pytest.mark.parametrize("pool", [1, 4, 300])
def test_shared_components_give_bit_identical_tables(pool):
    """Tables computed once per distinct (mu, sigma) and gathered equal the element-wise definition."""
    p = pooled_params(4000, pool, seed=pool)
    assert mx._grid_keys(p.means.ravel(), p.scales.ravel()) is not None
    assert len(np.unique(p.means)) <= pool
    fast, ref = mx.mixture_pmf(p, -25, 30), reference_pmf(p, -25, 30)
    assert np.array_equal(fast.view(np.uint64), ref.view(np.uint64))


def test_grid_keys_tell_pairs_apart_and_refuse_what_is_off_the_grid():
    mu = np.array([0.0, -0.0, 1 / 64, 0.0, -30000.0, 30000.0])
    sigma = np.array([0.125, 0.125, 0.125, 0.140625, 30000.0, 0.125])
    keys = mx._grid_keys(mu, sigma)
    assert keys[0] == keys[1]                      # -0.0 and 0.0 give the same table
    assert len(np.unique(keys[1:])) == 5           # every other pair is distinct
    assert mx._grid_keys(np.array([0.3]), np.array([0.125])) is None      # mean off the grid
    assert mx._grid_keys(np.array([0.0]), np.array([0.13])) is None       # scale off the grid
    assert mx._grid_keys(np.array([np.nan]), np.array([0.125])) is None
    # off the grid, the tables are still the definition (no sharing)
    p = mx.CodingParams(np.full((3, 3), 1 / 3), np.full((3, 3), 0.3), np.full((3, 3), 0.7))
    assert np.array_equal(mx.mixture_pmf(p, -4, 4), reference_pmf(p, -4, 4))


def test_an_empty_pass_gives_an_empty_table():
    p = mx.CodingParams(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 3)))
    assert mx.mixture_pmf(p, -2, 3).shape == (0, 6)
