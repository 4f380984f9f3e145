"""Tiled coding: large images are cut into tiles coded independently, bit-exactly reassembled."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from conftest import decode_under_threads, random_image, tiny_net
from lic import codec, container, io
from lic.eval.memory import peak_rss_mb, reset_peak_rss


def per_tile_reconstruction(net, pixels, tile_size, q=None) -> np.ndarray:
    """What the decoder must return: each tile reconstructed on its own from round(y), cropped, pasted."""
    h, w = pixels.shape[:2]
    out = np.zeros_like(pixels)
    for top, left, th, tw in codec.tile_grid(h, w, tile_size, net.downsampling):
        x = codec.pad(io.to_tensor(pixels[top:top + th, left:left + tw]), net.downsampling)
        assert x.shape[-2:] == (th, tw)
        ch, cw = min(th, h - top), min(tw, w - left)
        out[top:top + ch, left:left + cw] = io.from_tensor(net.reconstruct(x, q)[:, :, :ch, :cw])
    return out


@pytest.mark.parametrize("context,size", [
    ("checkerboard", (200, 300)),   # padded 256x320: 2x3 tiles of up to 128
    ("checkerboard", (129, 257)),   # odd: padded 192x320, edge tiles 64 high
    ("checkerboard", (300, 65)),    # one column of tiles, 128 wide
    ("serial", (150, 140)),
])
def test_tiled_round_trip_is_bit_exact(context, size):
    net = tiny_net(context)
    pixels = random_image(*size, seed=sum(size))
    data = codec.encode_with_net(net, pixels, tile_size=128)
    header, streams = container.unpack(data)
    tiles = codec.tile_grid(*size, 128, 64)
    assert header.tile_size == 128
    assert len(streams) == len(tiles) * (3 if context == "checkerboard" else 2)
    assert (header.latent_height, header.latent_width) == container.latent_size(*size, net.downsampling)  # whole image
    out = codec.decode_with_net(net, data)
    assert out.shape == pixels.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, per_tile_reconstruction(net, pixels, 128))


def test_tiled_variable_rate():
    net = tiny_net(num_modes=3)
    pixels = random_image(140, 190, seed=4)
    data = codec.encode_with_net(net, pixels, mode=2.25, tile_size=64)
    header, streams = container.unpack(data)
    assert (header.tile_size, header.mode, header.mode_frac, len(streams)) == (64, 2, 64, 9 * 3)
    np.testing.assert_array_equal(codec.decode_with_net(net, data), per_tile_reconstruction(net, pixels, 64, 1.25))


def test_tile_grid_covers_the_padded_image():
    for (h, w, t) in [(1, 1, 64), (64, 64, 64), (65, 200, 128), (1000, 777, 256), (4000, 6000, 1024)]:
        tiles = codec.tile_grid(h, w, t, 64)
        hp, wp = -(-h // 64) * 64, -(-w // 64) * 64
        cover = np.zeros((hp // 64, wp // 64), dtype=int)
        for top, left, th, tw in tiles:
            assert top < h and left < w and th % 64 == 0 and tw % 64 == 0 and 0 < th <= t and 0 < tw <= t
            cover[top // 64:(top + th) // 64, left // 64:(left + tw) // 64] += 1
        assert (cover == 1).all()
        assert tiles == sorted(tiles)  # raster order
    assert codec.tile_grid(100, 300, 0, 64) == [(0, 0, 128, 320)]


def test_default_tile_size_leaves_kodak_untiled():
    assert codec.choose_tile_size(512, 768) == 0 and codec.choose_tile_size(768, 512) == 0
    assert codec.choose_tile_size(1024, 1024) == 0
    assert codec.choose_tile_size(4000, 6000) == codec.DEFAULT_TILE_SIZE
    assert codec.choose_tile_size(100, 100, tile_size=64) == 64
    assert codec.choose_tile_size(64, 64, tile_size=64) == 0  # one tile: written untiled


@pytest.mark.parametrize("tile_size", [100, -64, 4096, 65536, True, 64.0])
def test_bad_tile_size(tile_size):
    with pytest.raises(ValueError, match="tile"):
        codec.choose_tile_size(300, 300, tile_size)


def test_untiled_huge_image_is_refused_by_the_encoder():
    with pytest.raises(ValueError, match="untiled"):
        codec.choose_tile_size(4000, 6000, tile_size=0)


def test_single_tile_equals_untiled():
    net = tiny_net()
    pixels = random_image(100, 120, seed=2)
    assert codec.encode_with_net(net, pixels, tile_size=128) == codec.encode_with_net(net, pixels, tile_size=0)
    assert codec.encode_with_net(net, pixels) == codec.encode_with_net(net, pixels, tile_size=0)


def test_tiled_decode_identical_across_threads():
    net = tiny_net()
    data = codec.encode_with_net(net, random_image(150, 200, seed=5), tile_size=64)
    outs = decode_under_threads(net, data)
    np.testing.assert_array_equal(outs[0], outs[1])


# ------------------------------------------------------------------ untrusted tiled files


def _file(net, height, width, tile_size, streams) -> bytes:
    from lic.weights import fingerprint

    lh, lw = container.latent_size(height, width, net.downsampling)
    h = container.Header(model_id=net.model_id, mode=1, mode_frac=0, fingerprint=fingerprint(net),
                         height=height, width=width, channels=3, latent_channels=net.config.M,
                         latent_height=lh, latent_width=lw, tile_size=tile_size)
    return container.pack(h, streams)


def test_oversized_tiles_are_refused_before_decoding():
    net = tiny_net()
    data = _file(net, 4096, 4096, 0, [b"\0" * 8, b"\0" * 4, b"\0" * 4])  # untiled 16 Mpixels, within Limits
    with pytest.raises(codec.CodecError, match="exceed this decoder's limit"):
        codec.decode_with_net(net, data)


def test_stream_count_must_match_the_tiles():
    net = tiny_net()
    good = codec.encode_with_net(net, random_image(100, 150), tile_size=64)
    header, streams = container.unpack(good)
    for bad in (streams[:-1], streams + streams[:3], streams[:3]):
        with pytest.raises(codec.CodecError, match="expected 18 streams"):
            codec.decode_with_net(net, container.pack(header, bad))


def test_huge_declared_image_with_short_streams_fails_fast_and_small(monkeypatch):
    """16384x16384 declared (allowed by the default Limits), 256 tiles of 1024, streams of a few bytes."""
    net = tiny_net()
    calls = []
    monkeypatch.setattr(net, "decode_latent", lambda *a, **k: calls.append(1))
    z = codec.encode_with_net(net, random_image(64, 64))  # a real z stream for a 64x64 tile, not 1024x1024
    z_stream = container.unpack(z)[1][0]
    data = _file(net, 16384, 16384, 1024, [z_stream, b"\0\0\0\0", b"\0\0\0\0"] * 256)
    measured = reset_peak_rss()
    before = peak_rss_mb() if measured else 0.0
    t = time.perf_counter()
    with pytest.raises(codec.CodecError, match="hyper-latent stream"):
        codec.decode_with_net(net, data)
    assert time.perf_counter() - t < 5
    assert calls == []  # no network ran
    if measured:
        assert peak_rss_mb() - before < 100


def test_corrupt_last_tile_fails_before_any_network_runs(monkeypatch):
    net = tiny_net()
    data = codec.encode_with_net(net, random_image(150, 150, seed=3), tile_size=64)
    header, streams = container.unpack(data)
    calls = []
    monkeypatch.setattr(net, "decode_latent", lambda *a, **k: calls.append(1))
    bad = list(streams)
    bad[-3] = bad[-3][:-4]  # the last tile's z stream, one word short
    with pytest.raises(codec.CodecError, match="hyper-latent"):
        codec.decode_with_net(net, container.pack(header, bad))
    bad = list(streams)
    bad[-1] = bad[-1][:2]  # the last tile's second y stream, shorter than its header
    with pytest.raises(codec.CodecError, match="bad length"):
        codec.decode_with_net(net, container.pack(header, bad))
    assert calls == []


@pytest.mark.slow
def test_tiled_decode_identical_in_fresh_process(tmp_path):
    """Encode with 2 threads here, decode with 1 thread in a fresh process: the same pixels."""
    import subprocess
    import sys

    from conftest import REPO
    from lic.weights import export, load_checkpoint

    weights = tmp_path / "tiny.safetensors"
    export(tiny_net(num_modes=3), weights)
    net = load_checkpoint(weights)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        pixels = random_image(150, 130, seed=9)
        data = codec.encode_with_net(net, pixels, mode=2.5, tile_size=64)
        expected = codec.decode_with_net(net, data)
        reconstruction = per_tile_reconstruction(net, pixels, 64, 1.5)  # g_a on the encoder's threads
    finally:
        torch.set_num_threads(before)
    (tmp_path / "a.lic").write_bytes(data)
    script = (
        "import torch, numpy as np; torch.set_num_threads(1);"
        "from lic import codec; from lic.weights import load_checkpoint;"
        f"net = load_checkpoint(r'{weights}');"
        f"np.save(r'{tmp_path / 'out.npy'}', codec.decode_with_net(net, open(r'{tmp_path / 'a.lic'}', 'rb').read()))"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO, capture_output=True, timeout=600)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)
    np.testing.assert_array_equal(expected, reconstruction)
