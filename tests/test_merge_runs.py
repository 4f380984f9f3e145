"""lic.eval.merge_runs (one evaluation from a whole run and a run of some of its modes) and
lic.eval.rd_per_mode (per-mode differences from a run's files)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from lic.eval import merge_runs, rd_per_mode

FIELDS = ["codec", "setting", "image", "width", "height", "bytes", "bpp", "psnr", "ms_ssim",
          "encode_seconds", "decode_seconds"]


def _run(folder: Path, rows: list[tuple[str, float, str, float, float]]) -> Path:
    folder.mkdir()
    with open(folder / "per_image.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(FIELDS)
        for codec, setting, image, bpp, db in rows:
            w.writerow([codec, setting, image, 64, 64, int(bpp * 64 * 64 / 8), bpp, db, 0.9, 1.0, 0.1])
    return folder


def _merge(argv: list[str]) -> None:
    merge_runs.main(argv)


def test_the_named_modes_come_from_the_second_run_and_the_rest_from_the_first(tmp_path):
    images = ["a", "b"]
    whole = _run(tmp_path / "whole", [("lic x", m, i, 0.1 * m, 25.0 + m) for m in (1, 2, 3) for i in images]
                 + [("JPEG", q, i, 0.1 * q, 24.0 + q) for q in (1, 2, 3, 4) for i in images])
    part = _run(tmp_path / "part", [("lic y", 3.0, i, 0.32, 29.0) for i in images])
    _merge([str(whole), str(part), "--out", str(tmp_path / "merged")])
    with open(tmp_path / "merged" / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    lic = {(float(r["setting"]), r["image"]): float(r["psnr"]) for r in rows if r["codec"] == "lic y"}
    assert lic == {(1.0, "a"): 26.0, (1.0, "b"): 26.0, (2.0, "a"): 27.0, (2.0, "b"): 27.0,
                   (3.0, "a"): 29.0, (3.0, "b"): 29.0}
    assert not any(r["codec"] == "lic x" for r in rows)
    assert sum(r["codec"] == "JPEG" for r in rows) == 8
    assert (tmp_path / "merged" / "rd_psnr.png").is_file()


def test_runs_of_other_images_are_refused(tmp_path):
    whole = _run(tmp_path / "whole", [("lic x", 1.0, "a", 0.1, 26.0)])
    part = _run(tmp_path / "part", [("lic x", 1.0, "b", 0.1, 26.0)])
    with pytest.raises(SystemExit, match="same images"):
        _merge([str(whole), str(part), "--out", str(tmp_path / "merged")])


def _curve(path: Path, name: str, bpp: list[float], db: list[float]) -> None:
    # as a run with ms_ssim=false writes it: MS-SSIM null at every point
    path.write_text(json.dumps({"name": name, "results": {"bpp": bpp, "psnr-rgb": db,
                                                          "ms-ssim-rgb": [None] * len(bpp)}}))


def test_rd_per_mode_prints_the_gain_at_each_modes_rate(tmp_path, capsys):
    run, earlier = tmp_path / "run", tmp_path / "earlier"
    run.mkdir()
    earlier.mkdir()
    _curve(run / "lic-x.json", "lic x", [0.1, 0.2, 0.4], [26.0, 28.0, 30.0])
    _curve(run / "jpeg.json", "JPEG", [0.2, 0.8], [25.0, 31.0])
    _curve(earlier / "lic-w.json", "lic w", [0.1, 0.2, 0.4], [25.5, 27.5, 29.5])
    assert rd_per_mode.main([str(run), "--against", str(earlier)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2:4] == ["| bpp | 0.100 | 0.200 | 0.400 |", "| PSNR RGB (dB) | 26.00 | 28.00 | 30.00 |"]
    # JPEG at 0.4 bpp, joined linearly in log-bpp between (0.2, 25) and (0.8, 31): 28 dB
    assert out[4] == "| PSNR (dB) vs jpeg | (below) | +3.00 | +2.00 |"
    assert out[5].startswith("| PSNR (dB) vs lic-w (") and out[5].endswith("| +0.50 | +0.50 | +0.50 |")
    assert any(line.startswith("BD-rate (PSNR) vs ") for line in out)
    assert not any("MS-SSIM" in line for line in out)                  # not measured: no rows
