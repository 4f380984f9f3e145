"""Tests for the training loop's parts: losses, optimizers (SOAP), schedules, EMA, the validation
split, the checkpoint policy, exact resume, the sweep folder, the loggers and the dashboards.

Tiny runs as in test_training.py (whose helpers and fixtures this module uses): N=8, 64x64 crops
(192x192 for MS-SSIM), batch 2, a few steps, one thread.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# _env (autouse: offline wandb, one thread, no shipped weights touched) and data_dirs are fixtures
from test_training import (  # noqa: F401
    TINY,
    _data,
    _env,
    _image,
    compose,
    csv_metrics,
    data_dirs,
    load_ckpt,
    run_train_py,
    train_inprocess,
)

NO_LOGGER = [a for a in TINY if not a.startswith("logger=")]


def _lrs(out: Path) -> list[tuple[int, float, float]]:
    """(step, model lr, quantiles lr) from the CSV logger (LearningRateMonitor)."""
    main = dict(csv_metrics(out, next(k for k in _csv_keys(out) if k.endswith("/pg1"))))
    aux = dict(csv_metrics(out, next(k for k in _csv_keys(out) if k.endswith("/pg2"))))
    return [(s, main[s], aux[s]) for s in sorted(main)]


def _csv_keys(out: Path) -> list[str]:
    (path,) = (out / "csv").glob("version_*/metrics.csv")
    return path.read_text().splitlines()[0].split(",")


@pytest.fixture(scope="module")
def big_dirs(tmp_path_factory) -> Path:
    """A train folder of six 192x192 images (MS-SSIM needs crops of 161+ pixels)."""
    train = tmp_path_factory.mktemp("big") / "train"
    train.mkdir()
    for i in range(6):
        Image.fromarray(_image(200 + i, 192)).save(train / f"b{i}.png")
    return train


# ------------------------------------------------------------------ losses

def test_rd_loss_mse_and_ms_ssim_conventions():
    from pytorch_msssim import ms_ssim

    from conftest import tiny_net
    from lic.training.losses import rate_distortion_loss

    net = tiny_net().train()
    torch.manual_seed(0)
    x = torch.rand(2, 3, 192, 192)
    out = net(x)
    bpp = out.bits() / (192 * 192)
    mse = (out.x_hat - x).pow(2).flatten(1).mean(1)
    rd = rate_distortion_loss(out, x, 0.01, "mse")
    torch.testing.assert_close(rd.loss, (0.01 * 255**2 * mse + bpp).mean())
    assert rd.ms_ssim is None
    lm = torch.tensor([2.4, 60.5])   # a variable-rate batch: one lambda per image
    rd = rate_distortion_loss(out, x, lm, "ms-ssim")
    msssim = ms_ssim(out.x_hat, x, data_range=1.0, size_average=False)
    torch.testing.assert_close(rd.loss, (lm * (1 - msssim) + bpp).mean())
    torch.testing.assert_close(rd.ms_ssim, msssim.mean())
    with pytest.raises(ValueError, match="161"):
        rate_distortion_loss(net(x[..., :64, :64]), x[..., :64, :64], 2.4, "ms-ssim")
    with pytest.raises(ValueError, match="loss metric"):
        rate_distortion_loss(out, x, 0.01, "ssim")


def test_ms_ssim_loss_trains(tmp_path, big_dirs):
    metrics = train_inprocess(tmp_path, (big_dirs, big_dirs), [
        "loss=ms-ssim", "data.val_dir=null", "data.val_count=2", "data.crop=192", "data.val_crop=192",
        "trainer.max_steps=2", "trainer.val_check_interval=2"])
    for k in ("train/ms_ssim", "val/ms_ssim", "val/loss", "val/bpp"):
        assert np.isfinite(metrics[k]), k
    assert 0 < metrics["val/ms_ssim"] < 1
    assert load_ckpt(tmp_path / "checkpoints" / "last.ckpt")["hyper_parameters"]["lmbda"] == 8.73


# ------------------------------------------------------------------ optimizers

def test_soap_converges_on_a_toy_problem_and_its_state_round_trips(tmp_path):
    """SOAP fits a small conv + bias regression, and resuming its state from a file continues exactly."""
    from lic.training.optim import build_optimizer

    torch.manual_seed(0)
    x = torch.randn(16, 4, 8, 8)
    target = torch.nn.Conv2d(4, 6, 3, padding=1)(x).detach()

    def make():
        torch.manual_seed(1)
        net = torch.nn.Conv2d(4, 6, 3, padding=1)
        return net, build_optimizer(net, {"name": "soap", "lr": 3e-2, "aux_lr": 0.0, "weight_decay": 0.0,
                                         "precondition_frequency": 5})

    def step(net, opt):
        opt.zero_grad()
        loss = (net(x) - target).pow(2).mean()
        loss.backward()
        opt.step()
        return float(loss)

    net, opt = make()
    losses = [step(net, opt) for _ in range(150)]
    assert losses[-1] < 1e-3 * losses[0], (losses[0], losses[-1])
    assert type(opt).__name__ == "SOAP"

    net, opt = make()
    for _ in range(12):
        step(net, opt)
    torch.save({"net": net.state_dict(), "opt": opt.state_dict()}, tmp_path / "soap.pt")
    unbroken = [step(net, opt) for _ in range(8)]
    saved = torch.load(tmp_path / "soap.pt", weights_only=True)
    net2, opt2 = make()
    net2.load_state_dict(saved["net"])
    opt2.load_state_dict(saved["opt"])
    assert [step(net2, opt2) for _ in range(8)] == unbroken
    assert torch.equal(net2.weight, net.weight)


@pytest.mark.parametrize("optimizer", ["adamw", "soap"])
def test_optimizer_trains(tmp_path, data_dirs, optimizer):
    train_inprocess(tmp_path, data_dirs, [f"optimizer={optimizer}", "optimizer.lr=1e-3", "trainer.max_steps=4",
                                          "trainer.val_check_interval=4"])
    ck = load_ckpt(tmp_path / "checkpoints" / "last.ckpt")
    assert ck["hyper_parameters"]["optimizer"]["name"] == optimizer
    assert ck["optimizer_states"][0]["param_groups"][1]["weight_decay"] == 0.0   # never on the quantiles
    losses = [v for _, v in csv_metrics(tmp_path, "train/loss")]
    assert len(losses) == 4 and all(np.isfinite(losses))


# ------------------------------------------------------------------ schedules

def test_schedule_factors():
    from lic.training.optim import cosine_factor, multistep_factor

    drops: list[int] = []
    f = multistep_factor([3], 0.5, 2, drops)
    assert [f(s) for s in range(5)] == [0.5, 1.0, 1.0, 0.5, 0.5]
    drops.append(4)   # a budget milestone reached at step 4
    assert f(4) == 0.25
    c = cosine_factor(total_steps=6, warmup_steps=2, min_factor=0.1)
    assert [round(c(s), 6) for s in (0, 1, 2, 4, 6, 9)] == [0.5, 1.0, 1.0, 0.55, 0.1, 0.1]


@pytest.mark.parametrize("scheduler", ["multistep", "cosine", "plateau"])
def test_schedule_runs(tmp_path, data_dirs, scheduler):
    extra = {"multistep": ["scheduler.milestones=[2]", "scheduler.gamma=0.5"],
             "cosine": ["scheduler.warmup_steps=2", "scheduler.total_steps=4", "scheduler.min_factor=0.0"],
             "plateau": ["scheduler.patience=0", "scheduler.factor=0.5", "scheduler.threshold=10.0"]}[scheduler]
    # plateau: a threshold of 1000 % counts no validation as an improvement: the LR halves after each one
    train_inprocess(tmp_path, data_dirs, [f"scheduler={scheduler}", *extra, "trainer.max_steps=5",
                                          "trainer.val_check_interval=1", "optimizer.lr=1e-3",
                                          "model.val_real_images=0"])
    lrs = _lrs(tmp_path)
    assert {aux for _, _, aux in lrs} == {1e-3}   # the quantiles keep their rate
    main = [round(m / 1e-3, 6) for _, m, _ in lrs]
    expected = {"multistep": [1, 1, 0.5, 0.5, 0.5], "cosine": [0.5, 1, 1, 0.5, 0],
                "plateau": [1, 0.5, 0.25, 0.125, 0.0625]}
    assert main == expected[scheduler], main


def test_training_values_are_handed_over_on_the_logger_steps_only(tmp_path, data_dirs):
    # the training step hands its values to Lightning only on the steps its logger writes
    # (every log_every_n_steps): a step off, and the logger would write no training values at all
    train_inprocess(tmp_path, data_dirs, ["trainer.max_steps=6", "trainer.log_every_n_steps=3",
                                          "trainer.limit_val_batches=0", "model.val_real_images=0"])
    losses = csv_metrics(tmp_path, "train/loss")
    assert [s for s, _ in losses] == [2, 5]
    assert [s for s, _ in csv_metrics(tmp_path, "train/psnr")] == [2, 5]


def test_plateau_steps_once_per_validation():
    from lic.models.cheng2020 import Cheng2020GMM
    from lic.training.module import LitCodec

    module = LitCodec(Cheng2020GMM(N=8), lmbda=0.01, scheduler={"name": "plateau", "patience": 0, "factor": 0.5})
    sched = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    module._val_step = 10
    for _ in range(3):   # the same validation's loss seen at three steps: one step of the schedule
        module.lr_scheduler_step(sched, 1.0)
    assert sched.num_bad_epochs == 0 and sched.last_epoch == 1
    module._val_step = 20
    module.lr_scheduler_step(sched, 2.0)
    assert sched.optimizer.param_groups[0]["lr"] == 0.5e-4


# ------------------------------------------------------------------ EMA

def test_ema_callback_averages_and_swaps():
    from lic.training.ema import EMA

    class Trainer:
        global_step, sanity_checking = 0, False

    module = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        module.weight.fill_(0.0)
    ema, trainer = EMA(decay=0.5), Trainer()
    ema.on_train_start(trainer, module)
    for step, w in ((1, 4.0), (2, 8.0)):
        with torch.no_grad():
            module.weight.fill_(w)
        trainer.global_step = step
        ema.on_train_batch_end(trainer, module, None, None, 0)
    assert float(ema.shadow["weight"][0, 0]) == 0.5 * (0.5 * 0 + 0.5 * 4) + 0.5 * 8   # 5.0
    ema.on_validation_epoch_start(trainer, module)
    assert float(module.weight[0, 0]) == 5.0
    ema.on_validation_epoch_end(trainer, module)
    assert float(module.weight[0, 0]) == 8.0
    with pytest.raises(ValueError):
        EMA(decay=1.0)


def test_ema_is_validated_checkpointed_and_exported(tmp_path, data_dirs):
    from lic.export import export_checkpoint
    from lic.weights import load_safetensors

    train_inprocess(tmp_path, data_dirs, ["ema.decay=0.5", "trainer.max_steps=3", "trainer.val_check_interval=3"])
    ck = load_ckpt(tmp_path / "checkpoints" / "last.ckpt")
    assert ck["lic_train_stats"]["ema_decay"] == 0.5
    train_w, avg_w = ck["lic_train_weights"], ck["state_dict"]
    assert set(train_w) < set(avg_w) and all(k in avg_w for k in train_w)
    name = "net.g_a.0.conv1.weight"
    assert not torch.equal(train_w[name], avg_w[name])
    entry = export_checkpoint(tmp_path / "checkpoints" / "last.ckpt", tmp_path / "ema.safetensors")
    assert entry["trained"]["ema_decay"] == 0.5
    net, _ = load_safetensors(tmp_path / "ema.safetensors")
    assert torch.equal(net.state_dict()["g_a.0.conv1.weight"], avg_w[name])   # the average is what is exported


# ------------------------------------------------------------------ validation split

def test_validation_split_is_held_out_of_the_training_folder(tmp_path):
    from lic.training.datamodule import ImageDataModule, held_out, list_images

    train = tmp_path / "train"
    for sub in ("a", "b"):
        (train / sub).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(_image(i, 16)).save(train / sub / f"{i}.png")
    files = list_images(train)
    tr, val = held_out(files, train, 3)
    assert len(val) == 3 and not set(tr) & set(val) and sorted(tr + val) == files
    assert set(held_out(files[::-1], train, 3)[1]) == set(val)   # whatever the listing order
    dm = ImageDataModule(str(train), val_count=3)
    assert dm.split() == (tr, val)
    with pytest.raises(ValueError, match="all"):
        held_out(files, train, 10)
    # the default: held out of the training folder, never Kodak
    cfg = compose([])
    assert cfg.data.val_dir is None and cfg.data.val_count > 0 and "kodak" not in json.dumps(
        dict(cfg.data), default=str)


# ------------------------------------------------------------------ checkpoints

def test_checkpoint_policy_last_k_and_best(tmp_path, data_dirs):
    train_inprocess(tmp_path, data_dirs, ["trainer.max_steps=5", "trainer.val_check_interval=1",
                                          "model.val_real_images=0", "callbacks.model_checkpoint.every_n_train_steps=1",
                                          "callbacks.model_checkpoint.save_top_k=2"])
    ckpts = tmp_path / "checkpoints"
    names = sorted(p.name for p in ckpts.iterdir())
    best = [n for n in names if n.startswith("best-")]
    assert len(best) == 1 and names == sorted(["last.ckpt", "step0000004.ckpt", "step0000005.ckpt", *best]), names
    assert (ckpts / "last.ckpt").is_symlink() and (ckpts / "last.ckpt").resolve().name == "step0000005.ckpt"
    vals = dict(csv_metrics(tmp_path, "val/loss"))
    best_step = load_ckpt(ckpts / best[0])["global_step"]
    assert vals[best_step - 1] == min(vals.values())   # Lightning logs step s's validation at s - 1


# ------------------------------------------------------------------ exact resume

@pytest.mark.slow
@pytest.mark.parametrize("recipe", [[], ["optimizer=soap", "ema.decay=0.9"]], ids=["adam", "soap+ema"])
def test_resume_is_exact(tmp_path, big_dirs, recipe):
    """Stop at step 3 and resume to 6 == an unbroken run to 6: weights, optimizer state, EMA.

    Four training images in batches of 2 (two held out for validation): step 3 stops in the middle
    of the second epoch, and the crops and flips of the resumed run are drawn as the unbroken run's.
    """
    common = [*recipe, "data.val_dir=null", "data.val_count=2", "trainer.val_check_interval=3",
              "callbacks.model_checkpoint.every_n_train_steps=3", "model.val_real_images=1"]
    data = (big_dirs, big_dirs)
    train_inprocess(tmp_path / "unbroken", data, [*common, "trainer.max_steps=6"])
    train_inprocess(tmp_path / "first", data, [*common, "trainer.max_steps=3"])
    first = tmp_path / "first" / "checkpoints" / "last.ckpt"
    assert load_ckpt(first)["global_step"] == 3
    train_inprocess(tmp_path / "resumed", data, [*common, "trainer.max_steps=6", f"ckpt_path={first}"])
    a = load_ckpt(tmp_path / "unbroken" / "checkpoints" / "last.ckpt")
    b = load_ckpt(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 6
    keys = ["state_dict"] + (["lic_train_weights"] if "ema.decay=0.9" in recipe else [])
    for key in keys:
        for name, t in a[key].items():
            assert torch.equal(t, b[key][name]), (key, name)
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        for k, v in sa.items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, sb[k]), k
    losses_a = dict(csv_metrics(tmp_path / "unbroken", "train/loss"))
    losses_b = dict(csv_metrics(tmp_path / "resumed", "train/loss"))
    assert {s: losses_a[s] for s in losses_b} == losses_b and set(losses_b) == {3, 4, 5}


def test_data_order_depends_on_seed_epoch_and_position_only():
    from lic.training.datamodule import EpochSampler

    def keys(**kw):
        s = EpochSampler(10, seed=7, **kw)
        s.set_epoch(2)
        return list(s)

    full = keys()
    assert full == keys() and sorted(i for i, _ in full) == list(range(10))
    ranks = [keys(rank=r, world_size=2) for r in (0, 1)]
    assert sorted(ranks[0] + ranks[1]) == sorted(full) and len(ranks[0]) == 5
    s = EpochSampler(10, seed=7)
    s.set_epoch(2)
    s.resume(2, 4)
    assert list(s) == full[4:] and list(s) == full   # the skip applies once
    other = EpochSampler(10, seed=7)
    assert list(other) != full   # epoch 0


# ------------------------------------------------------------------ sweeps, loggers, dashboards

def _sweep_folders(log_dir: Path) -> list[Path]:
    return sorted(p for p in log_dir.rglob("multirun.yaml"))


@pytest.mark.slow
def test_quality_sweep_writes_one_folder(tmp_path, data_dirs):
    """``train.py -m quality=q1,q2`` (no debug group, no hydra.sweep.dir): both jobs under one sweep
    folder, <log_dir>/train/multiruns/<date>/{0,1}; one wandb group for both."""
    from lic.training.show_run import load_run

    logs = tmp_path / "logs"
    run_train_py(["-m", "quality=q1,q2", *NO_LOGGER, *_data(data_dirs), "logger=wandb", "trainer.max_steps=1",
                  "trainer.limit_val_batches=0", f"paths.log_dir={logs}"])
    (marker,) = _sweep_folders(logs)
    sweep = marker.parent
    assert sweep.parent == logs / "train" / "multiruns"
    assert sorted(p.name for p in logs.iterdir()) == ["train"] and len(list((logs / "train").iterdir())) == 1
    lambdas, groups = [], set()
    for job in ("0", "1"):
        lambdas.append(load_ckpt(sweep / job / "checkpoints" / "last.ckpt")["hyper_parameters"]["lmbda"])
        info = load_run(sweep / job).info
        groups.add(info["group"])
        assert info["name"] == f"train-{job}"
    assert lambdas == [0.0016, 0.0032] and groups == {f"train/{sweep.name}"}


@pytest.mark.slow
def test_lambda_sweep_under_ddp_writes_one_folder(tmp_path, data_dirs):
    """``-m lambda=a,b trainer=ddp``: Lightning re-runs train.py for the second process; it runs this
    job (not the sweep again) into this job's folder."""
    logs = tmp_path / "logs"
    run_train_py(["-m", "lambda=0.001,0.002", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", *TINY,
                  *_data(data_dirs), "trainer.max_steps=1", "trainer.limit_val_batches=0", f"paths.log_dir={logs}"],
                 timeout=600)
    (marker,) = _sweep_folders(logs)
    sweep = marker.parent
    for job, lmbda in (("0", 0.001), ("1", 0.002)):
        ck = load_ckpt(sweep / job / "checkpoints" / "last.ckpt")
        assert ck["hyper_parameters"]["lmbda"] == lmbda and ck["lic_train_stats"]["world_size"] == 2
        assert (sweep / job / "train_ddp_process_1.log").exists()
    assert not list((logs / "train").glob("runs"))   # no stray single-run folder from a child


def test_slurm_sweep_folder_does_not_depend_on_the_job():
    """SLURM jobs of a quality sweep: one sweep folder (no per-quality task_name), a subfolder per job."""
    from omegaconf import OmegaConf

    cfgs = [compose([f"quality=q{q}", "hydra/launcher=submitit_slurm"], hydra_config=True) for q in (1, 6)]
    assert cfgs[0].task_name == cfgs[1].task_name == "train"
    raw = [OmegaConf.to_container(c.hydra, resolve=False) for c in cfgs]
    assert raw[0]["sweep"] == raw[1]["sweep"] == {"dir": "${paths.log_dir}/${task_name}/multiruns/"
                                                         "${now:%Y-%m-%d_%H-%M-%S}", "subdir": "${hydra.job.num}"}
    assert raw[0]["launcher"]["submitit_folder"] == "${hydra.sweep.dir}/.submitit/%j"


@pytest.mark.slow
@pytest.mark.parametrize("logger", ["tensorboard", "csv"])
def test_logger_runs_exit_0_with_panels(tmp_path, data_dirs, logger):
    out = tmp_path / "run"
    run_train_py([*NO_LOGGER, *_data(data_dirs), f"logger={logger}", "callbacks=throughput",
                  "trainer.max_steps=2", "trainer.val_check_interval=2", f"hydra.run.dir={out}"])
    if logger == "tensorboard":
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        (events,) = out.glob("tensorboard/**/events.out.tfevents.*")
        acc = EventAccumulator(str(events))
        acc.Reload()
        assert {"val/reconstructions", "val/rd_curve"} <= set(acc.Tags()["images"])
        assert "val/loss" in acc.Tags()["scalars"] and "train/samples" in acc.Tags()["scalars"]
    else:
        (d,) = out.glob("csv/version_*")
        assert (d / "val_images" / "step0000002.png").exists() and (d / "rd_points.csv").exists()
        assert "train/samples" in _csv_keys(out)   # ThroughputMonitor
    assert (out / "validation" / "rd_points.csv").read_text().splitlines()[1].startswith("2,1.0,")


def test_wandb_offline_run_has_panels_rd_and_the_config_intact(tmp_path, data_dirs, capsys):
    from lic.eval.run import scored_runs
    from lic.training.show_run import load_run, main

    train_inprocess(tmp_path, data_dirs, ["logger=wandb", "model=cheng2020_vr", "model.model.num_modes=3",
                                          "model.model.lmbdas=[0.001,0.01,0.1]", "trainer.max_steps=2",
                                          "trainer.val_check_interval=2"])
    run = load_run(tmp_path)
    media = run.media()
    assert {"val/reconstructions", "val/rd_curve", "val/rd_points"} <= set(media)
    table = json.loads((run.folder / "files" / media["val/rd_points"][-1][1]["path"]).read_text())
    assert [row[1] for row in table["data"]] == [1.0, 2.0, 3.0]   # every mode of the variable-rate model
    assert (run.folder / "files" / media["val/reconstructions"][-1][1]["filenames"][0]).exists()
    # the config once, as composed: the LitCodec block with its network inside, no flattened copies
    assert run.config["model"]["_target_"] == "lic.training.module.LitCodec"
    assert run.config["model"]["model"]["num_modes"] == 3 and run.config["optimizer"]["name"] == "adam"
    assert "lmbda" not in run.config and "val_real_images" not in run.config
    assert run.info["job_type"] == "train" and run.info["group"] == f"train/{tmp_path.name}"
    for q in (1, 2, 3):
        assert f"val/bpp_q{q}" in run.scalars()
    assert main([str(tmp_path), "--plot", str(tmp_path / "p.png")]) == 0
    assert "val/rd_points at step 2" in capsys.readouterr().out and (tmp_path / "p.png").exists()
    # evaluate.py's link: the checkpoint names the run that wrote it
    (scored,) = scored_runs([str(tmp_path / "checkpoints" / "last.ckpt")])
    assert scored["run"]["wandb_id"] == run.info["id"] and scored["run"]["wandb_group"] == run.info["group"]
    assert scored["steps"] == 2
