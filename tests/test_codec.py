"""The codec core: encode -> decode is bit-exact, deterministic across threads and processes."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, decode_under_threads, random_image, tiny_net
from lic import codec, container, io


def rounded_reconstruction(net, pixels, q=None) -> np.ndarray:
    """The model's own reconstruction from round(y) (forward in eval mode), cropped to the image."""
    h, w = pixels.shape[:2]
    x_hat = net.reconstruct(codec.pad(io.to_tensor(pixels), net.downsampling), q)
    return io.from_tensor(x_hat[:, :, :h, :w])


@pytest.mark.parametrize("context", ["checkerboard", "serial"])
@pytest.mark.parametrize("size", [(1, 1), (65, 37), pytest.param((513, 769), marks=pytest.mark.slow)])
def test_round_trip_bit_exact(context, size):
    net = tiny_net(context)
    pixels = random_image(*size)
    data = codec.encode_with_net(net, pixels)
    out = codec.decode_with_net(net, data)
    assert out.shape == pixels.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, rounded_reconstruction(net, pixels))


@pytest.mark.parametrize("context", ["checkerboard", "serial"])
def test_round_trip_wider_latent(context):
    """M (channels of y) apart from N: the header's latent_channels, the file and a reload agree."""
    from lic.models import ModelConfig

    net = tiny_net(context, num_modes=2, M=20)
    assert net.config.to_dict()["M"] == 20 and ModelConfig.from_dict(net.config.to_dict()) == net.config
    pixels = random_image(70, 90, seed=2)
    data = codec.encode_with_net(net, pixels, mode=2.0)
    header, _ = container.unpack(data)
    assert header.latent_channels == 20
    np.testing.assert_array_equal(codec.decode_with_net(net, data), rounded_reconstruction(net, pixels, 1.0))


def test_serial_large_odd_size():
    net = tiny_net("serial")
    pixels = random_image(130, 200, seed=3)
    out = codec.decode_with_net(net, codec.encode_with_net(net, pixels))
    np.testing.assert_array_equal(out, rounded_reconstruction(net, pixels))


def test_reconstruct_matches_forward_rounding():
    net = tiny_net(num_modes=3)
    x = codec.pad(io.to_tensor(random_image(64, 64)), net.downsampling)
    with torch.no_grad():
        ref = net(x, 1.5).x_hat
    assert torch.allclose(net.reconstruct(x, 1.5), ref, atol=1e-5)


@pytest.mark.parametrize("context", ["checkerboard", "serial"])
def test_variable_rate_modes(context):
    net = tiny_net(context, num_modes=4)
    pixels = random_image(64, 96, seed=1)
    sizes = []
    for mode in (1.0, 2.5, 4.0):
        data = codec.encode_with_net(net, pixels, mode=mode)
        header, _ = container.unpack(data)
        assert header.mode + header.mode_frac / 256 == mode
        out = codec.decode_with_net(net, data)
        np.testing.assert_array_equal(out, rounded_reconstruction(net, pixels, mode - 1))
        sizes.append(len(data))
    assert len(set(sizes)) > 1  # the gains change the rate


def test_header_describes_the_image():
    net = tiny_net()
    pixels = random_image(100, 300)
    header, streams = container.unpack(codec.encode_with_net(net, pixels))
    assert (header.height, header.width, header.channels) == (100, 300, 3)
    assert (header.latent_height, header.latent_width) == (8, 20)
    assert header.latent_channels == 8 and len(streams) == 3


def test_decode_identical_across_threads():
    net = tiny_net()
    pixels = random_image(200, 264, seed=7)
    data = codec.encode_with_net(net, pixels)
    outs = decode_under_threads(net, data)
    np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.slow
def test_decode_identical_in_fresh_process(tmp_path):
    from lic.weights import export

    net = tiny_net()
    weights = tmp_path / "tiny.safetensors"
    export(net, weights)
    net2 = __import__("lic.weights", fromlist=["load_checkpoint"]).load_checkpoint(weights)
    pixels = random_image(96, 160, seed=11)
    torch.set_num_threads(2)
    data = codec.encode_with_net(net2, pixels)
    (tmp_path / "a.lic").write_bytes(data)
    expected = codec.decode_with_net(net2, data)
    script = (
        "import sys, torch, numpy as np; torch.set_num_threads(1);"
        "from lic import codec; from lic.weights import load_checkpoint;"
        f"net = load_checkpoint(r'{weights}');"
        f"out = codec.decode_with_net(net, open(r'{tmp_path / 'a.lic'}', 'rb').read());"
        f"np.save(r'{tmp_path / 'out.npy'}', out)"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO, capture_output=True)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)


def test_wrong_weights_rejected():
    a, b = tiny_net(seed=0), tiny_net(seed=1)
    data = codec.encode_with_net(a, random_image(64, 64))
    with pytest.raises(codec.CodecError, match="other weights"):
        codec.decode_with_net(b, data)


def test_wrong_model_rejected():
    data = codec.encode_with_net(tiny_net("checkerboard"), random_image(64, 64))
    with pytest.raises(codec.CodecError, match="model"):
        codec.decode_with_net(tiny_net("serial"), data)


def test_training_likelihood_has_no_fixed_device():
    """The likelihood used in training builds its bound on the input's device (a module-level
    CPU tensor broke the first GPU run: 'found at least two devices, cuda:0 and cpu').
    The meta device stands in for a GPU here."""
    from lic.entropy.mixture import mixture_likelihood

    meta = torch.device("meta")
    y = torch.empty(1, 4, 2, 2, device=meta)
    p = torch.empty(1, 3, 4, 2, 2, device=meta)   # (B, K, M, H, W)
    assert mixture_likelihood(y, p, p, p).device == meta
    # and on the CPU a vanishing likelihood is held at the bound
    from lic.entropy.mixture import LIKELIHOOD_MIN

    y = torch.zeros(1, 1, 1, 1)
    w = torch.full((1, 3, 1, 1, 1), 1 / 3)
    lik = mixture_likelihood(y, w, torch.full_like(w, 100.0), torch.ones_like(w))
    assert lik.item() == pytest.approx(LIKELIHOOD_MIN)
