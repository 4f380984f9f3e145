"""evaluate.py end to end on a tiny model, the side-by-side figure, LicCodec builders, bit maps."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import KODAK, REPO, random_image, tiny_net
from lic import codec, container
from lic.eval.baselines import JPEG
from lic.eval.bitmap import BitMap, bit_map, hyper_bits
from lic.eval.datasets import read_pixels
from lic.eval.lic_codec import LicCodec
from lic.eval.metrics import RDCurve, psnr
from lic.eval.plot import side_by_side, side_by_side_rows
from lic.eval.runner import read_csv
from lic.weights import export, fingerprint, load_checkpoint


def loud_net(context: str = "checkerboard", num_modes: int = 1, seed: int = 0, gain: float = 10.0,
             lmbdas: tuple[float, ...] = ()):
    """A tiny untrained net whose latents carry information: g_a's last convolution scaled up.

    (An untrained tiny net maps every image to y ~ 0: every symbol 0, no bits, flat curves.)
    """
    net = tiny_net(context, num_modes=num_modes, seed=seed, lmbdas=lmbdas)
    with torch.no_grad():
        net.g_a[-2].weight.mul_(gain)
        net.g_a[-2].bias.mul_(gain)
    return net


def small_images(n: int = 2, h: int = 64, w: int = 96) -> dict[str, np.ndarray]:
    """``n`` small crops of Kodak (or generated stand-ins when ../shared is absent)."""
    out = {}
    for i in range(n):
        p = KODAK / f"kodim{i + 1:02d}.png"
        if p.exists():
            with Image.open(p) as im:
                out[f"kodim{i + 1:02d}"] = np.asarray(im.convert("RGB"))[200:200 + h, 300:300 + w].copy()
        else:
            out[f"gen{i + 1}"] = random_image(h, w, seed=i)
    return out


def run_evaluate(tmp: Path, checkpoints: list[Path], images: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", OMP_NUM_THREADS="1",
               WANDB_DIR=str(tmp), WANDB_CACHE_DIR=str(tmp / "wandb-cache"),
               WANDB_CONFIG_DIR=str(tmp / "wandb-config"), WANDB_DATA_DIR=str(tmp / "wandb-data"))
    ckpts = ",".join(f"'{p}'" for p in checkpoints)
    args = [sys.executable, str(REPO / "evaluate.py"), f"model.checkpoints=[{ckpts}]",
            f"dataset.path='{images}'", "dataset.name=tiny", "baselines=[jpeg]", "ms_ssim=false",
            "side_by_side.enabled=false", f"hydra.run.dir='{tmp / 'run'}'", "wandb.enabled=true",
            f"cache_dir='{tmp / 'cache'}'", *extra]
    r = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"evaluate.py failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory):
    """One evaluate.py run: a variable-rate tiny model (3 modes) and JPEG on two 64x96 images."""
    tmp = tmp_path_factory.mktemp("eval")
    ckpt = tmp / "tiny.safetensors"
    export(loud_net(num_modes=3), ckpt)
    folder = tmp / "images"
    folder.mkdir()
    images = small_images()
    for name, px in images.items():
        Image.fromarray(px).save(folder / f"{name}.png")
    r = run_evaluate(tmp, [ckpt], folder)
    return {"out": tmp / "run", "ckpt": ckpt, "images": images, "folder": folder, "stdout": r.stdout}


def _lic_json(out: Path) -> Path:
    (p,) = [p for p in out.glob("lic-*.json")]
    return p


@pytest.mark.slow
def test_per_image_csv_has_every_codec_setting_and_image(eval_run):
    out = eval_run["out"]
    records = read_csv(out / "per_image.csv")
    lic_name = json.loads(_lic_json(out).read_text())["name"]
    expected = {lic_name: [1.0, 2.0, 3.0], "JPEG": JPEG().settings}
    assert {r.codec for r in records} == set(expected)
    names = set(eval_run["images"])
    for cname, settings in expected.items():
        for s in settings:
            rows = [r for r in records if r.codec == cname and r.setting == s]
            assert sorted(r.image for r in rows) == sorted(names), (cname, s)
    assert len(records) == len(names) * sum(len(s) for s in expected.values())
    for r in records:
        assert (r.width, r.height) == (96, 64)
        assert r.bpp == 8.0 * r.bytes / (r.width * r.height)
        assert math.isfinite(r.psnr) and math.isnan(r.ms_ssim)
        assert r.encode_seconds >= 0 and r.decode_seconds >= 0
    # the raw file has the documented header
    with open(out / "per_image.csv", newline="") as f:
        assert next(csv.reader(f)) == ["codec", "setting", "image", "width", "height", "bytes", "bpp", "psnr",
                                       "ms_ssim", "encode_seconds", "decode_seconds"]


@pytest.mark.slow
def test_lic_json_follows_compressai_schema_and_counts_whole_files(eval_run):
    out = eval_run["out"]
    data = json.loads(_lic_json(out).read_text())
    assert set(data) >= {"name", "description", "results"}
    res = data["results"]
    assert set(res) >= {"bpp", "psnr-rgb"}
    for key, vals in res.items():
        assert len(vals) == 3, key
    assert res["ms-ssim-rgb"] == [None, None, None]          # ms_ssim=false: null, not NaN
    assert all(isinstance(v, float) and v > 0 for v in res["bpp"] + res["psnr-rgb"])
    assert data["settings"] == [1.0, 2.0, 3.0]
    assert res["bpp"] == sorted(res["bpp"]) and res["bpp"][0] < res["bpp"][-1]   # modes: rising rate
    RDCurve.from_compressai_dict(data)                       # loads back

    # bpp = mean over images of 8 * whole-file bytes / pixels, the file as encode.py writes it
    records = [r for r in read_csv(out / "per_image.csv") if r.codec == data["name"]]
    for i, mode in enumerate(data["settings"]):
        rs = [r for r in records if r.setting == mode]
        assert res["bpp"][i] == pytest.approx(np.mean([8.0 * r.bytes / (r.width * r.height) for r in rs]), rel=1e-12)
        assert res["psnr-rgb"][i] == pytest.approx(np.mean([r.psnr for r in rs]), rel=1e-12)
    net = load_checkpoint(eval_run["ckpt"])
    name = sorted(eval_run["images"])[0]
    pixels = read_pixels(eval_run["folder"] / f"{name}.png")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)             # as in the evaluate.py process (OMP_NUM_THREADS=1): the same y
    try:
        fresh = codec.encode_with_net(net, pixels, 2.0)
    finally:
        torch.set_num_threads(threads)
    (rec,) = [r for r in records if r.setting == 2.0 and r.image == name]
    h, w = pixels.shape[:2]
    assert rec.bytes == len(fresh)
    assert rec.bpp == 8.0 * len(fresh) / (h * w)
    assert rec.psnr == pytest.approx(psnr(pixels, codec.decode_with_net(net, fresh)), abs=1e-9)
    header, _ = container.unpack(fresh)
    assert header.fingerprint == fingerprint(net) and (header.mode, header.mode_frac) == (2, 0)

    jpeg = json.loads((out / "jpeg.json").read_text())
    assert jpeg["name"] == "JPEG" and len(jpeg["results"]["bpp"]) == len(JPEG().settings)


@pytest.mark.slow
def test_a_second_run_reuses_the_classical_results(eval_run):
    """evaluate.py again on the same images: JPEG's 19 x 2 results come from the record cache,
    the learned codec is coded again, and the per-image rows are the first run's."""
    tmp = eval_run["out"].parent
    r = run_evaluate(tmp, [eval_run["ckpt"]], eval_run["folder"], f"hydra.run.dir='{tmp / 'run2'}'",
                     "wandb.enabled=false")
    assert "38 classical-codec results reused, 0 coded" in r.stdout
    assert "0 classical-codec results reused, 38 coded" in eval_run["stdout"]

    def rows(run):
        with open(run / "per_image.csv") as f:
            return list(csv.DictReader(f))
    first, second = rows(eval_run["out"]), rows(tmp / "run2")
    assert [r for r in second if r["codec"] == "JPEG"] == [r for r in first if r["codec"] == "JPEG"]
    lic_times = [(r["encode_seconds"], r["decode_seconds"]) for r in first if r["codec"] != "JPEG"]
    assert lic_times
    assert lic_times != [(r["encode_seconds"], r["decode_seconds"]) for r in second if r["codec"] != "JPEG"]


@pytest.mark.slow
def test_refined_run_in_worker_processes_beside_an_earlier_curve(eval_run):
    """model.refine, workers and curves: a refining encoder coded in two processes, labelled as
    refined, with the first run's lic curve drawn and tabulated beside it."""
    tmp = eval_run["out"].parent
    ckpt = tmp / "tiny_lmbdas.safetensors"
    export(loud_net(num_modes=3, lmbdas=(0.001, 0.004, 0.016)), ckpt)
    earlier = _lic_json(eval_run["out"])
    run_evaluate(tmp, [ckpt], eval_run["folder"], f"hydra.run.dir='{tmp / 'run3'}'", "wandb.enabled=false",
                 "model.refine=2", "workers=2", f"curves=['{earlier}']")
    data = json.loads(_lic_json(tmp / "run3").read_text())
    # the default encoder also sends last-layer updates (model.adapt, lic.adapt): in the label too
    assert data["name"].endswith(", refined (2 steps), per-image last layer") and data["settings"] == [1.0, 2.0, 3.0]
    table = (tmp / "run3" / "bd_rate.md").read_text()
    assert json.loads(earlier.read_text())["name"] in table and data["name"] in table
    with open(tmp / "run3" / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 3 + 2 * 19            # every (codec, setting, image) once, from the workers


@pytest.mark.slow
def test_plots_bd_table_config_and_wandb(eval_run):
    out = eval_run["out"]
    for stem in ("rd_psnr", "rd_msssim"):
        with Image.open(out / f"{stem}.png") as im:
            im.verify()
        with Image.open(out / f"{stem}.png") as im:
            assert im.format == "PNG" and im.size == (800, 600)
        assert b"<svg" in (out / f"{stem}.svg").read_bytes()[:2000]
    md = (out / "bd_rate.md").read_text()
    assert "BD vs JPEG" in md and "lic" in md
    bd = json.loads((out / "bd_rate.json").read_text())
    assert bd  # parses
    assert (out / "config.yaml").is_file() and (out / ".hydra" / "config.yaml").is_file()
    assert not (out / "side_by_side.png").exists()
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb")), list((out / "wandb").iterdir())
    assert "bd.md:" in eval_run["stdout"]


# --------------------------------------------------------------------------- LicCodec builders


def test_from_checkpoints_single_rate_sweep(tmp_path):
    """Two single-rate models: modes 1 and 2, each file decoded by the model that wrote it."""
    nets = [loud_net(seed=0), loud_net(seed=1)]
    paths = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    for n, p in zip(nets, paths):
        export(n, p)
    c = LicCodec.from_checkpoints(paths)
    assert c.settings == [1.0, 2.0]
    fps = [c.models[1.0].fingerprint, c.models[2.0].fingerprint]
    assert fps == [fingerprint(load_checkpoint(p)) for p in paths] and fps[0] != fps[1]
    pixels = random_image(64, 96, seed=5)
    decoded = []
    for mode, p in zip((1.0, 2.0), paths):
        data = c.encode(pixels, mode)
        header = container.peek_header(data)
        assert header.mode == int(mode) and header.fingerprint == c.models[mode].fingerprint
        net = load_checkpoint(p)
        other = load_checkpoint(paths[1 - (int(mode) - 1)])
        out = c.decode(data)
        np.testing.assert_array_equal(out, codec.decode_with_net(net, data))
        with pytest.raises(codec.CodecError, match="fingerprint"):
            codec.decode_with_net(other, data)
        decoded.append(out)
    assert not np.array_equal(decoded[0], decoded[1])   # two different models did decode


def test_from_checkpoints_variable_rate(tmp_path):
    p = tmp_path / "vr.safetensors"
    export(tiny_net(num_modes=3), p)
    c = LicCodec.from_checkpoints([p])
    assert c.settings == [1.0, 2.0, 3.0]
    assert len({id(m.net) for m in c.models.values()}) == 1                  # one network serves every mode
    assert [(m.mode, m.mode_frac) for m in c.models.values()] == [(1, 0), (2, 0), (3, 0)]
    c = LicCodec.from_checkpoints([p], modes=[1.5, 3])
    assert c.settings == [1.5, 3.0] and (c.models[1.5].mode, c.models[1.5].mode_frac) == (1, 128)


# --------------------------------------------------------------------------- side by side


def test_side_by_side_with_tiny_codec(tmp_path):
    p = tmp_path / "tiny.safetensors"
    export(loud_net(), p)
    lic = LicCodec.from_checkpoints([p], name="tiny lic")
    images = {"Alpha": random_image(64, 96, seed=1), "Beta": random_image(64, 64, seed=2)}
    jpeg = JPEG(settings=[5, 20, 50, 80, 95])
    rows = side_by_side_rows(images, lic, 1.0, jpeg=jpeg)
    assert [r.title for r in rows] == ["Alpha", "Beta"]
    for row, px in zip(rows, images.values()):
        h, w = px.shape[:2]
        assert row.codec_name == "tiny lic"
        assert row.codec_bpp == 8.0 * len(lic.encode(px, 1.0)) / (h * w)
        assert row.codec_pixels.shape == px.shape and row.jpeg_pixels.shape == px.shape
        # JPEG at the quality whose size is closest to the learned codec's
        sizes = {q: 8.0 * len(jpeg.encode(px, q)) / (h * w) for q in jpeg.settings}
        best = min(sizes, key=lambda q: abs(sizes[q] - row.codec_bpp))
        assert row.jpeg_setting == best and row.jpeg_bpp == sizes[best]
    (png,) = side_by_side(rows, tmp_path / "sbs.png", panel_inches=2.0, dpi=50)
    with Image.open(png) as im:
        assert im.format == "PNG"
        assert im.size == (3 * 2 * 50, round(2 * (2.0 + 0.5) * 50))


# --------------------------------------------------------------------------- bit maps


def _y_stream_bits(data: bytes) -> tuple[float, float, int]:
    """(y payload bits: 8 * bytes minus the 4-byte support headers, z stream bits, number of y streams)."""
    _, streams = container.unpack(data)
    return sum(8 * len(s) - 32 for s in streams[1:]), 8 * len(streams[0]), len(streams) - 1


@pytest.mark.parametrize("context, num_modes, mode, size", [
    ("checkerboard", 1, 1.0, (128, 128)),
    ("checkerboard", 3, 2.5, (64, 96)),
    ("serial", 1, 1.0, (64, 64)),
])
def test_bit_map_sums_to_the_real_streams(context, num_modes, mode, size):
    net = loud_net(context, num_modes)
    pixels = random_image(*size, seed=7)
    bm = bit_map(net, pixels, mode)
    assert isinstance(bm, BitMap)
    h, w = size
    assert bm.y_bits.shape == (-(-h // 64) * 4, -(-w // 64) * 4) == bm.latent_shape
    assert bm.z_bits.shape == (-(-h // 64), -(-w // 64))
    assert bm.y_channel_bits.shape == (net.config.M,)
    assert bm.y_bits.dtype == np.float64 and (bm.y_bits >= 0).all()
    assert bm.y_channel_bits.sum() == pytest.approx(bm.y_total)
    data = codec.encode_with_net(net, pixels, mode)
    y_real, z_real, n_y = _y_stream_bits(data)
    assert y_real > 1000                                     # enough symbols for a 1 % check to mean something
    assert abs(bm.y_total - y_real) <= 0.01 * y_real, (bm.y_total, y_real)
    assert -8 <= y_real - bm.y_total <= 64 * n_y            # only the range coder's termination is missing
    assert 0 <= z_real - bm.z_total <= 64 + 32               # rANS: 64-bit final state, 32-bit words
    assert bm.bpp == pytest.approx((bm.y_total + bm.z_total) / (h * w))
    assert bm.mode == mode


def test_bit_map_tiled_and_hyper_bits():
    net = loud_net()
    pixels = random_image(130, 190, seed=3)          # 3 x 3 tiles of 64 (padded 192 x 192)
    bm = bit_map(net, pixels, tile_size=64)
    assert bm.y_bits.shape == (12, 12) and bm.z_bits.shape == (3, 3)
    assert (bm.y_bits.reshape(3, 4, 3, 4).sum(axis=(1, 3)) > 0).all()    # every tile filled in
    data = codec.encode_with_net(net, pixels, tile_size=64)
    _, streams = container.unpack(data)
    y_streams = [s for i, s in enumerate(streams) if i % 3]      # z, y anchors, y non-anchors per tile
    y_real = sum(8 * len(s) - 32 for s in y_streams)
    assert 0 <= y_real - bm.y_total <= 64 * len(y_streams)       # 18 small streams: termination only
    # per-tile z costs are CompressAI's table frequencies: a tile's z is under 1 word + the 64-bit state away
    x = codec.pad(torch.from_numpy(pixels[:64, :64]).permute(2, 0, 1)[None].float() / 255, net.downsampling)
    with torch.no_grad():
        zb = hyper_bits(net, net.h_a(net.g_a(x)))
    assert zb.shape == (net.config.N, 1, 1)
    assert 0 <= 8 * len(streams[0]) - zb.sum() <= 96


# ---------------------------------------------------------------------------- options that scale


def compose_eval(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose("eval", overrides=overrides)


def test_spread_keeps_the_ends_and_the_order():
    from lic.eval.run import spread

    s = list(range(5, 100, 5))                                   # JPEG's 19 qualities
    assert spread(s, 5) == [5, 25, 50, 75, 95]
    assert spread(s, None) == s and spread(s, 30) == s
    assert spread([10, 20, 30], 1) == [20]


def test_a_part_of_a_dataset_is_a_quick_look_unless_asked():
    from lic.eval.run import _baseline_settings, _side_by_side_wanted

    whole, part = compose_eval([]), compose_eval(["limit=2"])
    assert _baseline_settings(whole) is None and _side_by_side_wanted(whole)
    assert _baseline_settings(part) == 5 and not _side_by_side_wanted(part)
    asked = compose_eval(["limit=2", "baseline_settings=null", "side_by_side.enabled=true"])
    assert _baseline_settings(asked) is None and _side_by_side_wanted(asked)
    quick = compose_eval(["preset=quick"])
    assert (quick.limit, _baseline_settings(quick), quick.ms_ssim, quick.wandb.enabled) == (2, 5, False, False)
    assert compose_eval(["preset=quick", "limit=3"]).limit == 3      # the command line wins


def test_classical_codecs_alone_at_spread_settings_log_the_bd_table(tmp_path, caplog):
    """model.enabled=false: no learned codec (and no side-by-side figure); baseline_settings=3
    codes JPEG at 3 of its qualities; the BD table goes to the log (evaluate.log under Hydra)."""
    from lic.eval.run import run

    folder = tmp_path / "images"
    folder.mkdir()
    for name, px in small_images().items():
        Image.fromarray(px).save(folder / f"{name}.png")
    cfg = compose_eval(["model.enabled=false", "baselines=[jpeg,jpeg-opt]", "baseline_settings=3",
                        f"dataset.path='{folder}'", "dataset.name=tiny", "ms_ssim=false", "wandb.enabled=false",
                        "cache_dir=null", "side_by_side.enabled=true", f"paths.output_dir='{tmp_path / 'run'}'"])
    with caplog.at_level("INFO", logger="lic.eval.run"):
        result = run(cfg)
    assert [c.name for c in result.curves] == ["JPEG", "JPEG (optimize)"]
    assert result.curves[0].settings == [5, 50, 95]
    assert not (tmp_path / "run" / "side_by_side.png").exists()
    assert "### BD vs JPEG" in caplog.text and "JPEG (optimize)" in caplog.text
