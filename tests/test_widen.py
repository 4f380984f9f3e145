"""Widening y (M) of a trained model for init_from: what the old channels compute is unchanged."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from lic.models.cheng2020 import Cheng2020GMM, ModelConfig
from lic.training.widen import check_widenable, gains_for, mode_gains, widened_state


def _net(seed=1, **kw) -> Cheng2020GMM:
    torch.manual_seed(seed)
    net = Cheng2020GMM(ModelConfig(**kw))
    with torch.no_grad():   # unlike any fresh init, so a copy is recognisable
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return net.eval()


def _widen(src: Cheng2020GMM, **changes) -> Cheng2020GMM:
    torch.manual_seed(99)
    dst = Cheng2020GMM(replace(src.config, **changes))
    dst.load_state_dict(widened_state(src, dst), strict=True)
    return dst.eval()


@pytest.mark.parametrize("context", ["checkerboard", "serial"])
@pytest.mark.parametrize("src_M", [8, 12], ids=["M=N", "M>N"])
def test_widened_model_computes_what_the_source_did(context, src_M):
    """x_hat, z's likelihoods and the old y channels' likelihoods are the source's (training and
    eval forward), for a source with M = N (no 1x1 skip in g_s) and with M != N."""
    lm = (0.002, 0.01, 0.05)
    src = _net(N=8, M=src_M, context=context, num_modes=3, lmbdas=lm)
    dst = _widen(src, M=24)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        for mode in (0.0, 1.5, 2.0):
            a, b = src(x, mode=mode), dst(x, mode=mode)
            torch.testing.assert_close(b.x_hat, a.x_hat, rtol=0, atol=1e-5)
            torch.testing.assert_close(b.likelihoods["z"], a.likelihoods["z"], rtol=0, atol=1e-6)
            torch.testing.assert_close(b.likelihoods["y"][:, :src_M], a.likelihoods["y"], rtol=0, atol=1e-5)
            # the new channels are real channels: they cost bits
            assert (b.likelihoods["y"][:, src_M:] < 1).any()


@pytest.mark.parametrize("context", ["checkerboard", "serial"])
@pytest.mark.parametrize("N,M", [(16, 12), (16, 24), (12, 32)])
def test_wider_transforms_compute_what_the_source_did(context, N, M):
    """N grows too (GDN, pixel-shuffle convolutions, attention, z's entropy bottleneck)."""
    src = _net(N=8, M=12, context=context, num_modes=3, lmbdas=(0.002, 0.01, 0.05))
    dst = _widen(src, N=N, M=M)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        for mode in (0.0, 2.0):
            a, b = src(x, mode=mode), dst(x, mode=mode)
            torch.testing.assert_close(b.x_hat, a.x_hat, rtol=0, atol=1e-5)
            torch.testing.assert_close(b.likelihoods["z"][:, :8], a.likelihoods["z"], rtol=0, atol=1e-6)
            torch.testing.assert_close(b.likelihoods["y"][:, :12], a.likelihoods["y"], rtol=0, atol=1e-5)
    # GDN: old channels do not see new ones (gamma 0 in compressai's storage), new ones are fresh
    gdn = dst.g_a[0].gdn
    gamma = gdn.gamma_reparam(gdn.gamma)
    assert torch.count_nonzero(gamma[:8, 8:]) == 0
    assert (torch.diagonal(gamma)[8:] > 0.05).all() and (gdn.beta_reparam(gdn.beta)[8:] > 0.5).all()


def test_same_z_keeps_the_coding_tables():
    src = _net(N=8, num_modes=3, lmbdas=(0.002, 0.01, 0.05))
    src.update(force=True)
    dst = _widen(src, M=16)
    assert torch.equal(dst.entropy_bottleneck._quantized_cdf, src.entropy_bottleneck._quantized_cdf)


def test_a_learned_skip_cannot_become_an_identity():
    src = _net(N=8, M=12, num_modes=3, lmbdas=(0.002, 0.01, 0.05))   # g_s.1 has a 1x1 skip (M != N)
    with pytest.raises(ValueError, match="init_from"):
        widened_state(src, Cheng2020GMM(replace(src.config, N=12, M=12, N_s=12)))


def test_new_channels_start_small_distinct_and_without_influence():
    src = _net(N=8, num_modes=3, lmbdas=(0.002, 0.01, 0.05))
    dst = _widen(src, M=24)
    w = dst.state_dict()
    # nothing reads the new y channels yet: g_s's first layers and h_a see zero weights from them
    for key in ("g_s.1.conv1.weight", "g_s.1.skip.weight", "h_a.0.weight"):
        assert torch.count_nonzero(w[key][:, 8:]) == 0, key
    # g_s's new 1x1 skip is the identity the M = N block had
    torch.testing.assert_close(w["g_s.1.skip.weight"][:, :8, 0, 0], torch.eye(8), rtol=0, atol=0)
    # the new rows of g_a's last conv are random (symmetry broken), scaled down from a fresh init
    new_rows = w["g_a.7.weight"][8:].flatten(1)
    assert torch.unique(new_rows, dim=0).shape[0] == 16
    torch.manual_seed(99)
    fresh = Cheng2020GMM(replace(src.config, M=24)).state_dict()["g_a.7.weight"][8:]
    assert new_rows.abs().mean() < 0.5 * fresh.abs().mean()
    # old rows are the source's
    assert torch.equal(w["g_a.7.weight"][:8], src.state_dict()["g_a.7.weight"])
    # new channels' gains: the mean of the old channels' per mode
    torch.testing.assert_close(w["log_gain"][:, 8:], src.log_gain.detach().mean(1, keepdim=True).expand(3, 16))


def test_mixture_head_outputs_keep_their_meaning():
    """entropy_parameters' output is (3 params, K, M) flattened: each old (param, k, channel)
    row lands where the wider model reads that same (param, k, channel)."""
    src = _net(N=8, num_modes=1)
    dst = _widen(src, M=16)
    ws, wd = src.state_dict()["entropy_parameters.4.bias"], dst.state_dict()["entropy_parameters.4.bias"]
    assert torch.equal(ws.reshape(3, 3, 8), wd.reshape(3, 3, 16)[:, :, :8])
    ins, ind = src.state_dict()["entropy_parameters.0.weight"], dst.state_dict()["entropy_parameters.0.weight"]
    rows = ins.shape[0]
    assert torch.equal(ind[:rows, :16], ins[:, :16])          # context features (2M) first
    assert torch.equal(ind[:rows, 32:48], ins[:, 16:32])      # then hyper features (2M)
    assert torch.count_nonzero(ind[:rows, 16:32]) == 0 and torch.count_nonzero(ind[:rows, 48:]) == 0


def test_gains_follow_the_learned_curve_between_modes_and_sqrt_lambda_beyond():
    lm = [0.001, 0.004, 0.016]
    g = torch.tensor([[0.0, 1.0], [1.0, 3.0], [2.0, 4.0]])
    assert torch.equal(gains_for(g, lm, lm, 0.5), g)                        # same lambdas: the same
    mid = gains_for(g, lm, [0.002], 0.5)                                    # halfway in log lambda
    torch.testing.assert_close(mid, torch.tensor([[0.5, 2.0]]))
    beyond = gains_for(g, lm, [0.064, 0.00025], 0.5)                       # x4 past each end
    torch.testing.assert_close(beyond, torch.tensor([[2 + 0.5 * math.log(4), 4 + 0.5 * math.log(4)],
                                                     [0 - 0.5 * math.log(4), 1 - 0.5 * math.log(4)]]))
    # inverse gains go the other way
    inv = gains_for(-g, lm, [0.064], -0.5)
    torch.testing.assert_close(inv, -beyond[:1])


@pytest.mark.parametrize("widen", [{}, {"M": 16}, {"N_s": 12}], ids=["same-size", "wider-M", "wider-N_s"])
def test_same_modes_new_lambdas_move_each_gain_by_half_the_log_ratio(tmp_path, widen):
    """One gain rule for every start (init_from): with the same number of modes, mode i stays mode
    i and moves by sqrt(new / old lambda), whether or not the model widens."""
    from lic.training.module import LitCodec
    from lic.weights import export

    # lambdas that fall between the source's: the learned-curve rule (for another number of modes)
    # would give other gains here
    old, new = (0.002, 0.01, 0.05), (0.004, 0.02, 0.05)
    src = _net(N=8, num_modes=3, lmbdas=old)
    path = tmp_path / "src.safetensors"
    export(src, path)
    module = LitCodec(Cheng2020GMM(N=8, num_modes=3, lmbdas=list(new), **widen), lmbda=None)
    module.init_weights_from(str(path))
    half_log = 0.5 * torch.log(torch.tensor(new, dtype=torch.float64) / torch.tensor(old, dtype=torch.float64))
    want = src.log_gain.detach().double() + half_log[:, None]              # (3, 8)
    torch.testing.assert_close(module.net.log_gain[:, :8].detach().double(), want, rtol=0, atol=1e-6)
    torch.testing.assert_close(module.net.log_inv_gain[:, :8].detach().double(),
                               src.log_inv_gain.detach().double() - half_log[:, None], rtol=0, atol=1e-6)
    # the top mode's lambda did not change: it codes exactly as the source's did
    x = torch.rand(1, 3, 64, 64)
    module.net.eval()
    with torch.no_grad():
        torch.testing.assert_close(module.net(x, mode=2.0).x_hat, src(x, mode=2.0).x_hat, rtol=0, atol=1e-5)


def test_mode_gains_without_lambdas_keeps_the_modes_or_refuses():
    g = torch.tensor([[0.0, 1.0], [1.0, 3.0]])
    assert torch.equal(mode_gains(g, (), (), 0.5, 2), g)
    with pytest.raises(ValueError, match="init_from"):
        mode_gains(g, (), (0.01, 0.02, 0.04), 0.5, 3)


def test_more_modes_from_fewer():
    src = _net(N=8, num_modes=3, lmbdas=(0.002, 0.01, 0.05))
    dst = _widen(src, M=16, num_modes=5, lmbdas=(0.001, 0.002, 0.01, 0.05, 0.1))
    # a mode whose lambda the source had is that mode of the source
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(dst(x, mode=1.0).x_hat, src(x, mode=0.0).x_hat, rtol=0, atol=1e-5)
        torch.testing.assert_close(dst(x, mode=3.0).x_hat, src(x, mode=2.0).x_hat, rtol=0, atol=1e-5)
    assert (dst.log_gain[0, :8] < src.log_gain[0]).all() and (dst.log_gain[4, :8] > src.log_gain[2]).all()


@pytest.mark.parametrize("change", [{"N": 4}, {"K": 2}, {"context": "serial"}, {"M": 4},
                                    {"num_modes": 1, "lmbdas": ()}],
                         ids=["narrower-N", "K", "context", "narrower-M", "single-rate"])
def test_refuses_what_it_cannot_widen(change):
    src = _net(N=8, num_modes=3, lmbdas=(0.002, 0.01, 0.05))
    torch.manual_seed(0)
    dst = Cheng2020GMM(replace(src.config, **change))
    with pytest.raises(ValueError, match="init_from"):
        check_widenable(src, dst)
    with pytest.raises(ValueError, match="init_from"):
        widened_state(src, dst)


def test_init_weights_from_a_narrower_model_records_it(tmp_path):
    from lic.training.module import LitCodec
    from lic.weights import export

    src = _net(N=8, num_modes=3, lmbdas=(0.002, 0.01, 0.05))
    path = tmp_path / "narrow.safetensors"
    export(src, path)
    module = LitCodec(Cheng2020GMM(N=8, M=16, num_modes=4, lmbdas=[0.001, 0.002, 0.01, 0.05]), lmbda=None)
    record = module.init_weights_from(str(path))
    assert record["M"] == 8 and record["lmbdas"] == [0.002, 0.01, 0.05]
    assert module.train_stats()["init_from"] == record
    x = torch.rand(1, 3, 64, 64)
    module.net.eval()
    with torch.no_grad():
        torch.testing.assert_close(module.net(x, mode=1.0).x_hat, src(x, mode=0.0).x_hat, rtol=0, atol=1e-5)


@pytest.mark.parametrize("src_M,N_s", [(12, 16), (8, 16), (12, 24)], ids=["learned-skip", "identity-skip", "wider"])
def test_wider_g_s_entry_computes_what_the_source_did(src_M, N_s):
    """N_s: g_s's 1/16-resolution block grows (the first block that reads y), the rest stays N."""
    src = _net(N=8, M=src_M, num_modes=3, lmbdas=(0.002, 0.01, 0.05))
    dst = _widen(src, N_s=N_s)
    assert dst.g_s[1].conv1.out_channels == N_s and dst.g_s[2].subpel_conv[0].in_channels == N_s
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        for mode in (0.0, 2.0):
            a, b = src(x, mode=mode), dst(x, mode=mode)
            torch.testing.assert_close(b.x_hat, a.x_hat, rtol=0, atol=1e-5)
            torch.testing.assert_close(b.likelihoods["y"], a.likelihoods["y"], rtol=0, atol=0)   # bits untouched
    # the new channels are read by nobody yet, and are not all alike
    w = dst.state_dict()
    assert torch.count_nonzero(w["g_s.2.subpel_conv.0.weight"][:, 8:]) == 0
    assert torch.unique(w["g_s.1.conv1.weight"][8:].flatten(1), dim=0).shape[0] == N_s - 8


def test_g_s_entry_width_is_stored_only_when_it_differs():
    assert "N_s" not in ModelConfig(N=8, M=12).to_dict()
    cfg = ModelConfig(N=8, M=12, N_s=16)
    assert cfg.to_dict()["N_s"] == 16 and ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert ModelConfig.from_dict({"N": 8}).N_s == 8     # configs from before N_s read as the paper's


@pytest.mark.parametrize("change", [{"N_s": 4}, {"N_s": 12}], ids=["narrower-N_s", "learned-skip-to-identity"])
def test_refuses_a_g_s_entry_it_cannot_widen(change):
    src = _net(N=8, M=12, num_modes=3, lmbdas=(0.002, 0.01, 0.05))
    with pytest.raises(ValueError, match="init_from"):
        check_widenable(src, Cheng2020GMM(replace(src.config, **change)))
