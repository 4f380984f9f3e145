"""BD-rate / BD-PSNR: synthetic identities and the published Kodak figures."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from lic.eval.bdrate import NoOverlapError, bd_psnr, bd_rate, bd_table
from lic.eval.datasets import reference_dir
from lic.eval.metrics import RDCurve

ANCHOR = [(0.2, 26.0), (0.35, 28.5), (0.6, 31.0), (1.0, 33.6), (1.7, 36.4), (3.0, 40.0)]


def scaled(curve, rate=1.0, dpsnr=0.0):
    return [(b * rate, p + dpsnr) for b, p in curve]


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_identical_curves_give_zero(method):
    assert bd_rate(ANCHOR, ANCHOR, method) == pytest.approx(0.0, abs=1e-9)
    assert bd_psnr(ANCHOR, ANCHOR, method) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_rate_scaled_by_0_9_gives_minus_10_percent(method):
    assert bd_rate(ANCHOR, scaled(ANCHOR, 0.9), method) == pytest.approx(-10.0, abs=1e-6)
    assert bd_rate(ANCHOR, scaled(ANCHOR, 1.25), method) == pytest.approx(25.0, abs=1e-6)


def test_psnr_shift_gives_bd_psnr():
    assert bd_psnr(ANCHOR, scaled(ANCHOR, dpsnr=0.5)) == pytest.approx(0.5, abs=1e-9)
    assert bd_psnr(ANCHOR, scaled(ANCHOR, dpsnr=-1.0), "cubic") == pytest.approx(-1.0, abs=1e-9)
    # better quality at equal rate also means fewer bits at equal quality
    assert bd_rate(ANCHOR, scaled(ANCHOR, dpsnr=0.5)) < 0


def test_order_and_duplicates_do_not_matter():
    shuffled = [ANCHOR[i] for i in (3, 0, 5, 1, 4, 2)] + [ANCHOR[2]]
    assert bd_rate(ANCHOR, scaled(shuffled, 0.9)) == pytest.approx(-10.0, abs=1e-6)


def test_partial_overlap_uses_common_range():
    test = scaled(ANCHOR[2:], 0.8)  # covers only the upper part
    # (PCHIP end slopes of the shorter curve differ a little from the full one's)
    assert bd_rate(ANCHOR, test) == pytest.approx(-20.0, abs=0.1)
    assert bd_rate(ANCHOR[2:], test) == pytest.approx(-20.0, abs=1e-6)


def test_no_overlap_raises_clearly():
    low = [(0.1, 20.0), (0.2, 22.0)]
    with pytest.raises(NoOverlapError, match="do not overlap"):
        bd_rate(ANCHOR, low)
    with pytest.raises(ValueError):
        bd_rate(ANCHOR, [(0.5, 30.0)])  # one point
    with pytest.raises(ValueError):
        bd_rate(ANCHOR, ANCHOR, method="linear")


def test_table_markdown_and_json():
    curves = [
        RDCurve("JPEG", *zip(*ANCHOR)),
        RDCurve("Better", *zip(*scaled(ANCHOR, 0.9))),
        RDCurve("Disjoint", [0.01, 0.02], [10.0, 11.0]),
        RDCurve("JPEG", *zip(*scaled(ANCHOR, 1.0)), published=True),
    ]
    t = bd_table(curves)
    assert t.anchor == "JPEG"
    assert t.labels == ["JPEG", "Better", "Disjoint", "JPEG (published)"]
    entry = {e.test: e for e in t.vs_anchor}
    assert entry["Better"].bd_rate_pchip == pytest.approx(-10.0, abs=1e-6)
    assert entry["Better"].bd_rate_cubic == pytest.approx(-10.0, abs=1e-6)
    assert math.isnan(entry["Disjoint"].bd_rate_pchip)
    assert t.matrix["JPEG"]["Better"] == pytest.approx(100 / 0.9 - 100, abs=1e-6)
    md = t.to_markdown()
    assert "| Better | -10.0 % | -10.0 % |" in md and "n/a" in md and "no overlap" in md
    d = json.loads(t.to_json())
    assert d["anchor"] == "JPEG" and d["bd_rate_pchip_matrix"]["Disjoint"]["JPEG"] is None
    with pytest.raises(ValueError):
        bd_table(curves, anchor="nope")


REF = reference_dir()
needs_ref = pytest.mark.skipif(not (REF / "jpeg.json").is_file(), reason=f"no {REF}")


def _load(stem):
    with open(REF / f"{stem}.json") as f:
        return RDCurve.from_compressai_dict(json.load(f), published=True)


@needs_ref
def test_published_cheng2020_vs_jpeg():
    jpeg = _load("jpeg")
    cheng = _load("compressai-cheng2020-attn_mse_cpu")
    assert bd_rate(jpeg, cheng) == pytest.approx(-65.1, abs=0.5)
    assert bd_rate(_load("bpg_444_x265_ycbcr"), cheng) == pytest.approx(-17.6, abs=0.5)
    assert bd_rate(_load("vtm"), cheng) == pytest.approx(5.5, abs=0.5)
    paper = np.loadtxt(REF / "cheng2020-paper-gmm-attn_mse.dat")
    assert bd_rate(jpeg, [tuple(r) for r in paper]) == pytest.approx(-66.3, abs=0.5)


def test_gain_at_rate_joins_the_anchor_in_log_bpp():
    from lic.eval.bdrate import gain_at_rate

    anchor_bpp, anchor_q = [0.4, 0.1], [30.0, 26.0]            # unsorted on purpose
    assert gain_at_rate(0.2, 29.0, anchor_bpp, anchor_q) == pytest.approx(1.0)   # halfway in log-bpp: 28 dB
    assert gain_at_rate(0.4, 29.5, anchor_bpp, anchor_q) == pytest.approx(-0.5)
    assert math.isnan(gain_at_rate(0.05, 25.0, anchor_bpp, anchor_q))
    assert math.isnan(gain_at_rate(0.5, 31.0, anchor_bpp, anchor_q))


FIGURES = Path(__file__).resolve().parents[1] / "docs" / "figures"


@needs_ref
def test_committed_bd_table_is_remade_from_the_committed_curves():
    """docs/figures/kodak_bd_rate.md against JPEG (published): its rows for the lic curves whose
    JSON is committed beside it come out the same (to the table's 0.1 % / 0.01 dB) from
    lic.eval.bdrate, whose integrals are the bjontegaard package's."""
    from lic.eval.bdrate import _fmt, bd_entry

    rows = {}
    for line in (FIGURES / "kodak_bd_rate.md").read_text().split("\n\n### ")[0].splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("lic "):
            rows[cells[0]] = cells[1:4]
    jpeg = _load("jpeg")
    checked = 0
    for path in sorted(FIGURES.glob("kodak_lic_*.json")):
        curve = RDCurve.from_compressai_dict(json.loads(path.read_text()))
        if curve.name in rows:
            e = bd_entry(jpeg, curve)
            assert [_fmt(e.bd_rate_pchip), _fmt(e.bd_rate_cubic), _fmt(e.bd_psnr_pchip, "+.2f", " dB")] \
                == rows[curve.name], path.name
            checked += 1
    assert checked >= 2
