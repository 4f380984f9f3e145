"""Metrics against hand-computed values (no shared data needed)."""

import json
import math

import numpy as np
import pytest

from lic.eval.metrics import MS_SSIM_MIN_SIDE, ImageQuality, RDCurve, bpp, compare, ms_ssim, psnr


def _img(h=32, w=48, value=100):
    return np.full((h, w, 3), value, dtype=np.uint8)


def test_psnr_constant_error():
    a = _img()
    b = _img(value=105)  # error 5 everywhere: MSE 25
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 25), abs=1e-12)
    assert psnr(a, b) == pytest.approx(34.15140352195873, abs=1e-12)
    assert psnr(b, a) == psnr(a, b)


def test_psnr_is_over_all_three_channels():
    a = _img()
    b = a.copy()
    b[..., 1] += 6  # one channel off by 6: MSE = 36 / 3 = 12
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 12), abs=1e-12)


def test_psnr_identical_is_inf_and_uses_float64():
    a = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert psnr(a, a) == math.inf
    b = a.copy()
    b[0, 0, 0] ^= 1  # one unit error in one of 768 values
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 * 768), abs=1e-9)
    # no uint8 wrap-around: 0 vs 255 is a 255 error
    assert psnr(_img(value=0), _img(value=255)) == pytest.approx(0.0, abs=1e-12)


def test_psnr_rejects_bad_input():
    with pytest.raises(ValueError):
        psnr(_img(32, 48), _img(48, 32))
    with pytest.raises(TypeError):
        psnr(_img().astype(np.float32), _img())
    with pytest.raises(ValueError):
        psnr(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8))


def test_ms_ssim_identical_and_noisy():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (MS_SSIM_MIN_SIDE, 170, 3), dtype=np.uint8)
    assert ms_ssim(a, a) == pytest.approx(1.0, abs=1e-6)
    noise = rng.integers(-20, 21, a.shape)
    b = np.clip(a.astype(int) + noise, 0, 255).astype(np.uint8)
    v = ms_ssim(a, b)
    assert 0.0 < v < 1.0


def test_ms_ssim_matches_pytorch_msssim():
    torch = pytest.importorskip("torch")
    from pytorch_msssim import ms_ssim as ref

    rng = np.random.default_rng(2)
    y, x = np.mgrid[0:180, 0:200]
    a = np.stack([(x + y) % 256, (2 * x) % 256, (3 * y) % 256], -1).astype(np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-8, 9, a.shape), 0, 255).astype(np.uint8)
    ta = torch.from_numpy(a.copy()).permute(2, 0, 1)[None].float()
    tb = torch.from_numpy(b.copy()).permute(2, 0, 1)[None].float()
    assert ms_ssim(a, b) == pytest.approx(ref(ta, tb, data_range=255).item(), abs=1e-7)


def test_ms_ssim_small_image_is_nan():
    a = _img(MS_SSIM_MIN_SIDE - 1, 300)
    assert math.isnan(ms_ssim(a, a))


def test_bpp():
    assert bpp(1000, 100, 80) == pytest.approx(1.0)
    assert bpp(768 * 512 * 3, 512, 768) == pytest.approx(24.0)
    with pytest.raises(ValueError):
        bpp(10, 0, 5)


def test_compare_returns_dataclass():
    q = compare(_img(), _img(value=105), num_bytes=48 * 4)
    assert isinstance(q, ImageQuality)
    assert (q.height, q.width, q.num_bytes) == (32, 48, 192)
    assert q.bpp == pytest.approx(1.0)
    assert q.psnr == pytest.approx(34.1514035, abs=1e-6)
    assert math.isnan(q.ms_ssim)  # 32 px < 161


def test_rdcurve_json_round_trip_with_non_finite():
    c = RDCurve(name="X", bpp=[0.5, 24.0], psnr=[30.0, math.inf], ms_ssim=[math.nan, 1.0],
                settings=[1, "lossless"], description="d")
    text = json.dumps(c.to_compressai_dict(), allow_nan=False)  # strict JSON
    d = json.loads(text)
    assert d["name"] == "X" and d["results"]["psnr-rgb"] == [30.0, None]
    assert d["settings"] == [1, "lossless"]
    back = RDCurve.from_compressai_dict(d)
    assert back.bpp == [0.5, 24.0] and math.isnan(back.psnr[1]) and math.isnan(back.ms_ssim[0])
    assert RDCurve.from_compressai_dict(d, published=True).label == "X (published)"
    with pytest.raises(ValueError):
        RDCurve(name="bad", bpp=[1.0], psnr=[1.0, 2.0])
