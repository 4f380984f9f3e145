"""Encoder-side latent refinement (lic.refine): same decoder, cheaper files, never worse."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import KODAK, random_image, tiny_net
from lic import codec
from lic.entropy.quantize import annealed_round
from lic.refine import RefineConfig, mode_lmbda, refine_latent
from lic.weights import fingerprint


def test_annealed_round_stays_between_neighbours_and_becomes_round():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(4000, generator=g) * 3
    hot = annealed_round(y, 0.5, g)
    assert torch.all(hot >= torch.floor(y)) and torch.all(hot <= torch.floor(y) + 1)
    assert not torch.equal(hot, torch.round(y))            # random while hot
    cold = annealed_round(y, 1e-3, g)
    clear = (y - torch.floor(y) - 0.5).abs() > 0.05        # not a near tie
    assert clear.sum() > 3000
    assert torch.allclose(cold[clear], torch.round(y)[clear], atol=1e-3)
    y.requires_grad_(True)
    annealed_round(y, 0.3, g).sum().backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


def test_mode_lmbda_interpolates_like_the_gains():
    lm = (0.001, 0.004, 0.016)
    assert mode_lmbda(lm, 0) == pytest.approx(0.001)
    assert mode_lmbda(lm, 2) == pytest.approx(0.016)
    assert mode_lmbda(lm, 1.5) == pytest.approx(math.sqrt(0.004 * 0.016))
    assert mode_lmbda((0.01,), None) == 0.01
    with pytest.raises(ValueError, match="no lambda"):
        mode_lmbda((), None)


@pytest.mark.parametrize("bad", [dict(steps=-1), dict(steps=1.5), dict(lr=0), dict(tau_min=0.6),
                                 dict(check_every=0), dict(mixed_from=0)])
def test_refine_config_refuses_nonsense(bad):
    with pytest.raises(ValueError):
        RefineConfig(**bad)


def test_refined_file_decodes_reproducibly_and_leaves_the_model_alone():
    net = tiny_net(num_modes=3, lmbdas=(0.001, 0.01, 0.1))
    fp = fingerprint(net)
    px = random_image(100, 70, seed=3)
    cfg = RefineConfig(steps=6, check_every=2)
    a = codec.encode_with_net(net, px, 2.0, refine=cfg, tile_size=64)   # tiled: 2 x 2 tiles
    b = codec.encode_with_net(net, px, 2.0, refine=cfg, tile_size=64)
    assert a == b                                              # seeded: the same input, the same file
    out = codec.decode_with_net(net, a)
    assert out.shape == px.shape
    assert all(p.grad is None for p in net.parameters())
    assert fingerprint(net) == fp


def test_refinement_never_returns_a_costlier_latent():
    net = tiny_net(num_modes=3)
    x = codec.pad(torch.from_numpy(random_image(64, 64, seed=1)).permute(2, 0, 1)[None].float() / 255, net.downsampling)
    gains = net._gains(1, 1, x.device)
    with torch.no_grad():
        y = net.g_a(x) * gains[0]
    # a learning rate so large that the search makes things worse: g_a's y must come back
    res = refine_latent(net, x, y, gains, 0.01, RefineConfig(steps=4, lr=50.0, check_every=1))
    assert res.cost <= res.cost_start
    if res.best_step == 0:
        assert torch.equal(res.y, y)


@pytest.mark.skipif(not (KODAK / "kodim05.png").exists(), reason="needs ../shared (Kodak)")
@pytest.mark.parametrize("mode", [2, 6])
@pytest.mark.slow
def test_refinement_makes_real_files_cheaper_with_the_shipped_model(mode):
    """Real bytes, real PSNR: lmbda * 255^2 * MSE + bpp must drop, at a low and a high mode."""
    from PIL import Image

    from lic.weights import load_model

    lm = load_model()
    with Image.open(KODAK / "kodim05.png") as im:
        px = np.asarray(im.convert("RGB"))[128:256, 256:448].copy()
    lmbda = lm.net.config.lmbdas[mode - 1]

    def real_cost(data: bytes) -> float:
        out = codec.decode_with_net(lm.net, data, fp=lm.fingerprint)
        mse = np.mean((out.astype(np.float64) - px) ** 2) / 255**2
        return lmbda * 255**2 * mse + 8 * len(data) / (px.shape[0] * px.shape[1])

    plain = codec.encode_with_net(lm.net, px, mode, lm.fingerprint)
    refined = codec.encode_with_net(lm.net, px, mode, lm.fingerprint, refine=RefineConfig(steps=20))
    before, after = real_cost(plain), real_cost(refined)
    print(f"mode {mode}: real cost {before:.4f} -> {after:.4f}")
    assert after < 0.99 * before


def test_lic_codec_refines_labels_and_travels_to_worker_processes():
    import pickle

    from lic.eval.lic_codec import LicCodec

    plain = LicCodec.shipped(modes=[4])
    refined = LicCodec.shipped(modes=[4], refine=RefineConfig(steps=3))
    assert plain.refine is None and "refined" not in plain.name
    assert refined.name == plain.name + ", refined (3 steps)"
    sga = LicCodec.shipped(modes=[4], refine=RefineConfig(steps=3, proxy="sga"))
    assert sga.name == plain.name + ", refined (3 steps, sga)"
    again = pickle.loads(pickle.dumps(refined))          # rebuilt from its recipe, weights loaded anew
    assert (again.name, again.settings, again.refine) == (refined.name, refined.settings, refined.refine)
    assert again.models[4.0].fingerprint == refined.models[4.0].fingerprint
    with pytest.raises(TypeError, match="workers=1"):
        pickle.dumps(LicCodec("x", dict(refined.models)))


@pytest.mark.parametrize("proxy", ["ste", "mixed"])
def test_other_proxies_are_reproducible_and_never_worse(proxy):
    net = tiny_net(num_modes=3, lmbdas=(0.001, 0.01, 0.1), seed=4)
    x = codec.pad(torch.from_numpy(random_image(64, 64, seed=2)).permute(2, 0, 1)[None].float() / 255, net.downsampling)
    gains = net._gains(2, 1, x.device)
    with torch.no_grad():
        y = net.g_a(x) * gains[0]
    cfg = RefineConfig(steps=5, check_every=1, proxy=proxy)
    torch.manual_seed(123)
    before = torch.rand(3)
    a = refine_latent(net, x, y, gains, 0.1, cfg)
    torch.manual_seed(123)
    b = refine_latent(net, x, y, gains, 0.1, cfg)
    assert torch.equal(a.y, b.y) and a.cost <= a.cost_start
    assert torch.equal(torch.rand(3), before)     # the caller's random stream is left where it was
    with pytest.raises(ValueError, match="proxy"):
        RefineConfig(proxy="gumbel")


def test_auto_proxy_switches_to_mixed_from_its_lambda_and_searches_as_that_proxy():
    cfg = RefineConfig(steps=4, check_every=1, proxy="auto", mixed_from=0.05)
    assert [cfg.proxy_for(lmbda) for lmbda in (0.001, 0.0499, 0.05, 0.25)] == ["sga", "sga", "mixed", "mixed"]
    assert RefineConfig(proxy="ste").proxy_for(0.25) == "ste"     # a named proxy is used at every lambda
    net = tiny_net(num_modes=3, lmbdas=(0.001, 0.01, 0.1), seed=4)
    x = codec.pad(torch.from_numpy(random_image(64, 64, seed=2)).permute(2, 0, 1)[None].float() / 255, net.downsampling)
    gains = net._gains(2, 1, x.device)
    with torch.no_grad():
        y = net.g_a(x) * gains[0]
    for lmbda, same_as in ((0.1, "mixed"), (0.01, "sga")):
        auto = refine_latent(net, x, y, gains, lmbda, cfg)
        named = refine_latent(net, x, y, gains, lmbda, RefineConfig(steps=4, check_every=1, proxy=same_as))
        assert torch.equal(auto.y, named.y) and auto.cost == named.cost


def test_evaluate_config_picks_the_refining_stand_in():
    from omegaconf import OmegaConf

    from lic.eval.run import build_codec

    def model(**kw):
        return OmegaConf.create({"model": {"checkpoints": None, "name": None, "modes": [4], "label": None,
                                           "refine": 3, **kw}})
    assert build_codec(model(refine_proxy=None)).refine == RefineConfig(steps=3)   # the default: auto
    chosen = build_codec(model(refine_proxy="sga"))
    assert chosen.refine.proxy == "sga" and chosen.name.endswith("refined (3 steps, sga)")
    with pytest.raises(ValueError, match="proxy"):
        build_codec(model(refine_proxy="round"))
