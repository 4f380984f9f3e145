"""Images in, ``.lic`` bytes out, and exactly back.

    encode: pixels (H, W, 3) uint8 -io.to_tensor-> x -pad to 64-> net.compress -> streams
            -container.pack(Header, streams)-> bytes
    decode: bytes -container.unpack-> (Header, streams) -weights-> net -net.decompress-> x_hat
            -crop, io.from_tensor-> pixels

Padding replicates the last row / column up to the next multiple of 64 (the
model's total downsampling); the decoder crops back to the size in the header.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from lic import container, io
from lic.container import FormatError, Header, Limits
from lic.models.cheng2020 import Cheng2020GMM
from lic.weights import LoadedModel, fingerprint, load_for_header, model_id_of, split_mode

PAD = 64


class CodecError(FormatError):
    """A well-formed file that this decoder cannot decode (other weights, bad streams)."""


def _streams_per_tile(net: Cheng2020GMM) -> int:
    return 3 if net.config.context == "checkerboard" else 2   # z, then y (two passes or one)


def pad(x: torch.Tensor, multiple: int = PAD) -> torch.Tensor:
    """(1, 3, H, W) -> (1, 3, H', W') with H', W' the next multiples, edge pixels replicated."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    # replicate padding works for any pad size (reflection needs pad < size)
    return F.pad(x, (0, pw, 0, ph), mode="replicate")


def encode_with_net(net: Cheng2020GMM, pixels: np.ndarray, mode: float = 1.0, fp: int | None = None) -> bytes:
    """Encode one image (H, W, 3) uint8 with ``net`` at 1-based ``mode``; returns the whole file."""
    m, frac = split_mode(mode, net.config.num_modes)
    q = None if net.config.num_modes <= 1 else m - 1 + frac / 256
    h, w = pixels.shape[:2]
    x = pad(io.to_tensor(pixels))
    c = net.compress(x, q)
    header = Header(model_id=model_id_of(net.config), mode=m, mode_frac=frac,
                    fingerprint=fingerprint(net) if fp is None else fp, height=h, width=w, channels=3,
                    latent_channels=net.config.M, latent_height=c.y_shape[0], latent_width=c.y_shape[1],
                    tile_size=0)
    return container.pack(header, c.streams)


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
    if header.tile_size != 0:
        raise CodecError("tiled files are not supported by this decoder")
    if len(streams) != _streams_per_tile(net):
        raise CodecError(f"expected {_streams_per_tile(net)} streams, found {len(streams)}")
    try:
        q = None if net.config.num_modes <= 1 else header.mode - 1 + header.mode_frac / 256
        if q is not None and not 0 <= q <= net.config.num_modes - 1:
            raise CodecError(f"mode {header.mode} is not a mode of this model")
        z_shape = (header.latent_height // 4, header.latent_width // 4)
        x_hat = net.decompress(streams, z_shape, q)
    except FormatError:
        raise
    except Exception as e:  # noqa: BLE001 - a corrupt stream is invalid input, never a crash
        raise CodecError(f"corrupt latent stream ({type(e).__name__})") from None
    return io.from_tensor(x_hat[:, :, : header.height, : header.width])


def encode_image(loaded: LoadedModel, pixels: np.ndarray) -> bytes:
    return encode_with_net(loaded.net, pixels, loaded.mode + loaded.mode_frac / 256, loaded.fingerprint)


def decode_image(data: bytes, checkpoint: str | None = None, limits: Limits | None = None) -> np.ndarray:
    header, streams = container.unpack(data, limits or Limits())
    loaded = load_for_header(header.model_id, header.mode, header.fingerprint, checkpoint)
    return _decode(loaded.net, header, streams, loaded.fingerprint)
