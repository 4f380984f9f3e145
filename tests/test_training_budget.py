"""Tests for LitCodec's budget LR milestones, init_weights_from (init_from), model-only gradient
clipping, and train.py's init_from / the checkpoint written when fit ends.

Tiny models (N=8, 64x64 images, batch 2) on CPU: most tests drive a Lightning Trainer directly on
random tensors; one runs train.py's body (lic.training.run.train) on composed Hydra configs.
"""
from __future__ import annotations

import json
import math
from datetime import timedelta
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, Timer
from PIL import Image
from torch.utils.data import DataLoader

from lic.models.cheng2020 import Cheng2020GMM
from lic.training.module import LitCodec

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
LR, AUX_LR = 1e-3, 1e-3


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path_factory):
    """Offline wandb, one thread, no shipped weights touched."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PROJECT_ROOT", str(ROOT))
    monkeypatch.setenv("LIC_WEIGHTS_DIR", str(home / "weights"))
    monkeypatch.delenv("LIC_CHECKPOINT", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------ helpers

def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader([torch.rand(3, 64, 64, generator=g) for _ in range(4)], batch_size=2)


def _module(**kw) -> LitCodec:
    torch.manual_seed(0)
    sched = {"name": "multistep", "gamma": 0.1, "budget_milestones": kw.pop("lr_budget_milestones", [])}
    kw = {"lmbda": 0.01, "optimizer": {"lr": LR, "aux_lr": AUX_LR}, "val_real_images": 0, "scheduler": sched, **kw}
    return LitCodec(Cheng2020GMM(N=8), **kw)


class LrRecorder(L.Callback):
    """The learning rates each optimizer step actually uses: {global_step: (model lr, quantiles lr)}."""

    def __init__(self):
        self.lrs: dict[int, tuple[float, float]] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs[trainer.global_step] = (optimizer.param_groups[0]["lr"], optimizer.param_groups[1]["lr"])


def _fit(module, max_steps, callbacks=(), ckpt_path=None, checkpointing=False, **kw) -> L.Trainer:
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, logger=False,
                        enable_checkpointing=checkpointing, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, gradient_clip_val=1.0,
                        callbacks=list(callbacks), **kw)
    trainer.fit(module, _loader(), ckpt_path=ckpt_path)
    return trainer


def _model_lr(trainer) -> float:
    return trainer.optimizers[0].param_groups[0]["lr"]


# ------------------------------------------------------------------ lr_budget_milestones

def test_budget_milestone_by_steps_drops_lr_once_at_half():
    rec = LrRecorder()
    module = _module(lr_budget_milestones=[0.5])
    trainer = _fit(module, 8, [rec])
    assert trainer.global_step == 8
    assert module._budget_drops == [4]                 # 4 / 8 = the half: once, not at every later step
    assert sorted(rec.lrs) == list(range(8))
    for step, (lr, aux) in rec.lrs.items():
        assert aux == pytest.approx(AUX_LR)            # the quantiles' rate never drops
        if step < 4:
            assert lr == pytest.approx(LR), step
        elif step > 4:
            assert lr == pytest.approx(LR * 0.1), step
        else:   # the step that records the drop: the scheduler computed its LR one step earlier
            assert lr in (pytest.approx(LR), pytest.approx(LR * 0.1))
    assert _model_lr(trainer) == pytest.approx(LR * 0.1)


def test_no_budget_milestones_keeps_lr():
    module = _module()
    trainer = _fit(module, 4)
    assert module._budget_drops == [] and _model_lr(trainer) == pytest.approx(LR)


def test_budget_milestone_by_timer():
    """A run bounded by max_time: progress is the Timer's elapsed / duration (faked here: 20% a step)."""

    class FakeTimer(Timer):
        fake = 0.0

        def on_train_batch_start(self, trainer, *args):
            self.fake = 20.0 * trainer.global_step   # of 100 s

        def time_elapsed(self, stage="train"):
            return self.fake

    rec = LrRecorder()
    module = _module(lr_budget_milestones=[0.5])
    trainer = _fit(module, 1000, [FakeTimer(duration=timedelta(seconds=100), interval="step"), rec])
    assert module._budget_drops == [3]                 # 60% of the time, 0.3% of max_steps
    assert trainer.global_step < 1000                  # (the Timer stopped the run)
    assert rec.lrs[2][0] == pytest.approx(LR) and rec.lrs[4][0] == pytest.approx(LR * 0.1)


def test_budget_milestone_follows_rank_zero(monkeypatch):
    """Under DDP each rank's Timer reads its own clock: the drop must be rank 0's decision (broadcast),
    or ranks drop at different steps and their weights drift apart.  Here rank 0 always says 'not yet'."""
    module = _module(lr_budget_milestones=[0.5])
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=8, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0)
    asked = []

    def rank0_says_no(obj, src=0):
        if isinstance(obj, bool):
            asked.append(obj)
            return False
        return obj

    monkeypatch.setattr(trainer.strategy, "broadcast", rank0_says_no)
    trainer.fit(module, _loader())
    assert True in asked                               # this rank's own progress passed the half
    assert module._budget_drops == [] and _model_lr(trainer) == pytest.approx(LR)


@pytest.mark.slow
def test_budget_drops_saved_and_restored_on_resume(tmp_path):
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path, filename="s{step}", auto_insert_metric_name=False,
                              every_n_train_steps=6, save_top_k=-1)
    module = _module(lr_budget_milestones=[0.5, 0.9])
    _fit(module, 8, [ckpt_cb], checkpointing=True)
    assert module._budget_drops == [4]                 # 0.9 x 8 is never reached
    ckpt = torch.load(tmp_path / "s6.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 6 and ckpt["lic_lr_budget_drops"] == [4]

    # resume at step 6 with a larger budget (10 steps): 6/10 has passed the half, but the half's drop
    # is in the checkpoint (step 4), so the next drop is 0.9's, at step 9; a forgetful resume drops at 6
    rec = LrRecorder()
    resumed = _module(lr_budget_milestones=[0.5, 0.9])
    trainer = _fit(resumed, 10, [rec], ckpt_path=str(tmp_path / "s6.ckpt"))
    assert resumed._budget_drops == [4, 9]
    assert sorted(rec.lrs) == [6, 7, 8, 9]
    for step in (6, 7, 8):
        assert rec.lrs[step][0] == pytest.approx(LR * 0.1), step
    assert _model_lr(trainer) == pytest.approx(LR * 0.01)
    assert all(aux == pytest.approx(AUX_LR) for _, aux in rec.lrs.values())

    path = tmp_path / "end.ckpt"
    trainer.save_checkpoint(str(path))
    assert torch.load(path, map_location="cpu", weights_only=True)["lic_lr_budget_drops"] == [4, 9]


# ------------------------------------------------------------------ init_weights_from

A = [0.001, 0.004, 0.016]
B = [0.002, 0.004, 0.004]   # mode 1: x2, mode 2: same, mode 3: /4


def _vr_net(lmbdas, N=8, num_modes=3, context="checkerboard", seed=1, M=None):
    from lic.models.cheng2020 import Cheng2020GMM, ModelConfig

    torch.manual_seed(seed)
    cfg = {"N": N, "num_modes": num_modes, "context": context, "M": M}
    if num_modes > 1:
        cfg["lmbdas"] = lmbdas
    net = Cheng2020GMM(ModelConfig.from_dict(cfg))
    with torch.no_grad():   # unlike any fresh init
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return net


def _export(net, path: Path, trained: dict | None = None) -> Path:
    from lic.weights import export

    export(net, path, extra_meta={"lic_trained": trained} if trained else None)
    return path


def test_init_weights_from_shifts_gains_by_lambda_ratio(tmp_path):
    from lic.weights import load_checkpoint

    path = _export(_vr_net(A), tmp_path / "a.safetensors", trained={"steps": 7, "images_seen": 14})
    module = LitCodec(Cheng2020GMM(N=8, num_modes=3, lmbdas=B), lmbda=None)
    assert not torch.equal(module.net.g_a[0].conv1.weight, load_checkpoint(path).g_a[0].conv1.weight)

    record = module.init_weights_from(path)
    src = load_checkpoint(path).state_dict()
    got = module.net.state_dict()
    assert set(got) == set(src)
    shift = torch.tensor([0.5 * math.log(b / a) for a, b in zip(A, B)], dtype=torch.float64)[:, None]
    for k, v in got.items():
        if k == "log_gain":
            torch.testing.assert_close(v.double(), src[k].double() + shift, rtol=0, atol=1e-6)
        elif k == "log_inv_gain":
            torch.testing.assert_close(v.double(), src[k].double() - shift, rtol=0, atol=1e-6)
        else:
            assert torch.equal(v, src[k]), k
    assert torch.equal(got["log_gain"][1], src["log_gain"][1])           # same lambda: untouched
    assert (got["log_gain"][0] > src["log_gain"][0]).all()               # larger lambda: larger gain
    assert (got["log_gain"][2] < src["log_gain"][2]).all()
    # the module's training lambdas are the new ones
    assert module.lmbdas.tolist() == pytest.approx(B)

    assert record == {"from": str(path), "lmbdas": A, "trained": {"steps": 7, "images_seen": 14}}
    assert module.train_stats()["init_from"] == record

    # carried by checkpoints across resumes
    ckpt = {"global_step": 3}
    module.on_save_checkpoint(ckpt)
    assert ckpt["lic_train_stats"]["init_from"] == record
    resumed = LitCodec(Cheng2020GMM(N=8, num_modes=3, lmbdas=B), lmbda=None)
    resumed.on_load_checkpoint(ckpt)
    assert resumed.train_stats()["init_from"] == record


def test_init_weights_from_same_lambdas_is_exact_copy(tmp_path):
    from lic.weights import load_checkpoint

    path = _export(_vr_net(A), tmp_path / "a.safetensors")
    module = LitCodec(Cheng2020GMM(N=8, num_modes=3, lmbdas=A), lmbda=None)
    record = module.init_weights_from(path)
    src = load_checkpoint(path).state_dict()
    assert all(torch.equal(v, src[k]) for k, v in module.net.state_dict().items())
    assert "trained" not in record


# (another number of modes, or a narrower y, is accepted: tests/test_widen.py)
@pytest.mark.parametrize("src_kw", [{"N": 16}, {"M": 16}, {"num_modes": 1}, {"context": "serial"}],
                         ids=["N", "wider-y", "single-rate", "context"])
def test_init_weights_from_refuses_other_architectures(tmp_path, src_kw):
    lm = [0.001 * (i + 1) for i in range(src_kw.get("num_modes", 3))]
    path = _export(_vr_net(lm, **src_kw), tmp_path / "other.safetensors")
    module = LitCodec(Cheng2020GMM(N=8, num_modes=3, lmbdas=B), lmbda=None)
    with pytest.raises((RuntimeError, ValueError)):
        module.init_weights_from(path)
    assert "init_from" not in module.train_stats()


# ------------------------------------------------------------------ gradient clipping

def _groups(module):
    opt = module.configure_optimizers()["optimizer"]
    quantiles = {id(p) for n, p in module.net.named_parameters() if n.endswith(".quantiles")}
    assert quantiles and {id(p) for p in opt.param_groups[1]["params"]} == quantiles
    return opt, opt.param_groups[0]["params"], opt.param_groups[1]["params"]


def _norm(params) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params])))


def test_gradient_clipping_ignores_quantiles():
    module = _module()
    opt, main, aux = _groups(module)
    for p in main:
        p.grad = torch.full_like(p, 1e-5)
    for p in aux:
        p.grad = torch.full_like(p, 1e3)
    assert _norm(main) < 1 < _norm(aux)
    before = [p.grad.clone() for p in main + aux]
    module.configure_gradient_clipping(opt, 1.0, "norm")
    # all together, the quantiles' norm would scale the model's small gradients down by ~1e-5
    assert all(torch.equal(p.grad, b) for p, b in zip(main + aux, before))


def test_gradient_clipping_clips_model_gradients():
    module = _module()
    opt, main, aux = _groups(module)
    for p in main:
        p.grad = torch.full_like(p, 10.0)
    for p in aux:
        p.grad = torch.full_like(p, 1e3)
    aux_before = [p.grad.clone() for p in aux]
    raw = _norm(main)
    module.configure_gradient_clipping(opt, 1.0, "norm")
    assert raw > 100 and _norm(main) == pytest.approx(1.0, rel=1e-4)
    assert all(torch.equal(p.grad, b) for p, b in zip(aux, aux_before))

    for p in main:
        p.grad = torch.full_like(p, 10.0)
    module.configure_gradient_clipping(opt, 0.5, "value")
    assert all(float(p.grad.abs().max()) == 0.5 for p in main)
    assert all(torch.equal(p.grad, b) for p, b in zip(aux, aux_before))

    module.configure_gradient_clipping(opt, None, None)   # no clipping configured: nothing changes
    assert all(float(p.grad.abs().max()) == 0.5 for p in main)


def test_trainer_clips_through_the_override(monkeypatch):
    """Lightning passes its own enum for the algorithm: the override must still clip by norm, model only."""
    module = _module()
    calls = []
    real = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *a, **kw):
        params = list(params)
        calls.append(({id(p) for p in params}, max_norm))
        return real(params, max_norm, *a, **kw)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    _fit(module, 2)
    quantiles = {id(p) for n, p in module.net.named_parameters() if n.endswith(".quantiles")}
    model = {id(p) for n, p in module.net.named_parameters() if not n.endswith(".quantiles")}
    assert len(calls) == 2
    for ids, max_norm in calls:
        assert max_norm == 1.0 and not ids & quantiles and ids <= model and len(ids) > 0.9 * len(model)


# ------------------------------------------------------------------ train.py: init_from and the final checkpoint

TINY = ["model=cheng2020_vr", "model.model.N=8", "model.val_real_images=0", "data.crop=64", "data.val_crop=64",
        "data.batch_size=2", "data.val_batch_size=2", "data.train_limit=4", "data.val_limit=2",
        "trainer.limit_val_batches=0", "trainer.log_every_n_steps=1", "trainer.enable_model_summary=false",
        "threads=1", "logger=csv"]


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for name, n in (("train", 4), ("val", 2)):
        (root / name).mkdir()
        for i in range(n):
            img = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8).repeat(8, 0).repeat(8, 1)
            Image.fromarray(img).save(root / name / f"{i}.png")
    return root / "train", root / "val"


def _train(out: Path, data_dirs, overrides: list[str]) -> None:
    from hydra import compose, initialize_config_dir

    from lic.training.run import train

    train_dir, val_dir = data_dirs
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*TINY, f"data.train_dir={train_dir}", f"data.val_dir={val_dir}",
                                          f"paths.output_dir={out}", *overrides])
    train(cfg)


@pytest.mark.slow
def test_train_init_from_and_final_checkpoint(tmp_path, data_dirs):
    from lic.export import trained_facts
    from lic.weights import load_checkpoint

    lm1 = [0.0016, 0.0032, 0.0075, 0.015, 0.03, 0.045]
    lm2 = [0.0032, 0.0032, 0.0075, 0.015, 0.03, 0.09]
    run1, run2 = tmp_path / "run1", tmp_path / "run2"
    # no periodic checkpoint before the end: the one written when fit ends (step 3)
    _train(run1, data_dirs, ["trainer.max_steps=3", "callbacks.model_checkpoint.every_n_train_steps=100",
                             f"model.model.lmbdas={lm1}"])
    final1 = run1 / "checkpoints" / "step0000003.ckpt"
    assert (run1 / "checkpoints" / "last.ckpt").resolve() == final1.resolve()
    c1 = torch.load(final1, map_location="cpu", weights_only=True)
    assert c1["global_step"] == 3 and "init_from" not in c1["lic_train_stats"]

    # run 2 starts from run 1 with other lambdas; lr 0 keeps the weights where init_from put them
    _train(run2, data_dirs, ["trainer.max_steps=2", f"init_from={final1}", f"model.model.lmbdas={lm2}",
                             "optimizer.lr=0", "optimizer.aux_lr=0", "scheduler.budget_milestones=[0.5]"])
    c2 = torch.load(run2 / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert c2["global_step"] == 2 and c2["lic_lr_budget_drops"] == [1]
    init = c2["lic_train_stats"]["init_from"]
    assert init["from"] == str(final1) and init["lmbdas"] == pytest.approx(lm1)
    assert trained_facts(c2)["init_from"] == init
    assert c2["lic_train_stats"]["steps"] == 2 and c2["lic_train_stats"]["images_seen"] == 4   # run 2 only

    w1, w2 = load_checkpoint(final1).state_dict(), load_checkpoint(run2 / "checkpoints" / "last.ckpt").state_dict()
    shift = torch.tensor([0.5 * math.log(b / a) for a, b in zip(lm1, lm2)])[:, None]
    torch.testing.assert_close(w2["log_gain"], w1["log_gain"] + shift, rtol=0, atol=1e-6)
    torch.testing.assert_close(w2["log_inv_gain"], w1["log_inv_gain"] - shift, rtol=0, atol=1e-6)
    assert torch.equal(w2["g_a.0.conv1.weight"], w1["g_a.0.conv1.weight"])
    assert json.loads(c2["lic_model_config"])["lmbdas"] == pytest.approx(lm2)

    with pytest.raises(ValueError, match="init_from"):
        _train(tmp_path / "both", data_dirs, ["trainer.max_steps=1", f"init_from={final1}", f"ckpt_path={final1}"])

    # a periodic checkpoint at the last step: no second copy of it
    run3 = tmp_path / "run3"
    _train(run3, data_dirs, ["trainer.max_steps=2", "callbacks.model_checkpoint.every_n_train_steps=1"])
    assert sorted(p.name for p in (run3 / "checkpoints").iterdir()) == ["last.ckpt", "step0000001.ckpt",
                                                                       "step0000002.ckpt"]
