"""Tests for lic.container: the .lic byte format."""

from __future__ import annotations

import dataclasses
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from lic import container
from lic.container import MAGIC, MODEL_IDS, FormatError, Header, Limits, pack, peek_header, unpack

REPO = Path(__file__).resolve().parents[1]

HEADER = Header(model_id=3, mode=2, mode_frac=128, fingerprint=0xDEADBEEF, height=100, width=130,
                channels=3, latent_channels=192, latent_height=8, latent_width=12, tile_size=64)
STREAMS = [b"abc", b"\x00\x01"]

# Written out by hand from the layout in the spec; pins the format.  If this
# test fails, the on-disk format changed: bump VERSION instead.
GOLDEN = bytes.fromhex(
    "894c4943"   # magic
    "02"         # version
    "03"         # model_id
    "02"         # mode
    "80"         # mode_frac
    "00"         # flags
    "deadbeef"   # fingerprint
    "00000064"   # height 100
    "00000082"   # width 130
    "03"         # channels
    "00c0"       # latent_channels 192
    "0008"       # latent_height ceil(100/64)*4
    "000c"       # latent_width ceil(130/64)*4
    "0040"       # tile_size 64
    "0002"       # n_streams
    "00000003"   # len(stream 0)
    "00000002"   # len(stream 1)
    "616263"     # stream 0
    "0001"       # stream 1
    "1c734ca8"   # crc32 of all the above
)
# The same file as version 1 wrote it (the layout is the same; only the tables differ): still read.
GOLDEN_V1 = GOLDEN[:4] + b"\x01" + GOLDEN[5:-4] + bytes.fromhex("ff3afb0a")


def _reseal(body: bytes) -> bytes:
    """Attach a valid CRC to ``body`` so that tests reach the structural checks."""
    return body + struct.pack(">I", zlib.crc32(body))


def _raw(**fields) -> bytes:
    """Build a file by hand (bypassing pack's validation), with a correct CRC."""
    f = dict(magic=MAGIC, version=container.VERSION, model_id=1, mode=3, mode_frac=0, flags=0, fingerprint=7,
             height=100, width=130, channels=3, latent_channels=192, latent_height=8,
             latent_width=12, tile_size=0)
    streams = fields.pop("streams", [b"xy", b"z"])
    lengths = fields.pop("lengths", [len(s) for s in streams])
    f.update(fields)
    body = struct.pack(">4sBBBBBIIIBHHHHH", f["magic"], f["version"], f["model_id"], f["mode"],
                       f["mode_frac"], f["flags"], f["fingerprint"], f["height"], f["width"],
                       f["channels"], f["latent_channels"], f["latent_height"], f["latent_width"],
                       f["tile_size"], len(lengths))
    body += struct.pack(f">{len(lengths)}I", *lengths) + b"".join(streams)
    return _reseal(body)


def test_golden_bytes():
    assert pack(HEADER, STREAMS) == GOLDEN
    assert zlib.crc32(GOLDEN[:-4]) == 0x1C734CA8
    assert zlib.crc32(GOLDEN_V1[:-4]) == 0xFF3AFB0A


def test_version_1_files_are_still_read_and_written_as_they_were():
    header, streams = unpack(GOLDEN_V1)
    assert header == dataclasses.replace(HEADER, version=1) and streams == STREAMS
    assert pack(header, streams) == GOLDEN_V1
    assert peek_header(GOLDEN_V1[:32]).version == 1 and HEADER.version == 2


def test_version_3_carries_the_synthesis_update_flag():
    """Bit 0 of flags (lic.adapt's update stream) exists from version 3 on: packed and read back
    there, refused in versions 1 and 2 (whose readers required 0)."""
    h3 = dataclasses.replace(HEADER, version=3, flags=container.FLAG_SYNTHESIS_UPDATE)
    data = pack(h3, STREAMS)
    assert data[4] == 3 and data[8] == 1 and data[9:-4] == GOLDEN[9:-4]   # the rest of the layout as before
    header, streams = unpack(data)
    assert header == h3 and header.has_update and streams == STREAMS and not HEADER.has_update
    for version in (1, 2):
        with pytest.raises(ValueError, match="flags"):
            pack(dataclasses.replace(h3, version=version), STREAMS)
        with pytest.raises(FormatError, match="flags"):
            unpack(_raw(version=version, flags=1))
    assert unpack(_raw(version=3, flags=1))[0].has_update


def test_round_trip():
    header, streams = unpack(GOLDEN)
    assert header == HEADER
    assert streams == STREAMS
    assert header.model_name == "cheng2020-gmm-vr-checkerboard"
    assert peek_header(GOLDEN[:32]) == HEADER


@pytest.mark.parametrize("streams", [[], [b""], [b"", b"q" * 1000, b""], [bytes(range(256))] * 5])
def test_round_trip_stream_shapes(streams):
    h = dataclasses.replace(HEADER, model_id=1, mode_frac=0, tile_size=0)
    assert unpack(pack(h, streams)) == (h, streams)


@pytest.mark.parametrize("height,width,lat", [(1, 1, (4, 4)), (64, 64, (4, 4)), (65, 128, (8, 8)),
                                              (32768, 1, (2048, 4))])
def test_latent_size_formula(height, width, lat):
    assert container.latent_size(height, width, 64) == lat
    h = dataclasses.replace(HEADER, height=height, width=width, latent_height=lat[0], latent_width=lat[1])
    assert unpack(pack(h, STREAMS))[0] == h


@pytest.mark.parametrize("height,width,lat", [(1, 1, (1, 1)), (16, 17, (1, 2)), (65, 128, (5, 8))])
def test_latent_size_of_a_model_padded_to_16(height, width, lat):
    """bmshj2018-factorized (id 5) pads to 16: its y is ceil(side / 16), and a header of another
    size is refused."""
    assert container.MODELS[5].pad == 16 and container.latent_size(height, width, 16) == lat
    h = dataclasses.replace(HEADER, model_id=5, mode_frac=0, height=height, width=width,
                            latent_height=lat[0], latent_width=lat[1])
    assert unpack(pack(h, STREAMS))[0] == h
    with pytest.raises(FormatError, match="latent size"):
        unpack(_raw(model_id=5, mode_frac=0, height=height, width=width, latent_height=lat[0] + 1,
                    latent_width=lat[1]))


def test_model_ids_table():
    """Append-only: the ids files were written with keep their names; later ids follow them."""
    assert {i: n for i, n in MODEL_IDS.items() if i <= 4} == {
        1: "cheng2020-gmm-checkerboard", 2: "cheng2020-gmm-serial",
        3: "cheng2020-gmm-vr-checkerboard", 4: "cheng2020-gmm-vr-serial"}
    assert sorted(MODEL_IDS) == list(range(1, len(MODEL_IDS) + 1))
    assert MODEL_IDS == {i: m.name for i, m in container.MODELS.items()}
    assert {i: m.arch for i, m in container.MODELS.items() if i <= 4} == dict.fromkeys(range(1, 5), "cheng2020-gmm")
    assert container.VARIABLE_RATE_MODEL_IDS == {3, 4}
    assert all(container.TILE_UNIT % m.pad == 0 for m in container.MODELS.values())


def test_a_model_id_is_refused_in_a_version_before_it():
    """ids from 5 on exist since version 2: a version-1 file naming one is corrupt, in one line."""
    h = dataclasses.replace(HEADER, model_id=6, mode_frac=0, version=1)
    with pytest.raises(ValueError, match="does not exist in version 1"):
        pack(h, STREAMS)
    with pytest.raises(FormatError, match="does not exist in version 1"):
        unpack(_raw(model_id=6, mode_frac=0, version=1))
    assert unpack(_raw(model_id=6, mode_frac=0, version=2))[0].model_name == "bmshj2018-hyperprior"


@pytest.mark.parametrize("change", [
    dict(model_id=0), dict(model_id=99), dict(mode=0), dict(mode=256), dict(mode_frac=256),
    dict(mode_frac=-1), dict(model_id=1, mode_frac=5), dict(fingerprint=-1), dict(fingerprint=2**32),
    dict(height=0), dict(width=0), dict(channels=1), dict(latent_channels=0),
    dict(latent_channels=65536), dict(latent_height=9), dict(latent_width=11),
    dict(tile_size=100), dict(tile_size=65536), dict(tile_size=-64), dict(mode=3.0),
])
def test_pack_rejects_bad_header(change):
    with pytest.raises(ValueError):
        pack(dataclasses.replace(HEADER, **change), STREAMS)


def test_pack_rejects_too_many_streams():
    with pytest.raises(ValueError):
        pack(HEADER, [b""] * 65536)


def _rejects(data: bytes, match: str, limits: Limits | None = None) -> None:
    with pytest.raises(FormatError, match=match) as info:
        unpack(data, limits or Limits())
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("lic: ")


def test_raw_builder_is_valid():
    # Guards the rejection tests below: the unmodified hand-built file is accepted.
    header, streams = unpack(_raw())
    assert header.height == 100 and streams == [b"xy", b"z"]


@pytest.mark.parametrize("data,match", [
    (b"", "not a .lic file"),
    (b"\x89PNG\r\n\x1a\n" + bytes(60), "not a .lic file"),
    (b"GIF89a", "not a .lic file"),
    (MAGIC, "truncated"),
    (MAGIC + b"\x01" + bytes(20), "truncated"),
    (MAGIC + b"\x01" + bytes(30), "truncated"),
])
def test_rejects_short_or_foreign(data, match):
    _rejects(data, match)


@pytest.mark.parametrize("fields,match", [
    (dict(version=4), "unsupported .lic version 4"),
    (dict(version=3, flags=2), "flags"),      # version 3 knows bit 0 only
    (dict(version=3, flags=0x81), "flags"),
    (dict(version=0), "unsupported .lic version 0"),
    (dict(flags=1), "flags"),
    (dict(flags=0x80), "flags"),
    (dict(model_id=0), "unknown model_id 0"),
    (dict(model_id=len(MODEL_IDS) + 1), f"unknown model_id {len(MODEL_IDS) + 1}"),   # the next, unassigned id
    (dict(mode=0), "mode 0"),
    (dict(mode_frac=1), "mode_frac"),  # nonzero for a fixed-rate model
    (dict(channels=1), "channels"),
    (dict(channels=4), "channels"),
    (dict(height=0, latent_height=0), "image size"),
    (dict(width=0, latent_width=0), "image size"),
    (dict(latent_channels=0), "latent_channels"),
    (dict(latent_height=12), "latent size"),
    (dict(latent_width=8), "latent size"),
    (dict(tile_size=65), "tile_size"),
    (dict(tile_size=100, latent_height=8), "tile_size"),
    (dict(tile_size=128, latent_height=4), "latent size"),  # tiled: still whole-image latent size
    (dict(lengths=[2, 2]), "stream 1 .* runs past the end"),
    (dict(lengths=[2**32 - 1, 1]), "stream 0 .* runs past the end"),
    (dict(lengths=[2]), "trailing bytes"),
    (dict(lengths=[1, 1]), "trailing bytes"),
])
def test_rejects_bad_fields(fields, match):
    _rejects(_raw(**fields), match)


def test_rejects_stream_table_past_end():
    data = _raw(streams=[b"x" * 40])
    body = data[:30] + struct.pack(">H", 1000) + data[32:-4]  # claim 1000 streams
    _rejects(_reseal(body), "stream table of 1000 entries runs past the end")


def test_accepts_tiled_and_variable_rate():
    header, _ = unpack(_raw(model_id=4, mode_frac=255, tile_size=256))
    assert (header.model_id, header.mode_frac, header.tile_size) == (4, 255, 256)


def test_limits():
    big = _raw(height=20000, width=10, latent_height=1252, latent_width=4)
    assert unpack(big)[0].height == 20000
    _rejects(big, "limit of 8 pixels per side", Limits(max_side=8))
    _rejects(big, "limit of 199999 pixels", Limits(max_pixels=199_999))
    assert unpack(big, Limits(max_pixels=200_000, max_side=20000))[0].width == 10
    huge = _raw(height=40000, width=40000, latent_height=2500, latent_width=2500)
    _rejects(huge, "exceeds the limit", Limits())
    with pytest.raises(FormatError, match="exceeds the limit"):
        peek_header(huge)
    with pytest.raises(ValueError):
        Limits(max_pixels=0)


def test_bad_crc():
    data = bytearray(GOLDEN)
    data[-1] ^= 0x01
    _rejects(bytes(data), "checksum mismatch")


def test_truncation_at_every_offset():
    for n in range(len(GOLDEN)):
        with pytest.raises(FormatError):
            unpack(GOLDEN[:n])
    for n in range(1, 40):
        with pytest.raises(FormatError):
            unpack(GOLDEN + bytes(n))


def test_every_single_bit_flip():
    data = bytearray(GOLDEN)
    for i in range(len(data) * 8):
        data[i // 8] ^= 1 << (i % 8)
        with pytest.raises(FormatError) as info:
            unpack(bytes(data))
        # Past magic and version, the CRC catches every single-bit error first.
        if i >= 5 * 8:
            assert "checksum mismatch" in str(info.value), i
        data[i // 8] ^= 1 << (i % 8)
    assert bytes(data) == GOLDEN


def test_peek_header_skips_crc_but_not_fields():
    assert peek_header(GOLDEN[:32] + b"garbage") == HEADER
    with pytest.raises(FormatError, match="flags"):
        peek_header(_raw(flags=2))
    with pytest.raises(FormatError, match="truncated"):
        peek_header(GOLDEN[:31])


def test_import_is_stdlib_only():
    code = ("import sys; import lic.container; "
            "bad = [m for m in ('torch', 'numpy', 'PIL') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_streams_per_tile_follow_the_context():
    want = {"cheng2020-gmm-checkerboard": 3, "cheng2020-gmm-serial": 2,
            "cheng2020-gmm-vr-checkerboard": 3, "cheng2020-gmm-vr-serial": 2,
            "bmshj2018-factorized": 1, "bmshj2018-hyperprior": 2, "mbt2018-mean": 2, "mbt2018": 2,
            "cheng2020-anchor": 2, "cheng2020-attn": 2, "elic2022-official": 11, "bmshj2018-factorized-relu": 1}
    assert set(want) == set(MODEL_IDS.values())
    for model_id, name in MODEL_IDS.items():
        h = dataclasses.replace(HEADER, model_id=model_id, mode_frac=0)
        assert h.streams_per_tile == want[name]
