"""RD plots, reference loaders and the side-by-side figure."""

import math

import numpy as np
import pytest
from PIL import Image

from lic.eval.baselines import JPEG
from lic.eval.datasets import reference_dir
from lic.eval.metrics import RDCurve
from lic.eval.plot import (
    DEFAULT_REFERENCES,
    load_dat,
    load_reference_curves,
    load_reference_json,
    plot_rd,
    rd_figure,
    side_by_side,
    side_by_side_rows,
    side_by_side_standard,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def curves():
    return [
        RDCurve("Ours", [0.2, 0.5, 1.0], [29.0, 32.0, 35.0], ms_ssim=[0.95, 0.975, 0.99]),
        RDCurve("JPEG", [0.3, 0.8, 2.0], [26.0, 31.0, 36.0], ms_ssim=[0.9, 0.96, 0.985],
                published=True),
        RDCurve("paper", [0.1, 0.4], [28.0, 33.0], published=True),  # no MS-SSIM
    ]


def test_plot_rd_writes_png_of_expected_size_and_svg(tmp_path):
    files = plot_rd(curves(), tmp_path / "rd_psnr.png")
    assert [p.name for p in files] == ["rd_psnr.png", "rd_psnr.svg"]
    png = (tmp_path / "rd_psnr.png").read_bytes()
    assert png[:8] == PNG_SIGNATURE
    with Image.open(tmp_path / "rd_psnr.png") as im:
        im.verify()
    with Image.open(tmp_path / "rd_psnr.png") as im:
        assert im.format == "PNG" and im.size == (800, 600)
    assert b"<svg" in (tmp_path / "rd_psnr.svg").read_bytes()[:2000]

    plot_rd(curves(), tmp_path / "small", metric="ms-ssim", figsize=(4, 3), dpi=50, formats=["png"])
    with Image.open(tmp_path / "small.png") as im:
        assert im.size == (200, 150)


def test_styles_and_labels():
    fig = rd_figure(curves(), metric="psnr")
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
    assert set(lines) == {"Ours", "JPEG (published)", "paper (published)"}
    assert lines["Ours"].get_linestyle() == "-"
    assert lines["JPEG (published)"].get_linestyle() == "--"
    # MS-SSIM plot leaves out the curve without MS-SSIM, in dB by default
    fig = rd_figure(curves(), metric="ms-ssim")
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
    assert set(lines) == {"Ours", "JPEG (published)"}
    assert lines["Ours"].get_ydata()[0] == pytest.approx(-10 * math.log10(0.05))
    with pytest.raises(ValueError):
        rd_figure(curves(), metric="vmaf")


def test_plot_without_data_still_writes(tmp_path):
    c = RDCurve("tiny", [1.0, 2.0], [30.0, 33.0], ms_ssim=[math.nan, math.nan])
    (p,) = plot_rd([c], tmp_path / "empty", metric="ms-ssim", formats=["png"])
    assert p.read_bytes()[:8] == PNG_SIGNATURE


def test_load_dat(tmp_path):
    f = tmp_path / "curve.dat"
    f.write_text("0.1 28.0\n0.25\t31.5\n")
    c = load_dat(f)
    assert c.bpp == [0.1, 0.25] and c.psnr == [28.0, 31.5] and c.published
    assert c.label == "curve (published)"


REF = reference_dir()


@pytest.mark.skipif(not REF.is_dir(), reason="no ../shared/reference")
def test_load_published_references():
    jpeg = load_reference_json(REF / "jpeg.json")
    assert jpeg.name == "JPEG" and len(jpeg.bpp) == 19 and len(jpeg.ms_ssim) == 19
    assert jpeg.label == "JPEG (published)"
    refs = load_reference_curves()
    assert len(refs) == len(DEFAULT_REFERENCES) and all(c.published for c in refs)
    gmm = [c for c in refs if "GMM" in c.name]
    assert len(gmm) == 1 and gmm[0].bpp[0] == pytest.approx(0.098115338)
    assert len(load_reference_curves(None)) == len(list(REF.glob("*.json"))) + len(
        list(REF.glob("*.dat"))
    )
    with pytest.raises(FileNotFoundError):
        load_reference_curves(["nope"])


def test_side_by_side(tmp_path):
    y, x = np.mgrid[0:48, 0:48]
    images = {
        name: np.stack([(x * k) % 256, (y * 3) % 256, ((x + y) * k) % 256], -1).astype(np.uint8)
        for name, k in (("Lena", 2), ("Peppers", 3), ("Baboon", 5))
    }
    rows = side_by_side_rows(images, JPEG(settings=[30]), 30, jpeg=JPEG(settings=[10, 30, 90]))
    assert [r.title for r in rows] == ["Lena", "Peppers", "Baboon"]
    assert all(r.jpeg_setting == 30 for r in rows)  # same codec: closest bpp is the same q
    assert rows[0].codec_bpp == pytest.approx(rows[0].jpeg_bpp)
    (p,) = side_by_side(rows, tmp_path / "side.png", panel_inches=2.0, dpi=40)
    with Image.open(p) as im:
        assert im.format == "PNG" and im.size == (240, 300)


STANDARD = reference_dir().parents[1] / "data" / "standard"


@pytest.mark.skipif(not STANDARD.is_dir(), reason="no ../shared/data/standard")
def test_side_by_side_standard(tmp_path):
    (p,) = side_by_side_standard(JPEG(), 20, tmp_path / "sbs", names=("peppers", "baboon"),
                                 panel_inches=1.0, dpi=40)
    with Image.open(p) as im:
        assert im.size == (120, 120)  # 3 x 1.0 in, 2 x 1.5 in (a title line more), at 40 dpi
