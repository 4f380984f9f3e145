"""model.train_only: train some parts (decoder fine-tuning: g_s), freeze the rest."""
from __future__ import annotations

import pytest
import torch

from lic.models.cheng2020 import Cheng2020GMM
from lic.training.module import LitCodec

CFG = {"N": 8, "num_modes": 3, "lmbdas": [0.002, 0.01, 0.05], "ste_synthesis": True}


def test_only_the_named_parts_train_and_the_rate_cannot_change():
    torch.manual_seed(0)
    module = LitCodec(Cheng2020GMM(**CFG), lmbda=None, optimizer={"lr": 1e-2}, train_only=["g_s", "log_inv_gain"])
    opt = module.configure_optimizers()["optimizer"]
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    for n, p in module.net.named_parameters():
        trains = n.startswith("g_s.") or n == "log_inv_gain"
        assert p.requires_grad == trains and (id(p) in in_opt) == trains, n
    assert len(opt.param_groups) == 1          # the entropy bottleneck's quantiles are frozen too

    before = {k: v.clone() for k, v in module.net.state_dict().items()}
    x = torch.rand(2, 3, 64, 64)
    module.net.eval()
    with torch.no_grad():
        rate0 = module.net(x, mode=1.0).bpp_est()
    module.net.train()
    for _ in range(3):
        opt.zero_grad()
        module.training_step(x, 0).backward()
        opt.step()
    after = module.net.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(k.startswith("g_s.") or k == "log_inv_gain" for k in changed), changed
    module.net.eval()
    with torch.no_grad():
        assert torch.equal(module.net(x, mode=1.0).bpp_est(), rate0)   # encoder and entropy model untouched


def test_unknown_part_is_refused():
    with pytest.raises(ValueError, match="train_only"):
        LitCodec(Cheng2020GMM(**CFG), lmbda=None, train_only=["g_z"])


class _Drawn(Exception):
    pass


def test_mode_weights_set_how_often_each_mode_trains():
    torch.manual_seed(0)
    module = LitCodec(Cheng2020GMM(**CFG), lmbda=None, mode_weights=[0, 1, 3])
    seen = []

    def forward(x, mode=None):   # record the drawn modes, skip the model
        seen.append(mode)
        raise _Drawn

    module.net.forward = forward
    for _ in range(40):
        with pytest.raises(_Drawn):
            module.training_step(torch.rand(8, 3, 16, 16), 0)
    modes = torch.cat(seen).long()
    assert (modes != 0).all()                          # weight 0: never drawn
    share = (modes == 2).float().mean().item()
    assert 0.65 < share < 0.85                         # 3 / 4 expected (320 draws)


@pytest.mark.parametrize("weights", [[1, 1], [1, -1, 1], [0, 0, 0], [1, float("nan"), 1]])
def test_bad_mode_weights_are_refused(weights):
    with pytest.raises(ValueError, match="mode_weights"):
        LitCodec(Cheng2020GMM(**CFG), lmbda=None, mode_weights=weights)


def test_encoder_fine_tuning_with_ste_rate_trains_on_what_is_coded_and_keeps_the_decoder():
    """Soft then Hard's second stage: ste_rate rounds y and z in training too, so the training loss
    is the rounded one the coder sees (no noise), and train_only=[g_a, h_a, log_gain] changes the
    encoder alone: the decoder's parameters, hence the decoding of any given y_hat, are untouched."""
    torch.manual_seed(0)
    module = LitCodec(Cheng2020GMM(**CFG, ste_rate=True), lmbda=None, optimizer={"lr": 1e-2},
                      train_only=["g_a", "h_a", "log_gain"])
    assert module.net.config.to_dict()["ste_rate"] is True
    # older configs read the same
    assert "ste_rate" not in LitCodec(Cheng2020GMM(**CFG), lmbda=None).net.config.to_dict()
    net, x = module.net, torch.rand(2, 3, 64, 64)
    net.eval()
    with torch.no_grad():
        rounded = net(x, mode=1.0)
    net.train()
    trained = net(x, mode=1.0)
    assert torch.equal(trained.likelihoods["y"], rounded.likelihoods["y"])   # no noise: the rounded rate
    assert torch.equal(trained.x_hat, rounded.x_hat)
    trained.bpp_est().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.g_a.parameters())   # straight through

    opt = module.configure_optimizers()["optimizer"]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for _ in range(3):
        opt.zero_grad()
        module.training_step(x, 0).backward()
        opt.step()
    changed = {k for k, v in net.state_dict().items() if not torch.equal(v, before[k])}
    encoder = ("g_a.", "h_a.", "log_gain")
    assert any(k.startswith("g_a.") for k in changed)
    assert changed and all(k.startswith(encoder) for k in changed), changed
