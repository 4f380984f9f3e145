"""The decoder's work is bounded by what the model codes, whatever a file's streams declare.

Every y symbol's probability table spans its stream's declared range, so the work of decoding a
stream is (symbols x declared range) table entries.  The decoder refuses ranges beyond
``Cheng2020GMM.symbol_bound`` (checked before any network runs), and the encoder clamps its
symbols to the same bound, so a file it writes is never refused.  Work is counted here in table
entries, not wall-clock time (bench/hostile_decode.py times it).
"""
from __future__ import annotations

import struct

import pytest
import torch

from conftest import KODAK, random_image, tiny_net
from lic import codec, container
from lic.entropy import mixture


@pytest.fixture
def table_entries(monkeypatch):
    """Counts the probability-table entries the decoder builds (rows x declared range)."""
    count = {"entries": 0}
    build = mixture.mixture_pmf

    def counted(params, lo, hi):
        count["entries"] += len(params) * (hi - lo + 1)
        return build(params, lo, hi)
    monkeypatch.setattr(mixture, "mixture_pmf", counted)
    return count


def declare(data: bytes, lo: int, hi: int, keep_words: bool = False) -> bytes:
    """``data`` with every y stream declaring [lo, hi] (its words kept, or none: the decoder reads
    zeros), repacked with a valid CRC."""
    header, streams = container.unpack(data)
    spt = header.streams_per_tile
    out = [s if i % spt == 0 else struct.pack(">hh", lo, hi) + (s[4:] if keep_words else b"")
           for i, s in enumerate(streams)]
    return container.pack(header, out)


def y_symbols(header: container.Header) -> int:
    return header.latent_channels * header.latent_height * header.latent_width


@pytest.mark.parametrize("mode", [1.0, 2.5, 3.0])
def test_hostile_ranges_cost_at_most_the_bound(mode, table_entries):
    net = tiny_net(num_modes=3, seed=2)
    real = codec.encode_with_net(net, random_image(64, 96, seed=5), mode)
    header = container.unpack(real)[0]
    bound = net.symbol_bound(header.mode - 1 + header.mode_frac / 256)
    n = y_symbols(header)

    # the widest range the stream format allows: refused before any table is built
    table_entries["entries"] = 0
    with pytest.raises(codec.CodecError, match=f"outside the -{bound}..{bound} this model codes"):
        codec.decode_with_net(net, declare(real, -2048, 2047))
    with pytest.raises(codec.CodecError, match="outside"):
        codec.decode_with_net(net, declare(real, -bound, bound + 1))
    assert table_entries["entries"] == 0

    # the widest range the decoder accepts: an image, for at most (2 bound + 1) entries per symbol
    for keep_words in (False, True):
        table_entries["entries"] = 0
        out = codec.decode_with_net(net, declare(real, -bound, bound, keep_words))
        assert out.shape == (64, 96, 3)
        assert table_entries["entries"] == n * (2 * bound + 1)


def test_encoder_clamps_to_the_bound_so_its_files_always_decode():
    """A model whose latents exceed the bound (g_a's last convolution scaled up): the encoder codes
    the clamped integers, the file decodes, and the decoder sees exactly the encoder's y_hat."""
    net = tiny_net(num_modes=3, seed=2)
    with torch.no_grad():
        net.g_a[-2].weight.mul_(3000.0)
        net.g_a[-2].bias.add_(500.0)
    x = codec.pad(torch.from_numpy(random_image(64, 64, seed=1)).permute(2, 0, 1)[None].float() / 255,
                  net.downsampling)
    q = 2.0
    bound = net.symbol_bound(q)
    rate = net.rate_of(q)
    assert rate.bound == bound
    with torch.no_grad():
        y = net.analyze(x, rate)
    assert y.abs().max() > 3 * bound                      # well beyond what is coded
    c = net.encode_latent(y, rate)
    assert c.y_hat.abs().max() == bound
    assert torch.equal(c.y_hat, net.coding_symbols(y, q))
    data = codec.encode_with_net(net, random_image(64, 64, seed=1), q + 1)
    for s in container.unpack(data)[1][1:]:
        lo, hi = struct.unpack(">hh", s[:4])
        assert -bound <= lo <= hi <= bound
    codec.decode_with_net(net, data)                     # not refused


def test_bound_grows_with_the_gain_and_covers_fractional_modes():
    net = tiny_net(num_modes=3, seed=2)
    bounds = [net.symbol_bound(q) for q in (0.0, 0.5, 1.0, 1.5, 2.0)]
    assert bounds == sorted(bounds) and bounds[0] < bounds[-1]
    assert bounds[1] == bounds[2] and bounds[3] == bounds[4]   # between two modes: the larger one's
    assert tiny_net().symbol_bound(None) is None               # single-rate: the format's limit alone


def test_shipped_model_codes_natural_images_well_inside_the_bound(kodak_crop):
    """The shipped default on a Kodak crop: the encoder's own symbols stay within 70 % of the bound
    at every mode tried (nothing natural is clamped, and no file it wrote before the bound existed
    is refused; on all of Kodak the widest is 2/3 of it, docs/robustness.md)."""
    from lic.weights import load_model

    if not KODAK.exists():
        pytest.skip("needs ../shared/data/kodak")
    lm = load_model()
    px = kodak_crop[:128, :128]
    for mode in (1.0, 4.5, 8.0):
        header, streams = container.unpack(codec.encode_with_net(lm.net, px, mode, lm.fingerprint))
        bound = lm.net.symbol_bound(mode - 1)
        widest = max(max(-lo, hi) for lo, hi in (struct.unpack(">hh", s[:4]) for s in streams[1:3]))
        assert widest <= 0.7 * bound, (mode, widest, bound)
