"""Every registered architecture (lic.models): the registry, a bit-exact round trip through the
.lic container, decoding under 1 and 2 threads, corrupt files, CompressAI's checkpoints in."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, TINY_CONFIGS, decode_under_threads, random_image, tiny_model
from lic import codec, container, io, models
from lic.models.base import decoder_threads

ARCHS = sorted(TINY_CONFIGS)
# the CompressAI architectures whose forward (eval) rounds y as the coder does; the autoregressive
# ones round y there but y - mean in the coder (CompressAI's convention, lic.models.compressai_coding)
AUTOREGRESSIVE = {"mbt2018", "cheng2020-anchor", "cheng2020-attn"}


def _own_reconstruction(net, pixels: np.ndarray, forward: bool) -> np.ndarray:
    """What the decoder must output: g_s of the latent the encoder coded (``forward``: the model's
    forward in eval mode instead), on the decoder's threads, cropped."""
    h, w = pixels.shape[:2]
    x = codec.pad(io.to_tensor(pixels), net.downsampling)
    rate = net.rate_of(None)
    with torch.no_grad(), decoder_threads():
        x_hat = net(x).x_hat if forward else net.synthesize(net.encode_latent(net.analyze(x, rate), rate).y_hat, rate)
    return io.from_tensor(x_hat[:, :, :h, :w])


def test_every_container_architecture_is_registered_with_a_config():
    archs = {m.arch for m in container.MODELS.values()}
    assert set(models.ARCHITECTURES) == archs == set(TINY_CONFIGS)
    for name, cls in models.ARCHITECTURES.items():
        assert cls.arch == name
        cfg = yaml.safe_load((REPO / "configs" / "model" / f"{name}.yaml").read_text())
        assert cfg["defaults"][0] == "_lit"
        module, _, attr = cfg["model"]["_target_"].rpartition(".")
        assert getattr(sys.modules[module], attr) is cls, name


def test_register_refuses_an_architecture_without_a_model_id():
    with pytest.raises(ValueError, match="no model id"):
        @models.register("not-in-the-container")
        class Nope(models.LicModel):
            pass


def test_python_m_lic_models_lists_the_registry():
    r = subprocess.run([sys.executable, "-m", "lic.models"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    for name in models.ARCHITECTURES:
        row = next(line for line in lines if line.startswith(name + " "))
        assert f"configs/model/{name}.yaml" in row
    assert "yes    yes" in next(line for line in lines if line.startswith("cheng2020-gmm "))   # refine, adapt


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("size", [(64, 64), (37, 70)])
def test_round_trip_is_bit_exact(arch, size):
    net = tiny_model(arch)
    pixels = random_image(*size, seed=3)
    data = codec.encode_with_net(net, pixels)
    header, streams = container.unpack(data)
    assert header.model_id == net.model_id and header.model.arch == arch
    assert len(streams) == header.streams_per_tile == len(net.format.streams)
    assert header.latent_channels == net.latent_channels
    out = codec.decode_with_net(net, data)
    assert out.shape == pixels.shape
    np.testing.assert_array_equal(out, _own_reconstruction(net, pixels, forward=False))
    if arch not in AUTOREGRESSIVE:
        np.testing.assert_array_equal(out, _own_reconstruction(net, pixels, forward=True))


@pytest.mark.parametrize("arch", ARCHS)
def test_decoding_under_one_and_two_threads_gives_the_same_pixels(arch):
    net = tiny_model(arch, seed=1)
    pixels = random_image(64, 128, seed=4)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        data = codec.encode_with_net(net, pixels)      # encoded on one thread, decoded on one and two
    finally:
        torch.set_num_threads(before)
    one, two = decode_under_threads(net, data)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(one, _own_reconstruction(net, pixels, forward=False))


@pytest.mark.parametrize("arch", ARCHS)
def test_tiled_round_trip(arch):
    """Tiles of 64: each tile its own streams, the padding of the model at the image's edges."""
    net = tiny_model(arch, seed=2)
    pixels = random_image(100, 70, seed=5)
    data = codec.encode_with_net(net, pixels, tile_size=64)
    header, streams = container.unpack(data)
    assert header.tile_size == 64 and len(streams) == 4 * header.streams_per_tile
    out = codec.decode_with_net(net, data)
    for top, left, th, tw in codec.tile_grid(100, 70, 64, net.downsampling):
        tile = pixels[top:top + th, left:left + tw]
        np.testing.assert_array_equal(out[top:top + th, left:left + tw], _own_reconstruction(net, tile, forward=False))


# ------------------------------------------------------------------ corrupt files, for every architecture

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each architecture's tiny model exported, and a file it made of a 70x100 image."""
    from lic.weights import export

    d = tmp_path_factory.mktemp("archs")
    out = {}
    for arch in ARCHS:
        net = tiny_model(arch, seed=6)
        path = d / f"{arch}.safetensors"
        export(net, path)
        data = codec.encode_with_net(net, random_image(70, 100, seed=7))
        out[arch] = (path, data)
    return out


def _mutations(data: bytes):
    """(what, file): streams cut, extended, emptied, swapped and replaced, each file resealed (a valid
    CRC: only the stream checks can catch them)."""
    header, streams = container.unpack(data)
    rng = np.random.default_rng(0)
    picks = sorted({0, 1, len(streams) - 1} & set(range(len(streams))))
    for i in picks:
        s = streams[i]
        for what, new in [("cut by a word", s[:-4]), ("cut to 3 bytes", s[:3]), ("a zero word more", s + bytes(4)),
                          ("empty", b""), ("random bytes", rng.integers(0, 256, len(s), dtype=np.uint8).tobytes()),
                          ("a byte flipped", s[:len(s) // 2] + bytes([s[len(s) // 2] ^ 0x5A]) + s[len(s) // 2 + 1:])]:
            yield f"stream {i} {what}", container.pack(header, streams[:i] + [new] + streams[i + 1:])
    if len(streams) > 1:
        yield "streams swapped", container.pack(header, streams[::-1])
    yield "a stream missing", container.pack(header, streams[:-1])
    yield "file truncated", data[:-9]


@pytest.mark.parametrize("arch", ARCHS)
def test_corrupt_files_exit_3_with_one_line(arch, exported, tmp_path, capsys):
    from lic.cli import decode_main

    path, data = exported[arch]
    good = tmp_path / "good.lic"
    good.write_bytes(data)
    assert decode_main([str(good), "-o", str(tmp_path / "good.png"), "--checkpoint", str(path)]) == 0
    capsys.readouterr()
    outcomes = {}
    for what, bad in _mutations(data):
        src = tmp_path / "bad.lic"
        src.write_bytes(bad)
        (tmp_path / "bad.png").unlink(missing_ok=True)
        rc = decode_main([str(src), "-o", str(tmp_path / "bad.png"), "--checkpoint", str(path)])
        err = capsys.readouterr().err.splitlines()
        outcomes[what] = rc
        if rc != 0:
            assert rc == 3 and len(err) == 1 and err[0].startswith("lic-decode: error: "), (what, rc, err)
            assert not (tmp_path / "bad.png").exists()
    # cheng2020-gmm's range-coded y streams (constriction's) have no end check: one cut by a word or
    # with a flipped byte may decode, to other pixels (tests/test_fuzz.py covers them; the CRC comes
    # first in any case); every stream CompressAI's rANS coder wrote is checked to its end
    lenient = {w for w in outcomes if arch == "cheng2020-gmm" and not w.startswith("stream 0 ")
               and w.endswith(("random bytes", "a byte flipped", "a zero word more", "cut by a word"))}
    assert {w: rc for w, rc in outcomes.items() if w not in lenient} == dict.fromkeys(set(outcomes) - lenient, 3)


# ------------------------------------------------------------------ CompressAI's checkpoints in

def _compressai_net(arch: str):
    """CompressAI's own class for ``arch`` at the tiny config, freshly initialised, tables updated."""
    from compressai import models as cm

    cfg = TINY_CONFIGS[arch]
    make = {"bmshj2018-factorized": lambda: cm.FactorizedPrior(cfg["N"], cfg["M"]),
            "bmshj2018-factorized-relu": lambda: cm.FactorizedPriorReLU(cfg["N"], cfg["M"]),
            "bmshj2018-hyperprior": lambda: cm.ScaleHyperprior(cfg["N"], cfg["M"]),
            "mbt2018-mean": lambda: cm.MeanScaleHyperprior(cfg["N"], cfg["M"]),
            "mbt2018": lambda: cm.JointAutoregressiveHierarchicalPriors(cfg["N"], cfg["M"]),
            "cheng2020-anchor": lambda: cm.Cheng2020Anchor(cfg["N"]),
            "cheng2020-attn": lambda: cm.Cheng2020Attention(cfg["N"]),
            "elic2022-official": lambda: cm.Elic2022Official(cfg["N"], cfg["M"])}[arch]
    torch.manual_seed(11)
    net = make().eval()
    net.update(force=True)
    return net


@pytest.mark.parametrize("arch", [a for a in ARCHS if a != "cheng2020-gmm"])
def test_export_from_compressai_state_dict(arch, tmp_path, capsys):
    """A CompressAI state dict (as its zoo's .pth.tar files hold) becomes lic weights of the same
    network: the same forward, and files that decode bit-exactly."""
    from lic.export import main
    from lic.weights import load_safetensors

    ref = _compressai_net(arch)
    src = tmp_path / "compressai.pth.tar"
    torch.save(ref.state_dict(), src)
    out = tmp_path / "w" / f"{arch}.safetensors"
    assert main(["--from-compressai", str(src), "--arch", arch, "--lmbda", "0.0067", "-o", str(out), "--register"]) == 0
    entry = __import__("json").loads(capsys.readouterr().out)
    assert entry["arch"] == arch and entry["modes"] == [1] and entry["config"]["lmbdas"] == [0.0067]
    assert entry["trained"] == {"source": "compressai", "file": src.name, "lambda": 0.0067}
    net, meta = load_safetensors(out)
    assert meta["lic_arch"] == arch and net.config == type(net).Config(**TINY_CONFIGS[arch], lmbdas=(0.0067,))
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(net(x).x_hat, ref(x)["x_hat"], rtol=0, atol=0)
    pixels = random_image(64, 64, seed=8)
    np.testing.assert_array_equal(codec.decode_with_net(net, codec.encode_with_net(net, pixels)),
                                  _own_reconstruction(net, pixels, forward=False))


def test_export_from_compressai_refuses_what_it_cannot_read(tmp_path, capsys):
    from lic.export import main

    ref = _compressai_net("mbt2018-mean")
    src = tmp_path / "mbt.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}, "epoch": 3}, src)
    out = tmp_path / "w.safetensors"
    assert main(["--from-compressai", str(src), "--arch", "mbt2018-mean", "-o", str(out)]) == 0   # examples/train.py's
    capsys.readouterr()
    assert main(["--from-compressai", str(src), "--arch", "bmshj2018-hyperprior", "-o", str(out)]) == 1   # wrong arch
    assert main(["--from-compressai", str(src), "--arch", "cheng2020-gmm", "-o", str(out)]) == 1   # not CompressAI's
    assert main(["--from-compressai", str(tmp_path / "missing.pth"), "--arch", "mbt2018", "-o", str(out)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all(line.startswith("lic.export: error: ") for line in err), err
    with pytest.raises(SystemExit):
        main(["--from-compressai", str(src), "-o", str(out)])     # no --arch: a usage error


# ------------------------------------------------------------------ training every architecture

CONFIG_DIR = REPO / "configs"


@pytest.fixture(scope="module")
def image_dirs(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    for name, n, seed in (("train", 4, 0), ("val", 2, 100)):
        (root / name).mkdir()
        for i in range(n):
            Image.fromarray(random_image(64, 64, seed=seed + i)).save(root / name / f"{i}.png")
    return root


def _train_overrides(arch: str, image_dirs, out) -> list[str]:
    sizes = [f"model.model.{k}={v}" for k, v in TINY_CONFIGS[arch].items()]
    # one step and one validation (fast_dev_run would write no checkpoint)
    return [f"model={arch}", *sizes, "lambda=0.01", "trainer.max_steps=1", "trainer.val_check_interval=1",
            "trainer.limit_val_batches=1", "data.crop=64", "data.val_crop=64",
            "data.batch_size=2", "data.val_batch_size=1", f"data.train_dir={image_dirs / 'train'}",
            f"data.val_dir={image_dirs / 'val'}", "model.val_real_images=1", "threads=1", "logger=csv",
            "trainer.enable_model_summary=false", f"paths.output_dir={out}"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_every_architecture_trains_through_the_lightning_loop(arch, image_dirs, tmp_path, monkeypatch):
    """train.py model=ARCH for one step: one step, one validation with real bitstreams; the
    quantiles get their aux gradient; the checkpoint names the architecture and loads back."""
    from hydra import compose, initialize_config_dir

    from lic.training.run import train
    from lic.weights import load_checkpoint

    monkeypatch.setenv("WANDB_MODE", "offline")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=_train_overrides(arch, image_dirs, tmp_path))
    metrics = train(cfg)
    assert metrics["train/aux_loss"] > 0 and np.isfinite(metrics["train/loss"])
    assert metrics["val/bpp"] > 0                      # real bytes of a .lic file
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["lic_arch"] == arch and ckpt["hyper_parameters"]["model"]["arch"] == arch
    net = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert net.arch == arch and net.lmbdas == (() if net.num_modes > 1 else (0.01,))


def test_the_module_optimises_every_entropy_bottleneck_with_the_aux_loss():
    """CompressAI's convention: the quantiles of every entropy bottleneck (ELIC's is nested in its
    latent codec) in their own parameter group at aux_lr, everything else in the model's."""
    from lic.training.module import LitCodec

    for arch in ("bmshj2018-factorized", "elic2022-official"):
        module = LitCodec(tiny_model(arch), lmbda=0.01, optimizer={"lr": 1e-4, "aux_lr": 1e-3})
        main, aux = module.configure_optimizers()["optimizer"].param_groups
        quantiles = [p for n, p in module.net.named_parameters() if n.endswith(".quantiles")]
        assert len(quantiles) == 1 and aux["params"] == quantiles and aux["lr"] == 1e-3
        assert len(main["params"]) == sum(1 for _ in module.net.parameters()) - 1


@pytest.mark.slow
def test_a_registered_model_goes_through_train_export_encode_decode_evaluate(image_dirs, tmp_path):
    """The worked example of docs/models.md (bmshj2018-factorized-relu) through the entry points:
    train.py (one step), python -m lic.export --register, encode.py --model, decode.py, evaluate.py."""
    env = dict(__import__("os").environ, WANDB_MODE="offline", WANDB_SILENT="true", OMP_NUM_THREADS="1",
               LIC_WEIGHTS_DIR=str(tmp_path / "weights"), WANDB_DIR=str(tmp_path))
    env.pop("LIC_CHECKPOINT", None)

    def run(*args: str) -> subprocess.CompletedProcess:
        r = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"{args[0]} failed:\n{r.stderr[-3000:]}"
        return r

    arch = "bmshj2018-factorized-relu"
    run("train.py", *_train_overrides(arch, image_dirs, tmp_path / "run"))
    weights = tmp_path / "weights" / "toy.safetensors"
    run("-m", "lic.export", str(tmp_path / "run" / "checkpoints" / "last.ckpt"), "-o", str(weights), "--register")
    src, lic, png = image_dirs / "val" / "0.png", tmp_path / "x.lic", tmp_path / "x.png"
    run("encode.py", str(src), "-o", str(lic), "--model", arch)
    header, _ = container.unpack(lic.read_bytes())
    assert header.model_name == arch and header.height == header.width == 64
    run("decode.py", str(lic), "-o", str(png))
    from lic.weights import load_safetensors

    net, _ = load_safetensors(weights)
    from PIL import Image

    with Image.open(png) as im:
        np.testing.assert_array_equal(np.asarray(im), codec.decode_with_net(net, lic.read_bytes()))
    r = run("evaluate.py", f"model.checkpoints=['{weights}']", f"dataset.path='{image_dirs / 'val'}'",
            "dataset.name=toy", "baselines=[]", "references=none", "ms_ssim=false", "side_by_side.enabled=false",
            "wandb.enabled=false", "cache_dir=null", f"hydra.run.dir='{tmp_path / 'eval'}'")
    rows = (tmp_path / "eval" / "per_image.csv").read_text().splitlines()
    assert len(rows) == 3 and all(arch in row for row in rows[1:]), rows
    bpp = float(rows[1].split(",")[rows[0].split(",").index("bpp")])
    assert bpp > 0 and "rd_psnr.png" in r.stdout


# ------------------------------------------------------------------ the encoder strategies on other models

def test_refine_runs_on_any_model_that_exposes_a_differentiable_rate():
    from lic.refine import RefineConfig, refine_latent

    net = tiny_model("bmshj2018-hyperprior", lmbdas=(0.01,))
    assert models.can_refine(net) and not models.can_refine(tiny_model("mbt2018-mean"))
    pixels = random_image(64, 64, seed=9)
    x = codec.pad(io.to_tensor(pixels), net.downsampling)
    with torch.no_grad():
        y = net.analyze(x)
    r = refine_latent(net, x, y, None, 0.01, RefineConfig(steps=40, check_every=5, lr=2.0, proxy="ste"))
    assert r.cost <= r.cost_start and r.best_step > 0          # an untrained model leaves room
    data = codec.encode_with_net(net, pixels, refine=RefineConfig(steps=40, check_every=5, lr=2.0, proxy="ste"))
    with torch.no_grad(), decoder_threads():
        want = io.from_tensor(net.synthesize(net.encode_latent(r.y).y_hat))
    np.testing.assert_array_equal(codec.decode_with_net(net, data), want)
    with pytest.raises(ValueError, match="cannot refine"):
        codec.encode_with_net(tiny_model("mbt2018-mean", lmbdas=(0.01,)), pixels, refine=RefineConfig(steps=2))


def test_adapt_runs_on_any_model_whose_synthesis_ends_in_a_subpixel_convolution():
    from lic import adapt

    net = tiny_model("cheng2020-anchor", lmbdas=(0.05,))
    assert models.can_adapt(net) and not models.can_adapt(tiny_model("bmshj2018-hyperprior"))
    pixels = random_image(128, 128, seed=10)
    plain = codec.encode_with_net(net, pixels)
    data = codec.encode_with_net(net, pixels, adapt_layer=True)
    h, streams = container.unpack(data)
    assert h.version == 3 and h.has_update and streams[:-1] == container.unpack(plain)[1]
    last = adapt.updated_layer(net, adapt.decode_update(streams[-1], tuple(adapt.shipped_matrix(net).shape)))
    with torch.no_grad(), decoder_threads():
        want = io.from_tensor(net.synthesize(net.decode_latent(streams[:-1], (128, 128)), None, last))
    out = codec.decode_with_net(net, data)
    np.testing.assert_array_equal(out, want)
    err = [float(np.mean((a.astype(float) - pixels) ** 2)) for a in (out, codec.decode_with_net(net, plain))]
    assert err[0] < err[1]
    # a model without the capability is never sent one, and refuses a file that carries one
    other = tiny_model("bmshj2018-hyperprior", lmbdas=(0.05,))
    assert container.unpack(codec.encode_with_net(other, pixels, adapt_layer=True))[0].version == 2
    h2, s2 = container.unpack(codec.encode_with_net(other, pixels))
    forged = container.pack(__import__("dataclasses").replace(h2, version=3, flags=1), s2 + [streams[-1]])
    with pytest.raises(codec.CodecError, match="cannot apply"):
        codec.decode_with_net(other, forged)


def test_encode_py_says_what_a_model_cannot_do(exported, tmp_path, capsys):
    from PIL import Image

    from lic.cli import encode_main

    src = tmp_path / "x.png"
    Image.fromarray(random_image(40, 60)).save(src)
    path, _ = exported["mbt2018-mean"]
    out = tmp_path / "x.lic"
    assert encode_main([str(src), "-o", str(out), "--checkpoint", str(path)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == ["lic: note: the mbt2018-mean model has no per-image update of its last layer (lic.adapt); "
                   "encoding without it"]
    assert encode_main([str(src), "-o", str(out), "--checkpoint", str(path), "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    out.unlink()
    assert encode_main([str(src), "-o", str(out), "--checkpoint", str(path), "--refine", "5"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["lic-encode: error: the mbt2018-mean model cannot refine its latent (--refine)"]
    assert not out.exists()
    assert encode_main([str(src), "-o", str(out), "--checkpoint", str(path), "--model", "mbt2018"]) == 2
    assert "holds model mbt2018-mean, not mbt2018" in capsys.readouterr().err


@pytest.mark.parametrize("arch", ["bmshj2018-factorized", "elic2022-official"])
def test_decode_info_names_each_models_streams(arch):
    from lic.cli import describe

    net = tiny_model(arch)
    data = codec.encode_with_net(net, random_image(64, 64))
    report = describe(data, "x.lic")
    assert f"model:    {net.format.name}, mode 1" in report
    streams = next(line for line in report.splitlines() if line.startswith("streams:"))
    assert streams.startswith(f"streams:  {len(net.format.streams)} (")
    labels = __import__("re").findall(r"[(,] (\w+) [\d,]+ B", streams.replace("(", "( ", 1))
    assert labels == list(net.format.streams), streams
