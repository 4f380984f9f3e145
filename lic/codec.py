"""Images in, ``.lic`` bytes out, and exactly back, for any registered model (``lic.models``).

    encode: pixels (H, W, 3) uint8 -> tiles -io.to_tensor, pad-> net.analyze -> y
            [-refine (optional, models that can: lic.refine)-> a cheaper y]
            -net.encode_latent-> one tile's streams and y_hat
            [-adapt_layer: every tile's features -> lic.adapt.Fit -> one update stream, last]
            -container.pack(Header, streams)-> bytes
    decode: bytes -container.unpack-> (Header, streams) -check every stream-> per tile:
            net.decode_latent -> y_hat -net.synthesize (with the update's last layer, if the
            file has one)-> x_hat -crop, io.from_tensor-> pixels of that tile

Padding replicates the last row / column up to the next multiple of the model's total
downsampling (``net.downsampling``, the container's ``MODELS[id].pad``: 64 for the hyperprior
models, 16 for the factorized ones); the decoder crops back to the size in the header.

Tiling. An image whose padded size exceeds ``tile_size`` x ``tile_size`` (default
:data:`DEFAULT_TILE_SIZE`, 1024: Kodak's 768x512 is not tiled) is cut, in padded
coordinates, into tiles of ``tile_size`` pixels (a multiple of 64; the last row and column
of tiles are smaller, still multiples of the model's padding), in raster order. Each tile
is coded on its own, exactly as an untiled image of that size (its streams follow
those of the previous tile), and the header's ``tile_size`` says how the image
was cut; ``latent_height`` / ``latent_width`` still describe the whole padded
image. Memory therefore depends on the tile, not on the image: neither side
ever runs the networks on more than :data:`MAX_TILE_PIXELS` pixels at once, and
the decoder refuses files whose tiles (or untiled image) are larger.

Untrusted input. Before any network runs, the decoder checks that the number of
streams is (number of tiles) x (streams per tile) and runs the model's own stream checks
(``net.check_streams``: cheng2020-gmm replays every hyper-latent stream against its tables and
checks every latent stream's header, whose symbol range must lie within what the model codes at
the file's mode, ``symbol_bound``: the tables cost that range per symbol, so the decoder's work
stays that of a real file).  Every stream that CompressAI's rANS decoder reads is first replayed
with bounds checks (``lic.entropy.rans``; that decoder itself reads past the end of a short or
corrupt string).  Any failure while decoding is a :class:`CodecError` (a
:class:`~lic.container.FormatError`), never another exception (MemoryError aside).  See
docs/robustness.md.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from lic import adapt, container, io
from lic.container import TILE_UNIT, FormatError, Header, Limits
from lic.entropy.mixture import MixtureStreamError
from lic.entropy.rans import RansStreamError, check_bottleneck_stream, entropy_model_tables
from lic.models.base import LicModel, can_adapt, can_refine, decoder_threads
from lic.refine import RefineConfig, mode_lmbda, refine_latent
from lic.weights import LoadedModel, fingerprint, load_for_header, model_mode, split_mode

DEFAULT_TILE_SIZE = 1024          # tile side used when the caller does not choose one
MAX_TILE_PIXELS = 2048 * 2048     # largest tile (or untiled padded image) either side processes at once
_MAX_TILE_FIELD = 0xFFFF // TILE_UNIT * TILE_UNIT  # largest tile side that fits the header's u16

__all__ = ["CodecError", "DEFAULT_TILE_SIZE", "MAX_TILE_PIXELS", "pad", "tile_grid", "choose_tile_size",
           "check_hyper_stream", "prepare_input", "encode_with_net", "decode_with_net", "encode_image", "decode_image"]


class CodecError(FormatError):
    """A well-formed file that this decoder cannot decode (other weights, bad streams)."""


def pad(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """(1, 3, H, W) -> (1, 3, H', W') with H', W' the next multiples, edge pixels replicated."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    # replicate padding works for any pad size (reflection needs pad < size)
    return F.pad(x, (0, pw, 0, ph), mode="replicate")


def _padded(height: int, width: int, multiple: int) -> tuple[int, int]:
    return -(-height // multiple) * multiple, -(-width // multiple) * multiple


# ---------------------------------------------------------------------------- tiles


def tile_grid(height: int, width: int, tile_size: int, multiple: int) -> list[tuple[int, int, int, int]]:
    """(top, left, tile_height, tile_width) of every tile, raster order, in padded pixels.

    ``tile_size`` 0 means untiled: one tile, the whole image padded to a multiple of ``multiple``
    (the model's ``downsampling``). Every tile starts inside the image and its sides are
    multiples of ``multiple``.
    """
    hp, wp = _padded(height, width, multiple)
    if tile_size == 0:
        return [(0, 0, hp, wp)] if hp and wp else []
    return [(top, left, min(tile_size, hp - top), min(tile_size, wp - left))
            for top in range(0, hp, tile_size) for left in range(0, wp, tile_size)]


def choose_tile_size(height: int, width: int, tile_size: int | None = None) -> int:
    """The header's ``tile_size`` for an image: 0 (untiled) when its padded size fits one tile.

    ``tile_size``: None for :data:`DEFAULT_TILE_SIZE`, 0 to never tile, else a
    multiple of 64. Raises ValueError for a bad ``tile_size``, or when the tiles
    (or the untiled image) would exceed :data:`MAX_TILE_PIXELS`.  (Sides padded to 64 fit a
    tile exactly when the sides padded to any model's padding do: tiles are multiples of 64.)
    """
    t = DEFAULT_TILE_SIZE if tile_size is None else tile_size
    if not isinstance(t, int) or isinstance(t, bool) or t < 0 or t % TILE_UNIT or t > _MAX_TILE_FIELD:
        raise ValueError(f"tile_size must be 0 or a multiple of {TILE_UNIT} up to {_MAX_TILE_FIELD}, got {t!r}")
    if t and t * t > MAX_TILE_PIXELS:
        raise ValueError(f"tile_size {t} makes tiles of {t * t} pixels, over the limit of {MAX_TILE_PIXELS}")
    hp, wp = _padded(height, width, TILE_UNIT)
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
    x = io.to_tensor(pixels[top:top + th, left:left + tw])
    return F.pad(x, (0, tw - x.shape[-1], 0, th - x.shape[-2]), mode="replicate") if x.shape[-2:] != (th, tw) else x


# ---------------------------------------------------------------------------- stream checks


def check_hyper_stream(tables: list[tuple[list[int], int]], data: bytes, positions: int) -> None:
    """Replay CompressAI's rANS decoding of a hyper-latent stream with bounds checks
    (``lic.entropy.rans``): ``positions`` symbols per channel, channel after channel (CompressAI's
    order), one channel per table.  Raises CodecError unless it is what an encoder writes."""
    try:
        check_bottleneck_stream(tables, data, positions)
    except RansStreamError as e:
        raise CodecError(str(e)) from None


def _hyper_tables(net: LicModel) -> list[tuple[list[int], int]]:
    """(cdf, max_value) per channel of the net's entropy bottleneck, as CompressAI's decoder sees them."""
    return entropy_model_tables(net.entropy_bottleneck)


# ---------------------------------------------------------------------------- encode / decode


def prepare_input(net: LicModel, pixels: np.ndarray, mode: float) -> tuple[int, int, float | None, np.ndarray]:
    """Check an encoder's input: (header mode, mode_frac, the net's 0-based mode or None, pixels)."""
    m, frac = split_mode(mode, net.num_modes)
    q = model_mode(m, frac, net.num_modes)
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"pixels must be (H, W, 3) uint8, got {pixels.shape} {pixels.dtype}")
    if pixels.shape[0] < 1 or pixels.shape[1] < 1:
        raise ValueError(f"image has no pixels ({pixels.shape[1]}x{pixels.shape[0]})")
    return m, frac, q, pixels


def encode_with_net(net: LicModel, pixels: np.ndarray, mode: float = 1.0, fp: int | None = None,
                    *, tile_size: int | None = None, version: int = container.VERSION,
                    refine: RefineConfig | None = None, adapt_layer: bool = False) -> bytes:
    """Encode one image (H, W, 3) uint8 with ``net`` at 1-based ``mode``; returns the whole file.

    ``tile_size``: see :func:`choose_tile_size` (None: tile images larger than
    :data:`DEFAULT_TILE_SIZE` pixels a side).  ``version``: the format version to write
    (:data:`lic.container.VERSIONS`); 1 only to test that old files still decode.
    ``refine``: search each tile for a cheaper latent than g_a's (:mod:`lic.refine`); the
    file decodes with the same decoder.  ValueError for a model that cannot be refined
    (:func:`lic.models.base.can_refine`) or records no lambda.
    ``adapt_layer``: fit g_s's last layer to this image and send the update when it lowers the
    rate-distortion cost at the mode's lambda (:mod:`lic.adapt`); such a file is version 3, one
    without an update stays version ``version``.  Needs a model with the capability
    (:func:`lic.models.base.can_adapt`) that records its lambdas (and a version of at least 2);
    otherwise no update is sent.
    """
    if version not in container.VERSIONS:
        raise ValueError(f"unknown format version {version}")
    if version < net.format.since:
        raise ValueError(f"model {net.format.name} cannot be written in format version {version}")
    m, frac, q, pixels = prepare_input(net, pixels, mode)
    fp = fingerprint(net) if fp is None else fp     # of the weights as they are before any coding
    refining = refine is not None and refine.steps > 0
    if refining and not can_refine(net):
        raise ValueError(f"the {net.arch} model cannot refine its latent (--refine): it has no "
                         "differentiable rate of a rounded latent (lic.models.base)")
    lmbda = mode_lmbda(net.lmbdas, q) if refining else None   # ValueError without recorded lambdas
    h, w = pixels.shape[:2]
    t = choose_tile_size(h, w, tile_size)
    streams: list[bytes] = []
    fit = adapt.Fit(net) if adapt_layer and version >= 2 and net.lmbdas and can_adapt(net) else None
    rate = net.rate_of(q)
    exact = version >= 2
    for top, left, th, tw in tile_grid(h, w, t, net.downsampling):
        valid = (min(th, h - top), min(tw, w - left))
        x = _tile_input(pixels, top, left, th, tw)
        with torch.no_grad():
            y = net.analyze(x, rate)
        if refining:
            y = refine_latent(net, x, y, rate, lmbda, refine, valid).y
        c = net.encode_latent(y, rate, exact=exact)
        streams += c.streams
        if fit is not None:
            with torch.no_grad():   # the features the decoder will compute for this tile
                fit.add_tile(net.synth_features(c.y_hat, rate), x, valid)
    flags = 0
    if fit is not None:
        update = adapt.choose_update(fit, mode_lmbda(net.lmbdas, q))
        if update is not None:
            streams.append(adapt.encode_update(update))
            flags, version = container.FLAG_SYNTHESIS_UPDATE, 3
    lh, lw = container.latent_size(h, w, net.downsampling)
    header = Header(model_id=net.model_id, mode=m, mode_frac=frac,
                    fingerprint=fp, height=h, width=w, channels=3,
                    latent_channels=net.latent_channels, latent_height=lh, latent_width=lw, tile_size=t,
                    version=version, flags=flags)
    return container.pack(header, streams)


def decode_with_net(net: LicModel, data: bytes, limits: Limits | None = None, fp: int | None = None) -> np.ndarray:
    """Decode a whole ``.lic`` file with ``net``; returns (H, W, 3) uint8."""
    header, streams = container.unpack(data, limits or Limits())
    return _decode(net, header, streams, fingerprint(net) if fp is None else fp)


def _decode(net: LicModel, header: Header, streams: list[bytes], fp: int) -> np.ndarray:
    if header.model_id != net.model_id:
        raise CodecError(f"file is for model {header.model_name}, not {net.format.name}")
    if header.fingerprint != fp:
        raise CodecError("file was made with other weights (fingerprint mismatch)")
    if header.latent_channels != net.latent_channels:
        raise CodecError("latent channels do not match the model")
    q = model_mode(header.mode, header.mode_frac, net.num_modes)
    if q is not None and not 0 <= q <= net.num_modes - 1:
        raise CodecError(f"mode {header.mode} is not a mode of this model")
    tiles = tile_grid(header.height, header.width, header.tile_size, net.downsampling)
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
        if not can_adapt(net):
            raise CodecError(f"file carries a synthesis update, which the {net.arch} model cannot apply")
        try:
            last = adapt.updated_layer(net, adapt.decode_update(streams[-1], tuple(adapt.shipped_matrix(net).shape)))
        except adapt.UpdateStreamError as e:
            raise CodecError(str(e)) from None

    # Check every stream the model can check before any network runs: a corrupt file fails
    # before it costs anything.
    rate = net.rate_of(q)
    for i, (_, _, th, tw) in enumerate(tiles):
        try:
            net.check_streams(streams[i * spt:(i + 1) * spt], (th, tw), rate)
        except (RansStreamError, MixtureStreamError) as e:
            raise CodecError(str(e)) from None

    # Pages of the output are only touched as tiles are written.
    out = np.empty((header.height, header.width, 3), dtype=np.uint8)
    exact = header.version >= 2   # version 1: the float32 networks (lic.container.VERSIONS)
    for i, (top, left, th, tw) in enumerate(tiles):
        try:
            y_hat = net.decode_latent(streams[i * spt:(i + 1) * spt], (th, tw), rate, exact=exact)
            with torch.no_grad(), decoder_threads():
                x_hat = net.synthesize(y_hat, rate, last)
        except (FormatError, MemoryError):
            raise
        except (MixtureStreamError, RansStreamError) as e:
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
    ``encode.py`` it sends the per-image last-layer update where it pays and the model can
    (``adapt_layer``; False is ``encode.py --no-adapt``; :mod:`lic.adapt`)."""
    return encode_with_net(loaded.net, pixels, loaded.mode_value, loaded.fingerprint,
                           tile_size=tile_size, refine=refine, adapt_layer=adapt_layer)


def decode_image(data: bytes, checkpoint: str | None = None, limits: Limits | None = None) -> np.ndarray:
    header, streams = container.unpack(data, limits or Limits())
    loaded = load_for_header(header.model_id, header.mode, header.fingerprint, checkpoint)
    return _decode(loaded.net, header, streams, loaded.fingerprint)
