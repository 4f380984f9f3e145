"""The ``.lic`` container: a fixed header, length-prefixed entropy-coded streams, a CRC32.

This module imports only the standard library (no torch, no numpy), so that
tools can inspect or validate ``.lic`` files cheaply.

Layout (all integers big-endian)::

    offset  size  field
    0       4     magic b"\\x89LIC"
    4       1     version (2 or 3 is written; 1-3 are read, see VERSIONS)
    5       1     model_id          (see MODEL_IDS; append-only)
    6       1     mode              (compression mode, 1..255)
    7       1     mode_frac         (0..255: fraction/256 of the way from mode to mode+1,
                                     variable-rate models only; 0 for fixed-rate models)
    8       1     flags             (0 before version 3; from 3, bit 0 = FLAG_SYNTHESIS_UPDATE:
                                     the last stream updates g_s's last layer; other bits 0)
    9       4     fingerprint       (u32 fingerprint of the weights that produced the file)
    13      4     height            (original image height in pixels)
    17      4     width             (original image width in pixels)
    21      1     channels          (must be 3)
    22      2     latent_channels   (M, >= 1)
    24      2     latent_height     (= ceil(height / pad) * pad / 16, whole padded image; pad: MODELS)
    26      2     latent_width      (= ceil(width / pad) * pad / 16)
    28      2     tile_size         (0 = untiled, else tile side in pixels, multiple of TILE_UNIT = 64)
    30      2     n_streams
    32      4*n   stream lengths    (u32 each)
    ..      ..    stream bytes, concatenated in order
    end-4   4     crc32             (zlib.crc32 of every byte before it)

Validation order in :func:`unpack`: length, magic ("not a .lic file"), version,
then the CRC over the whole file (so a flipped bit anywhere after the version
byte is reported as "checksum mismatch"), then every header field, the
stream lengths and trailing bytes.  The CRC sits at the very end of the file,
so it can be checked without trusting any length field; nothing is ever read
past the end of the input.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Sequence

__all__ = [
    "MAGIC",
    "VERSION",
    "VERSIONS",
    "FLAG_SYNTHESIS_UPDATE",
    "FLAGS_OF_VERSION",
    "ModelFormat",
    "MODELS",
    "MODEL_IDS",
    "VARIABLE_RATE_MODEL_IDS",
    "TILE_UNIT",
    "FormatError",
    "Limits",
    "Header",
    "HEADER_SIZE",
    "latent_size",
    "pack",
    "unpack",
    "peek_header",
]

MAGIC = b"\x89LIC"
VERSION = 2   # what this build writes for a file without flags; with the synthesis update, 3: each
              # file is written with the lowest version that describes it (lic.codec.encode_with_net)

# version -> what changed.  APPEND-ONLY.  The layout below is the same in every version; the
# version says how the decoder must derive the latents' probability tables (for cheng2020-gmm, the
# only architecture of version 1), which flags and which model ids (MODELS[id].since) exist.
VERSIONS: dict[int, str] = {
    1: "tables from the float32 networks (decode on the kind of CPU that encoded)",
    2: "cheng2020-gmm: tables from exactly evaluated networks (lic.models.exact); other models as their own",
    3: "as 2; flags bit 0: the last stream is a per-image update of g_s's last layer (lic.adapt)",
}

# flags bit 0: after every tile's streams comes one more, a quantized update of the synthesis
# transform's last layer for this image (lic.adapt).  Flags a version does not know are invalid.
FLAG_SYNTHESIS_UPDATE = 0x01
FLAGS_OF_VERSION: dict[int, int] = {1: 0, 2: 0, 3: FLAG_SYNTHESIS_UPDATE}

@dataclass(frozen=True)
class ModelFormat:
    """What a file with this model_id holds, as far as the container needs to know it."""

    name: str                  # the id's name (registry entries, ``decode.py --info``, ``encode.py --model``)
    arch: str                  # the architecture that writes and reads it (``lic.models`` registry)
    streams: tuple[str, ...]   # one tile's streams, in order: "z" the hyper-latent, "y" the latent
    pad: int = 64              # the image is padded to a multiple of this: the model's total downsampling
    variable_rate: bool = False   # files may carry a nonzero mode_frac
    since: int = 1             # the first format version that knows this id


_CHENG_SINCE_1 = {"arch": "cheng2020-gmm", "since": 1}
_ONE_Y = ("z", "y")

# model_id -> ModelFormat.  APPEND-ONLY: never renumber, reuse or change an entry; files in the
# wild refer to these numbers.  A new architecture appends its ids here (docs/models.md).
MODELS: dict[int, ModelFormat] = {
    1: ModelFormat("cheng2020-gmm-checkerboard", streams=("z", "y", "y"), **_CHENG_SINCE_1),
    2: ModelFormat("cheng2020-gmm-serial", streams=_ONE_Y, **_CHENG_SINCE_1),
    3: ModelFormat("cheng2020-gmm-vr-checkerboard", streams=("z", "y", "y"), variable_rate=True, **_CHENG_SINCE_1),
    4: ModelFormat("cheng2020-gmm-vr-serial", streams=_ONE_Y, variable_rate=True, **_CHENG_SINCE_1),
    5: ModelFormat("bmshj2018-factorized", "bmshj2018-factorized", ("y",), pad=16, since=2),
    6: ModelFormat("bmshj2018-hyperprior", "bmshj2018-hyperprior", _ONE_Y, since=2),
    7: ModelFormat("mbt2018-mean", "mbt2018-mean", _ONE_Y, since=2),
    8: ModelFormat("mbt2018", "mbt2018", _ONE_Y, since=2),
    9: ModelFormat("cheng2020-anchor", "cheng2020-anchor", _ONE_Y, since=2),
    10: ModelFormat("cheng2020-attn", "cheng2020-attn", _ONE_Y, since=2),
    # ELIC: z, then its five channel groups, each in two checkerboard passes
    11: ModelFormat("elic2022-official", "elic2022-official", ("z",) + ("y",) * 10, since=2),
    12: ModelFormat("bmshj2018-factorized-relu", "bmshj2018-factorized-relu", ("y",), pad=16, since=2),
}

# views of MODELS (not separate facts): id -> name, and the ids of variable-rate models
MODEL_IDS: dict[int, str] = {i: m.name for i, m in MODELS.items()}
VARIABLE_RATE_MODEL_IDS: frozenset[int] = frozenset(i for i, m in MODELS.items() if m.variable_rate)
ARCHS: tuple[str, ...] = tuple(sorted({m.arch for m in MODELS.values()}))   # the architectures with ids

TILE_UNIT = 64       # tile sides are multiples of this (every model's pad divides it)
LATENT_STRIDE = 16   # y is 1/16 of the padded image in every model (the header's latent size)

# Fixed part of the header, up to and including n_streams.
_FIXED = struct.Struct(">4sBBBBBIIIBHHHHH")
HEADER_SIZE = _FIXED.size  # 32
_CRC = struct.Struct(">I")
_CRC_SIZE = _CRC.size  # 4
_MIN_FILE_SIZE = HEADER_SIZE + _CRC_SIZE  # a file with zero streams

_U8 = 0xFF
_U16 = 0xFFFF
_U32 = 0xFFFFFFFF


class FormatError(ValueError):
    """The data is not a valid ``.lic`` file (or it is corrupt).  The message is one line."""


@dataclass(frozen=True)
class Limits:
    """Resource limits applied when reading a file, checked before any decoding."""

    max_pixels: int = 16384 * 16384
    max_side: int = 32768

    def __post_init__(self) -> None:
        if not isinstance(self.max_pixels, int) or self.max_pixels < 1:
            raise ValueError(f"Limits.max_pixels must be a positive int, got {self.max_pixels!r}")
        if not isinstance(self.max_side, int) or self.max_side < 1:
            raise ValueError(f"Limits.max_side must be a positive int, got {self.max_side!r}")


@dataclass(frozen=True)
class Header:
    """Everything in a ``.lic`` file except the streams themselves."""

    model_id: int
    mode: int
    mode_frac: int
    fingerprint: int
    height: int
    width: int
    channels: int
    latent_channels: int
    latent_height: int
    latent_width: int
    tile_size: int
    version: int = VERSION
    flags: int = 0

    @property
    def mode_value(self) -> float:
        """The 1-based mode the header records, mode_frac included: mode + mode_frac / 256."""
        return mode_value(self.mode, self.mode_frac)

    @property
    def has_update(self) -> bool:
        """Whether the last stream is a synthesis update (:data:`FLAG_SYNTHESIS_UPDATE`)."""
        return bool(self.flags & FLAG_SYNTHESIS_UPDATE)

    @property
    def model(self) -> ModelFormat:
        """The model's entry in :data:`MODELS` (KeyError for an unknown id)."""
        return MODELS[self.model_id]

    @property
    def model_name(self) -> str:
        """The model's name from :data:`MODELS` (KeyError for an unknown id)."""
        return self.model.name

    @property
    def streams_per_tile(self) -> int:
        """Streams each tile writes (``MODELS[model_id].streams``: e.g. z, then y per context pass)."""
        return len(self.model.streams)


def mode_value(mode: int, mode_frac: int) -> float:
    """A header's (mode, mode_frac) as one 1-based number: mode + mode_frac / 256."""
    return mode + mode_frac / 256


def latent_size(height: int, width: int, pad: int) -> tuple[int, int]:
    """(latent_height, latent_width) of the whole image padded to multiples of ``pad`` (the model's,
    :data:`MODELS`): ceil(side / pad) * pad / 16."""
    return (-(-height // pad) * pad // LATENT_STRIDE, -(-width // pad) * pad // LATENT_STRIDE)


def _header_problem(h: Header) -> str | None:
    """Return a description of the first invalid field of ``h``, or None when it is valid.

    Shared by :func:`pack` (raises ValueError) and :func:`unpack` (raises FormatError).
    Limits are not checked here.
    """
    for name in ("model_id", "mode", "mode_frac", "fingerprint", "height", "width", "channels",
                 "latent_channels", "latent_height", "latent_width", "tile_size", "version", "flags"):
        value = getattr(h, name)
        if not isinstance(value, int) or isinstance(value, bool):
            return f"header field {name} must be an int, got {type(value).__name__}"
    if h.version not in VERSIONS:
        return f"unsupported version {h.version}"
    if not 0 <= h.flags <= _U8 or h.flags & ~FLAGS_OF_VERSION[h.version]:
        return f"flags 0x{h.flags:02x} are not valid in version {h.version}"
    if h.model_id not in MODELS:
        return f"unknown model_id {h.model_id}"
    if h.version < MODELS[h.model_id].since:
        return f"model {MODELS[h.model_id].name} does not exist in version {h.version}"
    if not 1 <= h.mode <= _U8:
        return f"mode {h.mode} out of range 1..255"
    if not 0 <= h.mode_frac <= _U8:
        return f"mode_frac {h.mode_frac} out of range 0..255"
    if h.mode_frac != 0 and h.model_id not in VARIABLE_RATE_MODEL_IDS:
        return f"mode_frac {h.mode_frac} is nonzero for fixed-rate model {MODEL_IDS[h.model_id]}"
    if not 0 <= h.fingerprint <= _U32:
        return f"fingerprint {h.fingerprint} out of range for u32"
    if not 1 <= h.height <= _U32 or not 1 <= h.width <= _U32:
        return f"image size {h.width}x{h.height} out of range"
    if h.channels != 3:
        return f"channels is {h.channels}, expected 3"
    if not 1 <= h.latent_channels <= _U16:
        return f"latent_channels {h.latent_channels} out of range 1..65535"
    expected = latent_size(h.height, h.width, MODELS[h.model_id].pad)
    if (h.latent_height, h.latent_width) != expected:
        return (f"latent size {h.latent_height}x{h.latent_width} does not match image size "
                f"{h.height}x{h.width} (expected {expected[0]}x{expected[1]})")
    if not 0 <= h.tile_size <= _U16 or h.tile_size % TILE_UNIT != 0:
        return f"tile_size {h.tile_size} is not 0 or a multiple of {TILE_UNIT} below 65536"
    return None


def _limits_problem(h: Header, limits: Limits) -> str | None:
    if h.height > limits.max_side or h.width > limits.max_side:
        return (f"image size {h.width}x{h.height} exceeds the limit of "
                f"{limits.max_side} pixels per side")
    if h.height * h.width > limits.max_pixels:
        return (f"image size {h.width}x{h.height} ({h.height * h.width} pixels) exceeds the "
                f"limit of {limits.max_pixels} pixels")
    return None


def pack(header: Header, streams: Sequence[bytes]) -> bytes:
    """Serialise ``header`` and ``streams`` into a complete ``.lic`` file.

    Raises ValueError when a header field is out of range or inconsistent, when
    there are more than 65535 streams or a stream is 4 GiB or longer.
    """
    problem = _header_problem(header)
    if problem is not None:
        raise ValueError(f"lic: cannot pack header: {problem}")
    streams = [bytes(s) for s in streams]
    if len(streams) > _U16:
        raise ValueError(f"lic: cannot pack {len(streams)} streams (at most 65535)")
    for i, s in enumerate(streams):
        if len(s) > _U32:
            raise ValueError(f"lic: cannot pack stream {i}: {len(s)} bytes exceeds 4 GiB")
    parts = [
        _FIXED.pack(MAGIC, header.version, header.model_id, header.mode, header.mode_frac, header.flags,
                    header.fingerprint, header.height, header.width, header.channels,
                    header.latent_channels, header.latent_height, header.latent_width,
                    header.tile_size, len(streams)),
        struct.pack(f">{len(streams)}I", *(len(s) for s in streams)),
        *streams,
    ]
    body = b"".join(parts)
    return body + _CRC.pack(zlib.crc32(body))


def _corrupt(reason: str) -> FormatError:
    return FormatError(f"lic: corrupt file: {reason}")


def _parse_fixed(data: bytes | bytearray | memoryview, limits: Limits) -> tuple[Header, int]:
    """Parse and validate the fixed header (no CRC).  Returns (header, n_streams)."""
    if len(data) < 4 or bytes(data[:4]) != MAGIC:
        if len(data) == 0:
            raise FormatError("lic: not a .lic file (empty input)")
        if len(data) < 4 and bytes(data) == MAGIC[: len(data)]:
            raise _corrupt(f"truncated: {len(data)} bytes")
        raise FormatError("lic: not a .lic file (bad magic)")
    if len(data) < 5:
        raise _corrupt(f"truncated: {len(data)} bytes")
    version = data[4]
    if version not in VERSIONS:
        raise FormatError(f"lic: unsupported .lic version {version} (this build reads versions "
                          f"{', '.join(map(str, VERSIONS))})")
    if len(data) < HEADER_SIZE:
        raise _corrupt(f"truncated: {len(data)} bytes, the header alone is {HEADER_SIZE}")
    (_magic, version, model_id, mode, mode_frac, flags, fingerprint, height, width, channels,
     latent_channels, latent_height, latent_width, tile_size, n_streams) = _FIXED.unpack_from(data, 0)
    header = Header(model_id=model_id, mode=mode, mode_frac=mode_frac, fingerprint=fingerprint,
                    height=height, width=width, channels=channels, latent_channels=latent_channels,
                    latent_height=latent_height, latent_width=latent_width, tile_size=tile_size,
                    version=version, flags=flags)
    problem = _header_problem(header)
    if problem is not None:
        raise _corrupt(problem)
    problem = _limits_problem(header, limits)
    if problem is not None:
        raise FormatError(f"lic: {problem}")
    return header, n_streams


def peek_header(data: bytes | bytearray | memoryview, limits: Limits = Limits()) -> Header:
    """Parse and validate the header only, from the first 32 bytes of a file.

    Makes every check of :func:`unpack` that does not need the whole file (it
    does not verify the CRC or the stream lengths).  Useful to learn a file's
    model and image size, or to reject it early, before reading all of it.
    """
    header, _ = _parse_fixed(data, limits)
    return header


def unpack(data: bytes | bytearray | memoryview, limits: Limits = Limits()) -> tuple[Header, list[bytes]]:
    """Parse and fully validate a ``.lic`` file.  Raises FormatError on any problem."""
    data = bytes(data)
    # Magic and version first: a file that is not ours, or is from a future
    # version with another layout, should not be called "corrupt".
    if len(data) < 5 or data[:4] != MAGIC or data[4] not in VERSIONS:
        _parse_fixed(data, limits)  # raises the right error
    if len(data) < _MIN_FILE_SIZE:
        raise _corrupt(f"truncated: {len(data)} bytes, a file is at least {_MIN_FILE_SIZE}")
    body = memoryview(data)[:-_CRC_SIZE]
    (stored_crc,) = _CRC.unpack_from(data, len(data) - _CRC_SIZE)
    if zlib.crc32(body) != stored_crc:
        raise _corrupt("checksum mismatch")
    header, n_streams = _parse_fixed(data, limits)
    table_end = HEADER_SIZE + 4 * n_streams
    if table_end > len(body):
        raise _corrupt(f"stream table of {n_streams} entries runs past the end of the file")
    lengths = struct.unpack_from(f">{n_streams}I", data, HEADER_SIZE)
    streams: list[bytes] = []
    pos = table_end
    for i, n in enumerate(lengths):
        if n > len(body) - pos:
            raise _corrupt(f"stream {i} ({n} bytes) runs past the end of the file")
        streams.append(data[pos:pos + n])
        pos += n
    if pos != len(body):
        raise _corrupt(f"{len(body) - pos} trailing bytes after the last stream")
    return header, streams
