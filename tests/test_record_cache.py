"""The evaluation's record cache: classical codecs' results are reused only while nothing that
decides them (library versions, options, pixels, metrics) has changed."""
from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest

import lic.eval.baselines as baselines
from lic.eval.baselines import JPEG
from lic.eval.runner import RecordCache, run_codecs


def _images(n=2, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        yy, xx = np.mgrid[0:48, 0:64]
        img = np.stack([xx * 3, yy * 4, (xx + yy) * 2], -1) + rng.integers(0, 40, (48, 64, 3))
        out.append((f"img{i}", np.clip(img, 0, 255).astype(np.uint8)))
    return out


class Counting:
    """A deterministic toy codec without cache_id: never cached."""

    name = "raw"
    settings = [1]

    def __init__(self):
        self.calls = 0

    def encode(self, pixels, setting):
        self.calls += 1
        return pixels.tobytes()

    def decode(self, data):
        return np.frombuffer(data, np.uint8).reshape(48, 64, 3)


def _no_coding(*args, **kwargs):
    raise AssertionError("coded although the cache holds this result")


def test_second_run_reuses_every_record_exactly(tmp_path, monkeypatch):
    cache = RecordCache(tmp_path / "c.sqlite")
    jpeg, raw = JPEG(settings=[30, 70]), Counting()
    first = run_codecs(_images(), [jpeg, raw], with_ms_ssim=False, progress=False, cache=cache)
    assert (cache.hits, cache.misses) == (0, 4) and raw.calls == 2
    cache.close()

    cache = RecordCache(tmp_path / "c.sqlite")              # a new run, the same file
    monkeypatch.setattr(JPEG, "encode", _no_coding)
    second = run_codecs(_images(), [jpeg, raw], with_ms_ssim=False, progress=False, cache=cache)
    assert (cache.hits, cache.misses) == (4, 0)
    assert raw.calls == 4                                   # no cache_id: coded again
    # identical JPEG records (bytes, PSNR, even the timings of the run that measured them; repr
    # because MS-SSIM is NaN here, unmeasured)
    def jpeg_rows(records):
        return [repr(asdict(r)) for r in records if r.codec == "JPEG"]
    assert len(jpeg_rows(second)) == 4 and jpeg_rows(second) == jpeg_rows(first)


@pytest.mark.parametrize("change", ["library", "pixels", "ms_ssim", "options"])
def test_anything_that_decides_the_result_misses(tmp_path, monkeypatch, change):
    cache = RecordCache(tmp_path / "c.sqlite")
    run_codecs(_images(1), [JPEG(settings=[50])], with_ms_ssim=False, progress=False, cache=cache)
    images, ms, codec = _images(1), False, JPEG(settings=[50])
    if change == "library":
        monkeypatch.setattr(baselines.PIL, "__version__", "0.0.0")   # JPEG's description names Pillow's version
    elif change == "pixels":
        images = _images(1, seed=1)
    elif change == "ms_ssim":
        ms = True
    else:
        codec = JPEG(settings=[51])
    run_codecs(images, [codec], with_ms_ssim=ms, progress=False, cache=cache)
    assert (cache.hits, cache.misses) == (0, 2)


def test_the_same_pixels_under_another_name_are_reused_under_that_name(tmp_path, monkeypatch):
    cache = RecordCache(tmp_path / "c.sqlite")
    (name, px), = _images(1)
    run_codecs([(name, px)], [JPEG(settings=[50])], with_ms_ssim=False, progress=False, cache=cache)
    monkeypatch.setattr(JPEG, "encode", _no_coding)
    (rec,) = run_codecs([("renamed", px)], [JPEG(settings=[50])], with_ms_ssim=False, progress=False, cache=cache)
    assert rec.image == "renamed" and cache.hits == 1


def test_every_baseline_names_its_options_and_versions():
    for codec in baselines.available_baselines(verbose=False):
        a, b = codec.cache_id(codec.settings[0]), codec.cache_id(codec.settings[-1])
        assert a != b and type(codec).__name__ in a
