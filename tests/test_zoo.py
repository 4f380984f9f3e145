"""The shipped zoo: every mode loads, round-trips a real image, and reproduces its recorded figures."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import KODAK
from lic import io
from lic.weights import read_registry

pytestmark = pytest.mark.skipif(not KODAK.exists(), reason="needs ../shared/data/kodak")

ENTRIES = read_registry()
MODES = [(e["file"], e["name"], m, e.get("check", {}).get("modes", {}).get(str(m)))
         for e in ENTRIES for m in e["modes"]]


def test_zoo_is_shipped():
    assert ENTRIES, "weights/registry.json lists no model"
    assert sum(bool(e.get("default")) for e in ENTRIES) == 1
    assert sum(len(e["modes"]) for e in ENTRIES) >= 6


@pytest.mark.parametrize("file,name,mode,recorded", MODES, ids=[f"{f}-q{m}" for f, _, m, _ in MODES])
def test_shipped_mode_reproduces_recorded_figures(file, name, mode, recorded):
    from lic.weights import load_entry
    from lic.zoo import BPP_RTOL, PSNR_ATOL, check_pixels, measure

    assert recorded is not None, "run `python -m lic.zoo record` after changing the zoo"
    lm = load_entry(next(e for e in ENTRIES if e["file"] == file))
    bpp, psnr = measure(lm.net, check_pixels(), float(mode), lm.fingerprint)
    assert math.isclose(bpp, recorded["bpp"], rel_tol=BPP_RTOL), (bpp, recorded)
    assert abs(psnr - recorded["psnr"]) <= PSNR_ATOL, (psnr, recorded)


def test_a_model_name_means_its_default_entry():
    """Older weights stay registered under the same name (their files still decode); encoding
    and evaluating by name must use the default entry, not the first one listed."""
    from lic.eval.lic_codec import LicCodec
    from lic.weights import load_model

    default = next(e for e in ENTRIES if e.get("default"))
    assert load_model(mode=1.0, model=default["name"]).source.endswith(default["file"])
    assert load_model(mode=1.0).source.endswith(default["file"])
    assert LicCodec.shipped(modes=[1.0]).models[1.0].source.endswith(default["file"])


@pytest.mark.slow
def test_modes_are_ordered_weaker_to_stronger():
    from lic.weights import load_model
    from lic.zoo import check_pixels, measure

    px = check_pixels()
    default = next(e for e in ENTRIES if e.get("default"))
    points = []
    for m in default["modes"]:
        lm = load_model(mode=float(m), model=default["name"])
        points.append(measure(lm.net, px, float(m), lm.fingerprint))
    bpps = [b for b, _ in points]
    psnrs = [p for _, p in points]
    assert bpps == sorted(bpps) and psnrs == sorted(psnrs), points


def test_real_rate_matches_estimate(kodak_crop):
    """Real coded latents (z + y streams) within 3 % of the likelihood estimate on a 256x256 image."""
    from lic.weights import load_model

    lm = load_model()
    x = io.to_tensor(kodak_crop)
    with torch.no_grad():
        est_bits = lm.net.eval()(x, lm.q).bits().item()
    rate = lm.net.rate_of(lm.q)
    with torch.no_grad():
        c = lm.net.encode_latent(lm.net.analyze(x, rate), rate)
    real_bits = 8 * sum(len(s) for s in c.streams)
    assert abs(real_bits / est_bits - 1) < 0.03, (real_bits, est_bits)


def test_progress_sums_the_legs_of_a_run():
    """A run started with init_from counts the training of the weights it started from."""
    from lic.zoo import _compute, _sum, lineage

    leg1 = {"steps": 100, "pixels_seen": 10, "train_seconds": 3600, "device": "cpu"}
    leg2 = {"steps": 50, "pixels_seen": 20, "train_seconds": 1800, "device": "cuda:X",
            "init_from": {"from": "w.safetensors", "trained": leg1}}
    leg3 = {"steps": 5, "pixels_seen": 1, "train_seconds": 1800, "device": "cuda:X",
            "init_from": {"from": "v.safetensors", "trained": leg2}}
    legs = lineage(leg3)
    assert legs == [leg3, leg2, leg1]
    assert _sum(legs, "steps") == "155" and _sum(legs, "pixels_seen") == "31"
    assert _compute(legs) == "1.00 h cuda:X + 1.00 h cpu"
    assert _sum(lineage({"steps": 1, "init_from": {"from": "x"}}), "pixels_seen") == "?"
