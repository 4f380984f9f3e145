"""Fuzzing the container and the decoder: every input is an image or a FormatError, nothing else.

A quick version of ``bench/fuzz_decoder.py`` (which runs long campaigns): random
bytes, every truncation and every single-bit flip of real files, and mutations
with the CRC recomputed, so that they reach the stream checks and the entropy
decoders. CodecError is a FormatError.
"""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REPO, random_image, tiny_net
from lic import codec, container
from lic.container import FormatError
from lic.weights import fingerprint

FUZZ = settings(max_examples=int(os.environ.get("LIC_FUZZ_EXAMPLES", "60")), deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def reseal(body: bytes) -> bytes:
    return body + struct.pack(">I", zlib.crc32(body))


class Target:
    """Tiny nets and real files made with them: untiled, tiled, serial, variable-rate."""

    def __init__(self):
        self.nets = {1: tiny_net("checkerboard"), 2: tiny_net("serial"), 3: tiny_net(num_modes=3, seed=2)}
        self.fps = {k: fingerprint(n) for k, n in self.nets.items()}
        self.files = [
            codec.encode_with_net(self.nets[1], random_image(64, 64, seed=1)),
            codec.encode_with_net(self.nets[1], random_image(100, 150, seed=2), tile_size=64),  # 6 tiles
            codec.encode_with_net(self.nets[2], random_image(60, 128, seed=3), tile_size=64),
            codec.encode_with_net(self.nets[3], random_image(64, 80, seed=4), mode=2.5),
        ]

    def decode(self, data: bytes):
        """Decode with the net the header names (checkerboard when unreadable): ndarray or FormatError."""
        try:
            model_id = container.peek_header(data).model_id
        except FormatError:
            model_id = 1
        net_id = model_id if model_id in self.nets else 1
        try:
            out = codec.decode_with_net(self.nets[net_id], data, fp=self.fps[net_id])
        except FormatError as e:
            assert str(e) and "\n" not in str(e)
            return e
        header = container.peek_header(data)
        assert isinstance(out, np.ndarray) and out.dtype == np.uint8
        assert out.shape == (header.height, header.width, 3)
        return out


@pytest.fixture(scope="module")
def target() -> Target:
    torch.set_num_threads(1)
    return Target()


# ------------------------------------------------------------------ container only


@FUZZ
@given(data=st.binary(max_size=300))
def test_unpack_random_bytes(data):
    try:
        container.unpack(data)
    except FormatError:
        pass


@FUZZ
@given(data=st.binary(max_size=300))
def test_unpack_random_bytes_after_magic(data):
    with pytest.raises(FormatError):
        container.unpack(container.MAGIC + bytes([container.VERSION]) + data)  # CRC


@FUZZ
@given(data=st.binary(min_size=27, max_size=300))
def test_unpack_random_body_with_valid_crc(data):
    body = container.MAGIC + bytes([container.VERSION]) + data
    try:
        header, streams = container.unpack(reseal(body))
    except FormatError:
        return
    assert container.pack(header, streams) == reseal(body)  # anything accepted is canonical


def test_every_truncation_is_rejected(target):
    for data in target.files:
        for n in range(len(data)):
            with pytest.raises(FormatError):
                container.unpack(data[:n])
            with pytest.raises(FormatError):
                codec.decode_with_net(target.nets[1], data[:n], fp=target.fps[1])


def test_every_single_bit_flip_is_rejected(target):
    for data in target.files[:2]:
        for i in range(len(data)):
            for bit in range(8):
                bad = bytearray(data)
                bad[i] ^= 1 << bit
                with pytest.raises(FormatError, match="checksum mismatch|not a .lic file|version"):
                    container.unpack(bytes(bad))


# ------------------------------------------------------------------ the decoder, CRC recomputed

_op = st.tuples(st.sampled_from(["flip", "set", "insert", "delete", "field"]),
                st.floats(0, 1, exclude_max=True), st.binary(min_size=1, max_size=16))
_FIELDS = [(5, 1), (6, 1), (7, 1), (8, 1), (9, 4), (13, 4), (17, 4), (21, 1), (22, 2), (24, 2), (26, 2),
           (28, 2), (30, 2)]


@FUZZ
@given(which=st.integers(0, 3), ops=st.lists(_op, min_size=1, max_size=5))
def test_decoder_body_mutations_with_crc(target, which, ops):
    body = bytearray(target.files[which][:-4])
    for kind, where, value in ops:
        i = int(where * len(body)) if body else 0
        if kind == "flip" and body:
            body[i] ^= 1 << (value[0] % 8)
        elif kind == "set" and body:
            body[i] = value[0]
        elif kind == "insert":
            body[i:i] = value
        elif kind == "delete":
            del body[i:i + len(value)]
        elif kind == "field" and len(body) >= container.HEADER_SIZE:
            off, size = _FIELDS[int(where * len(_FIELDS))]
            body[off:off + size] = (value * 4)[:size]
    target.decode(reseal(bytes(body)))


_stream_op = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 400)),
    st.tuples(st.just("extend"), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("replace"), st.binary(max_size=200)),
    st.tuples(st.just("flip"), st.integers(0, 10_000)),
    st.tuples(st.just("word"), st.integers(0, 100), st.sampled_from([0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF])),
    st.tuples(st.just("support"), st.integers(-32768, 32767), st.integers(-32768, 32767)),
    st.tuples(st.just("swap"), st.integers(0, 100)),
)


@FUZZ
@given(which=st.integers(0, 3), index=st.integers(0, 100), op=_stream_op)
def test_decoder_stream_mutations_with_crc(target, which, index, op):
    """One stream mutated, the file repacked (valid CRC): reaches the stream checks and entropy decoders."""
    header, streams = container.unpack(target.files[which])
    streams = list(streams)
    i = index % len(streams)
    s = bytearray(streams[i])
    if op[0] == "truncate":
        s = s[:op[1] % (len(s) + 1)]
    elif op[0] == "extend":
        s += op[1]
    elif op[0] == "replace":
        s = bytearray(op[1])
    elif op[0] == "flip" and s:
        bit = op[1] % (8 * len(s))
        s[bit // 8] ^= 1 << (bit % 8)
    elif op[0] == "word" and len(s) >= 4:
        j = op[1] % (len(s) // 4) * 4
        s[j:j + 4] = op[2].to_bytes(4, "little")
    elif op[0] == "support" and len(s) >= 4:
        s[:4] = struct.pack(">hh", min(op[1], op[2]), max(op[1], op[2]))
    elif op[0] == "swap":
        j = op[1] % len(streams)
        s, streams[j] = bytearray(streams[j]), bytes(s)
    streams[i] = bytes(s)
    target.decode(container.pack(header, streams))


@FUZZ
@given(which=st.integers(0, 3), data=st.data())
def test_decoder_random_streams_with_crc(target, which, data):
    """Every stream replaced by random bytes of a plausible length (multiple of 4 half the time)."""
    header, streams = container.unpack(target.files[which])
    new = []
    for s in streams:
        n = data.draw(st.integers(0, 2 * len(s) + 8))
        if data.draw(st.booleans()):
            n -= n % 4
        new.append(data.draw(st.binary(min_size=n, max_size=n)))
    target.decode(container.pack(header, new))


def test_the_real_files_decode(target):
    for data in target.files:
        assert isinstance(target.decode(data), np.ndarray)


# ------------------------------------------------------------------ the hyper-latent stream check


@pytest.mark.parametrize("scale", [0.5, 3.0, 100.0, 1e5])
def test_hyper_stream_check_accepts_what_compressai_writes(scale):
    """Real streams pass (large scales force CompressAI's bypass escapes); any cut or extension fails."""
    net = tiny_net()
    eb = net.entropy_bottleneck
    tables = codec._hyper_tables(net)
    torch.manual_seed(0)
    z = torch.randn(1, 8, 3, 5) * scale
    s = eb.compress(z)[0]
    codec.check_hyper_stream(tables, s, 15)
    medians = eb._get_medians().reshape(1, -1, 1, 1)
    torch.testing.assert_close(eb.decompress([s], (3, 5)), torch.round(z - medians) + medians)
    for bad in (s[:-4], s[4:], s + b"\0\0\0\0", s + s, b"", s[:7]):
        with pytest.raises(codec.CodecError, match="hyper-latent"):
            codec.check_hyper_stream(tables, bad, 15)
    with pytest.raises(codec.CodecError, match="hyper-latent"):
        codec.check_hyper_stream(tables, s, 16)  # one symbol more per channel than was written


# ------------------------------------------------------------------ the CLI


def _cli_target(tmp_path, target):
    from lic.weights import export

    ckpt = tmp_path / "tiny.safetensors"
    export(target.nets[1], ckpt)
    return ckpt


def test_cli_decode_corrupt_files(tmp_path, target, capsys):
    from lic.cli import decode_main
    from lic.weights import load_checkpoint

    ckpt = _cli_target(tmp_path, target)
    net = load_checkpoint(ckpt)
    good = codec.encode_with_net(net, random_image(100, 150, seed=2), tile_size=64)
    header, streams = container.unpack(good)
    cases = {
        "random": bytes(range(256)) * 2,
        "truncated": good[:len(good) // 2],
        "z_cut": container.pack(header, [streams[0][:-4]] + list(streams[1:])),
        "y_support": container.pack(header, list(streams[:1]) + [b"\x80\x00\x7f\xff" + streams[1][4:]]
                                    + list(streams[2:])),
        "count": container.pack(header, streams[:-1]),
    }
    for name, data in cases.items():
        src = tmp_path / f"{name}.lic"
        src.write_bytes(data)
        assert decode_main([str(src), "--checkpoint", str(ckpt), "-o", str(tmp_path / "out.png")]) == 3, name
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith("lic-decode: error: "), (name, err)
    assert not (tmp_path / "out.png").exists()
    # a y stream with random content but a valid header decodes to an image (of noise)
    y_noise = container.pack(header, list(streams[:1]) + [streams[1][:4] + bytes(range(40))] + list(streams[2:]))
    (tmp_path / "noise.lic").write_bytes(y_noise)
    assert decode_main([str(tmp_path / "noise.lic"), "--checkpoint", str(ckpt)]) in (0, 3)


@pytest.mark.slow
def test_cli_decode_process_corrupt_stream(tmp_path, target):
    """The real decode.py on a CRC-valid file whose hyper-latent stream is corrupt: exit 3, one line."""
    ckpt = _cli_target(tmp_path, target)
    from lic.weights import load_checkpoint

    net = load_checkpoint(ckpt)
    header, streams = container.unpack(codec.encode_with_net(net, random_image(64, 64)))
    src = tmp_path / "bad.lic"
    src.write_bytes(container.pack(header, [streams[0] + b"\xff\xff\xff\xff"] + list(streams[1:])))
    env = {k: v for k, v in os.environ.items() if k not in ("LIC_CHECKPOINT", "LIC_DEBUG")}
    r = subprocess.run([sys.executable, str(REPO / "decode.py"), str(src), "--checkpoint", str(ckpt)],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert r.returncode == 3, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lic-decode: error: ") and "hyper-latent" in lines[0], r.stderr
    assert not (tmp_path / "bad.png").exists()
