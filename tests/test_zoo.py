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
MODES = [(e["file"], e["name"], m, e.get("check", {}).get("modes", {}).get(str(m))) for e in ENTRIES for m in e["modes"]]


def test_zoo_is_shipped():
    assert ENTRIES, "weights/registry.json lists no model"
    assert sum(bool(e.get("default")) for e in ENTRIES) == 1
    assert sum(len(e["modes"]) for e in ENTRIES) >= 6


@pytest.mark.parametrize("file,name,mode,recorded", MODES, ids=[f"{f}-q{m}" for f, _, m, _ in MODES])
def test_shipped_mode_reproduces_recorded_figures(file, name, mode, recorded):
    from lic.weights import load_model
    from lic.zoo import BPP_RTOL, PSNR_ATOL, check_pixels, measure

    assert recorded is not None, "run `python -m lic.zoo record` after changing the zoo"
    lm = load_model(mode=float(mode), model=name)
    bpp, psnr = measure(lm.net, check_pixels(), float(mode), lm.fingerprint)
    assert math.isclose(bpp, recorded["bpp"], rel_tol=BPP_RTOL), (bpp, recorded)
    assert abs(psnr - recorded["psnr"]) <= PSNR_ATOL, (psnr, recorded)


def test_modes_are_ordered_weaker_to_stronger():
    from lic.zoo import check_pixels, measure
    from lic.weights import load_model

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
    c = lm.net.compress(x, lm.q)
    real_bits = 8 * sum(len(s) for s in c.streams)
    assert abs(real_bits / est_bits - 1) < 0.03, (real_bits, est_bits)
