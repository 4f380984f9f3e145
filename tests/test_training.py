"""Tests for the training framework: train.py / Hydra configs, LitCodec, resume, sweeps, DDP,
loggers, export (lic.export) and the weights registry.

Every run is tiny (N=8, 64x64 crops, batch 2, a few steps, one thread) on generated images in
tmp folders.  Most runs are in-process (Hydra's compose API + lic.training.run.train: the
imports are paid once); the sweep, DDP and CLI tests run subprocesses.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"

# tiny sizes: N=8, 64x64 crops (= the generated images: the crops are fixed), batch 2
TINY = ["model.model.N=8", "model.val_real_images=1", "data.crop=64", "data.val_crop=64",
        "data.batch_size=2", "data.val_batch_size=2", "data.train_limit=4", "data.val_limit=2",
        "trainer.limit_val_batches=1", "trainer.log_every_n_steps=1", "trainer.enable_model_summary=false",
        "threads=1", "logger=csv"]


# ------------------------------------------------------------------ fixtures and helpers

def _image(seed: int, size: int = 64) -> np.ndarray:
    """A smooth colour pattern with a little noise: compressible, unlike pure noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    chans = [np.sin(2 * np.pi * (rng.uniform(0.5, 2) * xx + rng.uniform(0, 1.5) * yy) + rng.uniform(0, 6))
             for _ in range(3)]
    img = (np.stack(chans, -1) * 0.4 + 0.5) * 255 + rng.normal(0, 4, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def data_dirs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("data")
    train, val = root / "train", root / "val"
    train.mkdir()
    val.mkdir()
    for i in range(4):
        Image.fromarray(_image(i)).save(train / f"t{i}.png")
    for i in range(2):
        Image.fromarray(_image(100 + i)).save(val / f"v{i}.png")
    return train, val


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path_factory):
    """Offline wandb, one thread, no shipped weights touched, in every test and its subprocesses."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(home / var.lower()))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PROJECT_ROOT", str(ROOT))
    monkeypatch.setenv("LIC_WEIGHTS_DIR", str(home / "weights"))
    monkeypatch.delenv("LIC_CHECKPOINT", raising=False)


def _data(data_dirs) -> list[str]:
    train, val = data_dirs
    return [f"data.train_dir={train}", f"data.val_dir={val}"]


def compose(overrides: list[str], hydra_config: bool = False):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose("train", overrides=overrides, return_hydra_config=hydra_config)


def train_inprocess(out: Path, data_dirs, overrides: list[str]) -> dict:
    """train.py's body on a composed config; the run's folder is ``out``."""
    from lic.training.run import train

    cfg = compose([*TINY, *_data(data_dirs), f"paths.output_dir={out}", *overrides])
    return train(cfg)


def run_train_py(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=timeout, env=dict(os.environ))
    assert r.returncode == 0, f"train.py failed ({r.returncode}):\n{r.stderr[-4000:]}"
    return r


def load_ckpt(path: Path) -> dict:
    import torch

    return torch.load(str(path), map_location="cpu", weights_only=True)


def csv_metrics(out: Path, key: str) -> list[tuple[int, float]]:
    """(step, value) of one metric from the CSV logger of the run in ``out``."""
    (path,) = (out / "csv").glob("version_*/metrics.csv")
    rows = []
    with open(path) as f:
        for row in csv.DictReader(f):
            if row.get(key):
                rows.append((int(row["step"]), float(row[key])))
    return rows


def adam_steps(ckpt: dict) -> set[int]:
    return {int(s["step"]) for s in ckpt["optimizer_states"][0]["state"].values()}


# ------------------------------------------------------------------ training runs

def test_fast_dev_run_trains_and_validates(tmp_path, data_dirs):
    metrics = train_inprocess(tmp_path, data_dirs, ["debug=fast_dev_run"])
    for key in ("train/loss", "train/bpp_est", "val/loss", "val/bpp_est", "val/psnr", "val/bpp", "val/psnr_real"):
        assert key in metrics and np.isfinite(metrics[key]), (key, metrics)
    assert metrics["val/bpp"] > 0   # a real bitstream was written and decoded
    assert (tmp_path / "config.yaml").exists()


@pytest.mark.slow
def test_overfit_one_batch_lowers_rd_loss(tmp_path, data_dirs):
    train_inprocess(tmp_path, data_dirs, ["debug=overfit", "trainer.max_steps=30", "optimizer.lr=1e-3"])
    losses = [v for _, v in csv_metrics(tmp_path, "train/loss")]
    assert len(losses) == 30
    initial, final = losses[0], float(np.mean(losses[-3:]))
    print(f"overfit: RD loss {initial:.2f} -> {final:.2f}")
    assert final < 0.7 * initial, f"RD loss {initial:.2f} -> {final:.2f}"


@pytest.mark.slow
def test_resume_continues_step_optimizer_and_stats(tmp_path, data_dirs):
    every2 = ["callbacks.model_checkpoint.every_n_train_steps=2", "trainer.val_check_interval=2"]
    run1, run2 = tmp_path / "run1", tmp_path / "run2"
    train_inprocess(run1, data_dirs, [*every2, "trainer.max_steps=4"])
    c1 = load_ckpt(run1 / "checkpoints" / "last.ckpt")
    assert c1["global_step"] == 4 and adam_steps(c1) == {4}
    s1 = c1["lic_train_stats"]
    assert (s1["steps"], s1["images_seen"], s1["pixels_seen"]) == (4, 8, 8 * 64 * 64)
    assert s1["device"] == "cpu" and s1["world_size"] == 1 and s1["counted_from_step"] == 0
    assert s1["train_seconds"] > 0

    train_inprocess(run2, data_dirs, [*every2, "trainer.max_steps=6",
                                      f"ckpt_path={run1 / 'checkpoints' / 'last.ckpt'}"])
    c2 = load_ckpt(run2 / "checkpoints" / "last.ckpt")
    assert c2["global_step"] == 6                       # 6, not 4 + 6
    assert adam_steps(c2) == {6}                        # Adam's moments resumed (a fresh one says 2)
    assert c2["lr_schedulers"][0]["last_epoch"] == 6    # the schedule too
    assert min(step for step, _ in csv_metrics(run2, "train/loss")) >= 4
    s2 = c2["lic_train_stats"]
    assert (s2["steps"], s2["images_seen"], s2["pixels_seen"]) == (6, 12, 12 * 64 * 64)
    assert s2["train_seconds"] > s1["train_seconds"]    # accumulated across the resume


@pytest.mark.slow
def test_resume_from_checkpoint_without_stats(tmp_path, data_dirs):
    """A checkpoint from before lic_train_stats: counts estimated, counted_from_step says so."""
    import torch

    run1, run2 = tmp_path / "run1", tmp_path / "run2"
    train_inprocess(run1, data_dirs, ["trainer.max_steps=2", "trainer.val_check_interval=2"])
    ckpt = load_ckpt(run1 / "checkpoints" / "last.ckpt")
    del ckpt["lic_train_stats"]
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    train_inprocess(run2, data_dirs, ["trainer.max_steps=3", "trainer.val_check_interval=1", f"ckpt_path={old}"])
    s = load_ckpt(run2 / "checkpoints" / "last.ckpt")["lic_train_stats"]
    assert (s["steps"], s["images_seen"], s["counted_from_step"]) == (3, 6, 2)


def test_variable_rate_trains(vr_run):
    out, metrics = vr_run
    ckpt = load_ckpt(out / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 2
    assert json.loads(ckpt["lic_model_config"])["num_modes"] == 6
    for q in (1, 3, 6):   # lowest, middle, highest mode are validated
        assert np.isfinite(metrics[f"val/loss_q{q}"]) and metrics[f"val/bpp_q{q}"] > 0


@pytest.fixture(scope="module")
def vr_run(tmp_path_factory, data_dirs):
    out = tmp_path_factory.mktemp("vr")
    env = {"WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PROJECT_ROOT": str(ROOT)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        metrics = train_inprocess(out, data_dirs, ["model=cheng2020_vr", "trainer.max_steps=2",
                                                   "trainer.val_check_interval=2"])
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return out, metrics


@pytest.mark.slow
def test_export_default_mode_is_the_encoders_default(tmp_path, vr_run):
    """--default-mode goes into the registry; encoding without a mode uses it; a mode the model
    lacks is refused before anything is written."""
    from lic.weights import DEFAULT_MODE, default_mode, default_mode_of, load_model

    out, _ = vr_run
    wdir = Path(os.environ["LIC_WEIGHTS_DIR"])
    w = wdir / "vr-default-mode.safetensors"
    cmd = [sys.executable, "-m", "lic.export", str(out / "checkpoints" / "last.ckpt"), "-o", str(w),
           "--register", "--default"]
    r = subprocess.run([*cmd, "--default-mode", "7"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "not a mode" in r.stderr and not w.exists()
    r = subprocess.run([*cmd, "--default-mode", "2"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["default_mode"] == 2.0 != DEFAULT_MODE
    assert default_mode() == 2.0
    assert load_model().mode == 2 and load_model(mode=5).mode == 5
    # an entry without default_mode: DEFAULT_MODE, within the entry's modes
    assert default_mode_of({"modes": [1, 2, 3, 4, 5, 6]}) == DEFAULT_MODE
    assert default_mode_of({"modes": [1, 2]}) == 2.0 and default_mode_of({"modes": [5]}) == 5.0


@pytest.mark.slow
def test_wandb_offline_writes_run_folder(tmp_path, data_dirs):
    import wandb

    try:
        train_inprocess(tmp_path, data_dirs, ["logger=wandb", "trainer.max_steps=1", "trainer.limit_val_batches=0"])
    finally:
        wandb.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list(tmp_path.rglob("*"))[:20]
    assert list(runs[0].glob("*.wandb")), "no run log in the offline run folder"


@pytest.mark.slow
def test_multirun_sweep_two_modes(tmp_path, data_dirs):
    """Hydra multirun over two qualities: one run and one checkpoint per mode."""
    sweep = tmp_path / "sweep"
    # quality/*.yaml set N: the command-line N=8 wins over them (overrides apply after the defaults)
    run_train_py(["-m", "quality=q1,q2", *TINY, *_data(data_dirs), "trainer.max_steps=1",
                  "trainer.limit_val_batches=0", f"hydra.sweep.dir={sweep}"])
    lambdas = []
    for job in ("0", "1"):
        ckpt = load_ckpt(sweep / job / "checkpoints" / "last.ckpt")
        assert ckpt["global_step"] == 1
        assert ckpt["hyper_parameters"]["model"]["N"] == 8
        lambdas.append(ckpt["hyper_parameters"]["lmbda"])
    assert lambdas == [0.0016, 0.0032]


def test_quality_configs_need_no_quoting():
    """``train.py quality=q2`` composes as written; the quality sets lambda and N, not the run's folder."""
    r = run_train_py(["quality=q2", "--cfg", "job", "--resolve"], timeout=120)
    assert "lambda: 0.0032" in r.stdout and "task_name: train" in r.stdout
    cfg = compose(["quality=q4"])
    assert cfg["lambda"] == 0.015 and cfg.model.model.N == 192
    cfg = compose(["quality=q4", "loss=ms-ssim"])   # the loss's own lambda for the quality
    assert cfg["lambda"] == 16.64


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path, data_dirs):
    """Lightning DDP over gloo with 2 CPU processes runs two steps (Lightning relaunches train.py)."""
    out = tmp_path / "ddp"
    run_train_py(["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", *TINY, *_data(data_dirs),
                  "trainer.max_steps=2", "trainer.val_check_interval=2", f"hydra.run.dir={out}"])
    ckpt = load_ckpt(out / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 2
    s = ckpt["lic_train_stats"]
    assert s["world_size"] == 2 and s["images_seen"] == 2 * 2 * 2   # steps x batch x processes
    assert (out / "train_ddp_process_1.log").exists()   # the second process ran (Lightning's relaunch)


def test_slurm_launcher_config():
    cfg = compose(["hydra/launcher=submitit_slurm", "trainer=gpu"], hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.gpus_per_node == 1 and launcher.tasks_per_node == 1
    try:
        from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
    except ImportError:
        return   # the optional extra (pip install .[slurm]) is not installed: the file alone composes
    import dataclasses

    fields = {f.name for f in dataclasses.fields(SlurmQueueConf)}
    assert set(launcher.keys()) <= fields, set(launcher.keys()) - fields


# ------------------------------------------------------------------ export and the registry

def _fake_checkpoint(path: Path, num_modes: int = 1, lmbda: float | None = 0.0075, stats: dict | None = None,
                     nan: bool = False) -> None:
    """A lic training checkpoint without training: a fresh N=8 model and the keys Lightning writes."""
    import torch

    from lic.models.cheng2020 import Cheng2020GMM, ModelConfig

    cfg = {"N": 8, "num_modes": num_modes}
    if num_modes > 1:
        cfg["lmbdas"] = [0.001 * (i + 1) for i in range(num_modes)]
    net = Cheng2020GMM(ModelConfig.from_dict(cfg))
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    if nan:
        k = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
        state[k] = state[k].clone()
        state[k].view(-1)[0] = float("nan")
    ckpt = {"global_step": 10, "epoch": 1, "state_dict": state, "pytorch-lightning_version": "2.x",
            "lic_model_config": json.dumps(net.config.to_dict()),
            "hyper_parameters": {"model": net.config.to_dict(), "lmbda": lmbda, "lr": 1e-4},
            "datamodule_hyper_parameters": {"batch_size": 4, "crop": 32}}
    if stats is not None:
        ckpt["lic_train_stats"] = stats
    torch.save(ckpt, path)


def test_export_facts_and_registry_updates(tmp_path):
    from lic.export import main
    from lic.weights import read_registry, sha256_file

    wdir = Path(os.environ["LIC_WEIGHTS_DIR"])
    a, b = tmp_path / "a.ckpt", tmp_path / "b.ckpt"
    _fake_checkpoint(a)   # no lic_train_stats: estimated from steps x batch
    stats = {"steps": 10, "images_seen": 80, "pixels_seen": 80 * 32 * 32, "train_seconds": 12.5,
             "device": "cuda:NVIDIA H100", "world_size": 2, "counted_from_step": 0}
    _fake_checkpoint(b, num_modes=6, lmbda=None, stats=stats)

    assert main([str(a), "-o", str(wdir / "a.safetensors"), "--register"]) == 0
    (e,) = read_registry()
    assert e["file"] == "a.safetensors" and e["default"] is False
    assert e["modes"] == [3]   # lambda 0.0075 is quality 3
    assert e["sha256"] == sha256_file(wdir / "a.safetensors")
    t = e["trained"]
    assert (t["steps"], t["images_seen"], t["pixels_seen"], t["estimated"]) == (10, 40, 40 * 32 * 32, True)
    assert t["train_seconds"] is None and t["lambda"] == 0.0075 and t["checkpoint"] == "a.ckpt"

    assert main([str(b), "-o", str(wdir / "b.safetensors"), "--register", "--default", "--half"]) == 0
    ea, eb = read_registry()
    assert (ea["default"], eb["default"]) == (False, True)
    assert eb["modes"] == [1, 2, 3, 4, 5, 6] and eb["half"] is True
    assert {k: eb["trained"][k] for k in stats} == stats and eb["trained"]["estimated"] is False

    # re-export a over its file: replaced in place, b stays the default
    assert main([str(a), "-o", str(wdir / "a.safetensors"), "--register", "--mode", "5"]) == 0
    ea, eb = read_registry()
    assert [ea["file"], eb["file"]] == ["a.safetensors", "b.safetensors"]
    assert ea["modes"] == [5] and eb["default"] is True

    # the training facts travel inside the weights file too
    from safetensors import safe_open
    with safe_open(str(wdir / "b.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["lic_trained"])["images_seen"] == 80


def test_export_refuses_bad_checkpoints(tmp_path, capsys):
    from lic.export import main

    bad = tmp_path / "nan.ckpt"
    _fake_checkpoint(bad, nan=True)
    assert main([str(bad), "-o", str(tmp_path / "x.safetensors")]) == 1
    assert "non-finite" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    assert main([str(junk), "-o", str(tmp_path / "x.safetensors")]) == 1
    assert main([str(tmp_path / "missing.ckpt"), "-o", str(tmp_path / "x.safetensors")]) == 1
    assert not list(tmp_path.glob("*.safetensors")) and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.slow
def test_export_round_trips_with_encode_decode_and_registry(tmp_path, vr_run, data_dirs):
    """Trained checkpoint -> python -m lic.export --register -> encode.py / decode.py -> same pixels,
    and lic.weights.load_model(mode=..) finds the registered model."""
    from lic import codec
    from lic.weights import fingerprint, load_checkpoint, load_model, read_registry

    out, _ = vr_run
    wdir = Path(os.environ["LIC_WEIGHTS_DIR"])
    weights = wdir / "vr-tiny.safetensors"
    r = subprocess.run([sys.executable, "-m", "lic.export", str(out / "checkpoints" / "last.ckpt"),
                        "-o", str(weights), "--register", "--default"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    entry = json.loads(r.stdout)
    assert entry["default"] is True and entry["trained"]["steps"] == 2 and entry["trained"]["images_seen"] == 4
    assert read_registry() == [entry]

    img = tmp_path / "img.png"
    Image.fromarray(_image(7, 72)[:, :70]).save(img)   # not a multiple of 64: padding and cropping
    lic_file, png = tmp_path / "x.lic", tmp_path / "y.png"
    for tool, args in (("encode.py", [str(img), "-o", str(lic_file), "-q", "2"]),
                       ("decode.py", [str(lic_file), "-o", str(png)])):
        r = subprocess.run([sys.executable, str(ROOT / tool), *args, "--checkpoint", str(weights)], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"{tool}: {r.stderr}"
    decoded = np.asarray(Image.open(png).convert("RGB"))
    assert decoded.shape == (72, 70, 3)

    data = lic_file.read_bytes()
    net = load_checkpoint(weights)
    assert np.array_equal(codec.decode_with_net(net, data), decoded)   # the CLI and the library agree

    loaded = load_model(mode=2)   # through the registry in LIC_WEIGHTS_DIR, sha256 checked
    assert loaded.fingerprint == entry["fingerprint"] == fingerprint(net)
    assert loaded.mode == 2 and loaded.source == str(weights)
    assert np.array_equal(codec.decode_with_net(loaded.net, data), decoded)


def test_crops_are_exact_and_writable(tmp_path):
    """A crop the size of the image (no copy needed for layout) must still be a writable copy:
    torch warns on tensors over read-only numpy memory (np.asarray of a PIL image)."""
    import warnings

    from lic.training.datamodule import CachedImages

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    ds = CachedImages([tmp_path / "a.png"], crop=32, train=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = ds[0]
    assert x.shape == (3, 32, 32)
    assert np.array_equal((x * 255).round().byte().permute(1, 2, 0).numpy(), img)


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml")))
def test_every_experiment_config_builds_its_model(experiment):
    """Each configs/experiment/*.yaml composes and instantiates its LitCodec; the shipped default's
    recipes have the widths the docs give them."""
    from hydra.utils import instantiate

    cfg = compose([f"experiment={experiment}"])
    module = instantiate(cfg.model, loss=cfg.loss.metric, optimizer=cfg.optimizer, scheduler=cfg.scheduler,
                         _convert_="all")
    c = module.net.config
    assert c.num_modes == len(c.lmbdas) if c.num_modes > 1 else c.num_modes == 1
    widths = {"gpu_vr_m192": (64, 192, 64), "gpu_vr_m192s160": (64, 192, 160), "gpu_vr": (64, 64, 64)}
    if experiment in widths:
        assert (c.N, c.M, c.N_s) == widths[experiment]
