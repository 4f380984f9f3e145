"""Images in, ``.lic`` bytes out, and exactly back.

    encode: pixels (H, W, 3) uint8 -> tiles -io.to_tensor, pad to 64-> net.compress -> streams
            [-adapt_layer: every tile's features -> lic.adapt.Fit -> one update stream, last]
            -container.pack(Header, streams)-> bytes
    decode: bytes -container.unpack-> (Header, streams) -check every stream-> per tile:
            net.decompress (with the update's last layer, if the file has one) -> x_hat
            -crop, io.from_tensor-> pixels of that tile

Padding replicates the last row / column up to the next multiple of 64 (the
model's total downsampling); the decoder crops back to the size in the header.

Tiling. An image whose padded size exceeds ``tile_size`` x ``tile_size`` (default
:data:`DEFAULT_TILE_SIZE`, 1024: Kodak's 768x512 is not tiled) is cut, in padded
coordinates, into tiles of ``tile_size`` pixels (the last row and column of
tiles are smaller, still multiples of 64), in raster order. Each tile is coded
on its own, exactly as an untiled image of that size (its streams z, y... follow
those of the previous tile), and the header's ``tile_size`` says how the image
was cut; ``latent_height`` / ``latent_width`` still describe the whole padded
image. Memory therefore depends on the tile, not on the image: neither side
ever runs the networks on more than :data:`MAX_TILE_PIXELS` pixels at once, and
the decoder refuses files whose tiles (or untiled image) are larger.

Untrusted input. Before any network runs, the decoder checks that the number of
streams is (number of tiles) x (streams per tile), that every hyper-latent
stream decodes within its bytes and ends exactly where the encoder started
(:func:`check_hyper_stream`, a bounds-checked replay of CompressAI's rANS
decoder, which itself reads past the end of a short or corrupt string), and
that every latent stream has a valid header whose symbol range lies within
what the model codes at the file's mode (``symbol_bound``: the tables cost that
range per symbol, so the decoder's work stays that of a real file). Any failure while decoding is a
:class:`CodecError` (a :class:`~lic.container.FormatError`), never another
exception (MemoryError aside). See docs/robustness.md.
"""
from __future__ import annotations

import struct
from bisect import bisect_right

import numpy as np
import torch
import torch.nn.functional as F

from lic import adapt, container, io
from lic.container import FormatError, Header, Limits
from lic.entropy.mixture import MixtureStreamError, StreamReader
from lic.models.cheng2020 import Cheng2020GMM
from lic.refine import RefineConfig, mode_lmbda
from lic.weights import LoadedModel, fingerprint, load_for_header, model_id_of, split_mode

PAD = 64
DEFAULT_TILE_SIZE = 1024          # tile side used when the caller does not choose one
MAX_TILE_PIXELS = 2048 * 2048     # largest tile (or untiled padded image) either side processes at once
_MAX_TILE_FIELD = 0xFFFF // PAD * PAD  # largest multiple of 64 that fits the header's u16

__all__ = ["CodecError", "PAD", "DEFAULT_TILE_SIZE", "MAX_TILE_PIXELS", "pad", "tile_grid", "choose_tile_size",
           "check_hyper_stream", "prepare_input", "encode_with_net", "decode_with_net", "encode_image", "decode_image"]


class CodecError(FormatError):
    """A well-formed file that this decoder cannot decode (other weights, bad streams)."""


def pad(x: torch.Tensor, multiple: int = PAD) -> torch.Tensor:
    """(1, 3, H, W) -> (1, 3, H', W') with H', W' the next multiples, edge pixels replicated."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    # replicate padding works for any pad size (reflection needs pad < size)
    return F.pad(x, (0, pw, 0, ph), mode="replicate")


def _padded(height: int, width: int) -> tuple[int, int]:
    return -(-height // PAD) * PAD, -(-width // PAD) * PAD


# ---------------------------------------------------------------------------- tiles


def tile_grid(height: int, width: int, tile_size: int) -> list[tuple[int, int, int, int]]:
    """(top, left, tile_height, tile_width) of every tile, raster order, in padded pixels.

    ``tile_size`` 0 means untiled: one tile, the whole padded image. Every tile
    starts inside the image and its sides are multiples of 64.
    """
    hp, wp = _padded(height, width)
    if tile_size == 0:
        return [(0, 0, hp, wp)] if hp and wp else []
    return [(top, left, min(tile_size, hp - top), min(tile_size, wp - left))
            for top in range(0, hp, tile_size) for left in range(0, wp, tile_size)]


def choose_tile_size(height: int, width: int, tile_size: int | None = None) -> int:
    """The header's ``tile_size`` for an image: 0 (untiled) when its padded size fits one tile.

    ``tile_size``: None for :data:`DEFAULT_TILE_SIZE`, 0 to never tile, else a
    multiple of 64. Raises ValueError for a bad ``tile_size``, or when the tiles
    (or the untiled image) would exceed :data:`MAX_TILE_PIXELS`.
    """
    t = DEFAULT_TILE_SIZE if tile_size is None else tile_size
    if not isinstance(t, int) or isinstance(t, bool) or t < 0 or t % PAD or t > _MAX_TILE_FIELD:
        raise ValueError(f"tile_size must be 0 or a multiple of {PAD} up to {_MAX_TILE_FIELD}, got {t!r}")
    if t and t * t > MAX_TILE_PIXELS:
        raise ValueError(f"tile_size {t} makes tiles of {t * t} pixels, over the limit of {MAX_TILE_PIXELS}")
    hp, wp = _padded(height, width)
    if t == 0 or (hp <= t and wp <= t):
        if hp * wp > MAX_TILE_PIXELS:
            raise ValueError(f"an untiled {width}x{height} image exceeds the limit of {MAX_TILE_PIXELS} "
                             "pixels per tile: give a tile_size")
        return 0
    return t


def _tile_input(pixels: np.ndarray, top: int, left: int, th: int, tw: int) -> torch.Tensor:
    """The tile's pixels as (1, 3, th, tw), replicated past the image's bottom / right edges.

    Identical to cutting the tile out of the whole padded image: padding only
    ever extends the last row / column, which lie in the edge tiles.
    """
    return pad(io.to_tensor(pixels[top:top + th, left:left + tw]))


# ---------------------------------------------------------------------------- hyper-latent stream check

_RANS_L = 1 << 31          # CompressAI's Rans64: lower bound of the normalised state
_PRECISION = 16            # CompressAI's entropy coder precision (bits)
_BYPASS_BITS = 4           # CompressAI's bypass precision
_MAX_BYPASS_NIBBLES = 8    # an int32 raw value never needs more


def _hyper_tables(net: Cheng2020GMM) -> list[tuple[list[int], int]]:
    """(cdf, max_value) per channel of the entropy bottleneck, as CompressAI's decoder sees them."""
    eb = net.entropy_bottleneck
    lengths = eb._cdf_length.reshape(-1).tolist()
    return [(row[:n], n - 2) for row, n in zip(eb._quantized_cdf.tolist(), lengths)]


def check_hyper_stream(tables: list[tuple[list[int], int]], data: bytes, positions: int) -> None:
    """Replay CompressAI's rANS decoding of a hyper-latent stream with bounds checks.

    ``positions`` symbols per channel, channel after channel (CompressAI's order).
    Raises CodecError unless every word read lies inside ``data``, every bypass
    run is one a real encoder writes, and decoding ends with every word consumed
    and the state the encoder started from. CompressAI's own decoder checks none
    of this (it reads past the end of its buffer), so it is only run on streams
    that passed.
    """
    if len(data) < 8 or len(data) % 4:
        raise CodecError(f"corrupt hyper-latent stream (length {len(data)})")
    words = struct.unpack(f"<{len(data) // 4}I", data)
    n = len(words)
    x = words[0] | (words[1] << 32)
    p = 2
    low = _RANS_L
    mask = (1 << _PRECISION) - 1
    overrun = "corrupt hyper-latent stream (runs past its end)"
    for cdf, max_value in tables:
        for _ in range(positions):
            cum = x & mask
            s = bisect_right(cdf, cum) - 1
            start = cdf[s]
            x = (cdf[s + 1] - start) * (x >> _PRECISION) + cum - start
            if x < low:
                if p >= n:
                    raise CodecError(overrun)
                x = (x << 32) | words[p]
                p += 1
            if s == max_value:  # bypass: a count of nibbles (at most 8 from a real encoder), then them
                count = x & 15
                if count > _MAX_BYPASS_NIBBLES:
                    raise CodecError("corrupt hyper-latent stream (bad escape)")
                for _j in range(count + 1):
                    x >>= _BYPASS_BITS
                    if x < low:
                        if p >= n:
                            raise CodecError(overrun)
                        x = (x << 32) | words[p]
                        p += 1
    if p != n or x != _RANS_L:
        raise CodecError("corrupt hyper-latent stream (does not end where it should)")


def _check_latent_stream(data: bytes, bound: int | None) -> None:
    try:
        StreamReader(data, bound)
    except MixtureStreamError as e:
        raise CodecError(str(e)) from None


# ---------------------------------------------------------------------------- encode / decode


def prepare_input(net: Cheng2020GMM, pixels: np.ndarray, mode: float) -> tuple[int, int, float | None, np.ndarray]:
    """Check an encoder's input: (header mode, mode_frac, the net's 0-based mode or None, pixels)."""
    m, frac = split_mode(mode, net.config.num_modes)
    q = None if net.config.num_modes <= 1 else m - 1 + frac / 256
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"pixels must be (H, W, 3) uint8, got {pixels.shape} {pixels.dtype}")
    if pixels.shape[0] < 1 or pixels.shape[1] < 1:
        raise ValueError(f"image has no pixels ({pixels.shape[1]}x{pixels.shape[0]})")
    return m, frac, q, pixels


def encode_with_net(net: Cheng2020GMM, pixels: np.ndarray, mode: float = 1.0, fp: int | None = None,
                    *, tile_size: int | None = None, version: int = container.VERSION,
                    refine: RefineConfig | None = None, adapt_layer: bool = False) -> bytes:
    """Encode one image (H, W, 3) uint8 with ``net`` at 1-based ``mode``; returns the whole file.

    ``tile_size``: see :func:`choose_tile_size` (None: tile images larger than
    :data:`DEFAULT_TILE_SIZE` pixels a side).  ``version``: the format version to write
    (:data:`lic.container.VERSIONS`); 1 only to test that old files still decode.
    ``refine``: search each tile for a cheaper latent than g_a's (:mod:`lic.refine`); the
    file decodes with the same decoder.
    ``adapt_layer``: fit g_s's last layer to this image and send the update when it lowers the
    rate-distortion cost at the mode's lambda (:mod:`lic.adapt`); such a file is version 3, one
    without an update stays version ``version``.  Needs a model that records its lambdas (and a
    version of at least 2); otherwise no update is sent.
    """
    if version not in container.VERSIONS:
        raise ValueError(f"unknown format version {version}")
    m, frac, q, pixels = prepare_input(net, pixels, mode)
    h, w = pixels.shape[:2]
    t = choose_tile_size(h, w, tile_size)
    streams: list[bytes] = []
    fit = adapt.Fit(net) if adapt_layer and version >= 2 and net.config.lmbdas else None
    for top, left, th, tw in tile_grid(h, w, t):
        valid = (min(th, h - top), min(tw, w - left))
        x = _tile_input(pixels, top, left, th, tw)
        c = net.compress(x, q, exact=version >= 2, refine=refine, valid=valid)
        streams += c.streams
        if fit is not None:
            with torch.no_grad():   # the features the decoder will compute for this tile
                fit.add_tile(net.synth_features(c.y_hat, net._gains(q, 1, x.device)), x, valid)
    flags = 0
    if fit is not None:
        update = adapt.choose_update(fit, mode_lmbda(net.config.lmbdas, q))
        if update is not None:
            streams.append(adapt.encode_update(update))
            flags, version = container.FLAG_SYNTHESIS_UPDATE, 3
    lh, lw = container.latent_size(h, w)
    header = Header(model_id=model_id_of(net.config), mode=m, mode_frac=frac,
                    fingerprint=fingerprint(net) if fp is None else fp, height=h, width=w, channels=3,
                    latent_channels=net.config.M, latent_height=lh, latent_width=lw, tile_size=t,
                    version=version, flags=flags)
    return container.pack(header, streams)


def decode_with_net(net: Cheng2020GMM, data: bytes, limits: Limits | None = None, fp: int | None = None) -> np.ndarray:
    """Decode a whole ``.lic`` file with ``net``; returns (H, W, 3) uint8."""
    header, streams = container.unpack(data, limits or Limits())
    return _decode(net, header, streams, fingerprint(net) if fp is None else fp)


def _decode(net: Cheng2020GMM, header: Header, streams: list[bytes], fp: int) -> np.ndarray:
    if header.model_id != model_id_of(net.config):
        raise CodecError(f"file is for model {header.model_name}, not {container.MODEL_IDS[model_id_of(net.config)]}")
    if header.fingerprint != fp:
        raise CodecError("file was made with other weights (fingerprint mismatch)")
    if header.latent_channels != net.config.M:
        raise CodecError("latent channels do not match the model")
    q = None if net.config.num_modes <= 1 else header.mode - 1 + header.mode_frac / 256
    if q is not None and not 0 <= q <= net.config.num_modes - 1:
        raise CodecError(f"mode {header.mode} is not a mode of this model")
    tiles = tile_grid(header.height, header.width, header.tile_size)
    _, _, th0, tw0 = tiles[0]  # the first tile is the largest
    if th0 * tw0 > MAX_TILE_PIXELS:
        raise CodecError(f"tiles of {tw0}x{th0} pixels exceed this decoder's limit of {MAX_TILE_PIXELS} "
                         "pixels per tile")
    spt = header.streams_per_tile   # the model id matched the net's above
    extra = int(header.has_update)
    if len(streams) != len(tiles) * spt + extra:
        raise CodecError(f"expected {len(tiles) * spt + extra} streams ({len(tiles)} tiles of {spt}"
                         + (", and the synthesis update" if extra else "") + f"), found {len(streams)}")
    last = None
    if header.has_update:
        try:
            last = adapt.updated_layer(net, adapt.decode_update(streams[-1], tuple(adapt.shipped_matrix(net).shape)))
        except adapt.UpdateStreamError as e:
            raise CodecError(str(e)) from None

    # Check every stream before any network runs: a corrupt file fails before it costs anything.
    tables = _hyper_tables(net)
    bound = net.symbol_bound(q)   # a y stream's tables cost its declared range per symbol
    for i, (_, _, th, tw) in enumerate(tiles):
        check_hyper_stream(tables, streams[i * spt], (th // PAD) * (tw // PAD))
        for s in streams[i * spt + 1:(i + 1) * spt]:
            _check_latent_stream(s, bound)

    # Pages of the output are only touched as tiles are written.
    out = np.empty((header.height, header.width, 3), dtype=np.uint8)
    for i, (top, left, th, tw) in enumerate(tiles):
        try:
            # version 1: the float32 networks (lic.container.VERSIONS); 2: the exact ones
            x_hat = net.decompress(streams[i * spt:(i + 1) * spt], (th // PAD, tw // PAD), q,
                                   exact=header.version >= 2, last=last)
        except (FormatError, MemoryError):
            raise
        except MixtureStreamError as e:
            raise CodecError(f"{e} in tile {i}" if len(tiles) > 1 else str(e)) from None
        except Exception as e:  # noqa: BLE001 - a corrupt stream is invalid input, never a crash
            raise CodecError(f"corrupt latent stream ({type(e).__name__})") from None
        ch, cw = min(th, header.height - top), min(tw, header.width - left)
        out[top:top + ch, left:left + cw] = io.from_tensor(x_hat[:, :, :ch, :cw])
        del x_hat
    return out


def encode_image(loaded: LoadedModel, pixels: np.ndarray, *, tile_size: int | None = None,
                 refine: RefineConfig | None = None, adapt_layer: bool = True) -> bytes:
    """``encode.py``'s encoder: :func:`encode_with_net` with a loaded model at its mode; like
    ``encode.py`` it sends the per-image last-layer update where it pays (``adapt_layer``; False
    is ``encode.py --no-adapt``; :mod:`lic.adapt`)."""
    return encode_with_net(loaded.net, pixels, loaded.mode + loaded.mode_frac / 256, loaded.fingerprint,
                           tile_size=tile_size, refine=refine, adapt_layer=adapt_layer)


def decode_image(data: bytes, checkpoint: str | None = None, limits: Limits | None = None) -> np.ndarray:
    header, streams = container.unpack(data, limits or Limits())
    loaded = load_for_header(header.model_id, header.mode, header.fingerprint, checkpoint)
    return _decode(loaded.net, header, streams, loaded.fingerprint)
