"""CompressAI's architectures behind ``lic``'s model protocol (``lic.models.base``): how each
family codes its latents into one tile's streams, with CompressAI's own modules and entropy
models (``EntropyBottleneck``, ``GaussianConditional`` and their rANS strings).

A wrapped network IS CompressAI's class (``class Mbt2018Mean(HyperpriorCoding,
compressai.models.MeanScaleHyperprior)``): the same modules and state-dict keys, so CompressAI's
published checkpoints load as they are (``python -m lic.export --from-compressai``), and training
uses CompressAI's ``forward`` (noise in training, its "dequantize" rounding in eval).  What is
``lic``'s here:

* the streams of a tile, side information first: ``z`` then ``y`` (one string each, CompressAI's);
* the decoder-side networks (h_s, the context model, the entropy parameters) run on
  :data:`~lic.models.base.DECODER_THREADS` threads on both sides, so a file decodes to the same
  bits under any thread count on the machine that made it.  CompressAI's float32 networks are not
  evaluated exactly (cheng2020-gmm's ``lic.models.exact`` is): another CPU's kernels may derive
  other tables, so these files are not promised to decode on another kind of machine (docs/models.md);
* every stream is replayed with bounds checks before CompressAI's decoder reads it
  (``lic.entropy.rans``): a corrupt or truncated file fails with one line, never a crash;
* the autoregressive family (mbt2018, cheng2020-anchor, cheng2020-attn) codes position by
  position in one loop that encoder and decoder share (CompressAI's ``_compress_ar`` and
  ``_decompress_ar`` are two loops, and the decoder's trusts the stored context weights to be
  masked already).  It rounds y - mean as CompressAI's codec does; CompressAI's ``forward`` rounds
  y itself, so for these models the rate estimate of ``forward`` is close to, not equal to, the
  file's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from compressai.ans import BufferedRansEncoder, RansDecoder
from compressai.entropy_models import EntropyBottleneck
from compressai.layers import MaskedConv2d
from torch import Tensor

from lic.entropy.quantize import QuantMode
from lic.entropy.rans import RansReplay, check_bottleneck_stream, check_coders, entropy_model_tables
from lic.models.base import Coded, LicModel, RDOutput, SingleRateConfig, bottleneck, decoder_threads


@dataclass(frozen=True)
class SizeConfig(SingleRateConfig):
    """N: channels of the transforms; M: channels of y."""

    N: int = 128
    M: int = 192


class CompressAIModel(LicModel):
    """Base of a CompressAI architecture: listed before CompressAI's class among the bases, so
    that its ``__init__`` builds CompressAI's network from the config."""

    Config = SizeConfig

    def __init__(self, config: SizeConfig | None = None, **kwargs):
        config = config if config is not None else self.Config(**kwargs)
        super().__init__(**self.compressai_args(config))
        self.config = config
        self.mask_context_weights()

    def mask_context_weights(self) -> None:
        """Zero the masked taps of every context convolution in the stored weights.

        CompressAI's ``MaskedConv2d`` zeroes them in place on each forward (``weight.data *= mask``),
        so a trained network stores them zeroed, but a fresh one or a state dict that was never
        run does not, and the weights (and the fingerprint written in files) would change under
        the encoder's feet.  Masked once here and after every load, a forward changes nothing."""
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, MaskedConv2d):
                    m.weight.mul_(m.mask)

    def load_state_dict(self, state_dict, strict: bool = True, **kwargs):
        out = super().load_state_dict(state_dict, strict=strict)   # CompressAI's: sizes the coding tables
        self.mask_context_weights()
        return out

    @staticmethod
    def compressai_args(config) -> dict:
        """The arguments of CompressAI's constructor."""
        return {"N": config.N, "M": config.M}

    @classmethod
    def config_from_state(cls, state: dict[str, Tensor], **extra):
        """The config of a CompressAI state dict (its published checkpoints), from tensor shapes
        as CompressAI's ``from_state_dict`` reads them."""
        return cls.Config(N=state["g_a.0.weight"].size(0), M=state["g_a.6.weight"].size(0), **extra)

    @property
    def latent_channels(self) -> int:
        return self.config.M

    def forward(self, x: Tensor, mode: Any = None) -> RDOutput:
        """CompressAI's forward (a single-rate model: ``mode`` is ignored)."""
        out = super().forward(x)
        return RDOutput(x_hat=out["x_hat"], likelihoods=dict(out["likelihoods"]))

    def check_streams(self, streams: Sequence[bytes], tile: tuple[int, int], rate: Any = None) -> None:
        """Stream 0 (z; the factorized models' y) replayed against the entropy bottleneck's tables
        before any network runs; the Gaussian streams are replayed as they are decoded (their
        tables come from h_s)."""
        eb = next(m for m in self.modules() if isinstance(m, EntropyBottleneck))
        h, w = self._z_shape(tile)
        what = "hyper-latent stream" if self.format.streams[0] == "z" else "latent stream"
        check_bottleneck_stream(entropy_model_tables(eb), streams[0], h * w, what)

    def _z_shape(self, tile: tuple[int, int]) -> tuple[int, int]:
        """The shape of the most downsampled latent of a padded tile (h, w)."""
        return tile[0] // self.downsampling, tile[1] // self.downsampling


class FactorizedCoding(CompressAIModel):
    """y coded by an entropy bottleneck (a learned density per channel): one stream, ``y``."""

    def encode_latent(self, y: Tensor, rate: Any = None, exact: bool = True) -> Coded:
        eb = self.entropy_bottleneck
        with torch.no_grad():
            strings = eb.compress(y)
            y_hat = eb.quantize(y, "dequantize", eb._get_medians().detach())   # what decompress returns
        return Coded([strings[0]], y_hat)

    def decode_latent(self, streams: Sequence[bytes], tile: tuple[int, int], rate: Any = None,
                      exact: bool = True) -> Tensor:
        check_coders(self)
        with torch.no_grad():   # y is the whole downsampling below the image here
            return self.entropy_bottleneck.decompress([streams[0]], self._z_shape(tile))


class HyperpriorCoding(CompressAIModel):
    """z coded by the entropy bottleneck, y by the Gaussian conditional with the scales (and,
    for the mean-scale model, the means) of psi = h_s(z_hat): streams ``z``, ``y``."""

    def hyper_input(self, y: Tensor) -> Tensor:
        """What h_a sees (bmshj2018-hyperprior: |y|)."""
        return y

    def gaussian_params(self, psi: Tensor) -> tuple[Tensor, Tensor | None]:
        """(scales, means or None) from psi = h_s(z_hat)."""
        scales, means = psi.chunk(2, 1)
        return scales, means

    @torch.no_grad()
    def encode_latent(self, y: Tensor, rate: Any = None, exact: bool = True) -> Coded:
        eb, gc = self.entropy_bottleneck, self.gaussian_conditional
        z = self.h_a(self.hyper_input(y))
        z_strings = eb.compress(z)
        with decoder_threads():   # the tables exactly as the decoder derives them
            z_hat = eb.decompress(z_strings, z.shape[-2:])
            scales, means = self.gaussian_params(self.h_s(z_hat))
            indexes = gc.build_indexes(scales)
            y_strings = gc.compress(y, indexes, means=means)
            y_hat = gc.quantize(y, "dequantize", means)     # round(y - means) + means: what the decoder gets
        return Coded([z_strings[0], y_strings[0]], y_hat)

    @torch.no_grad()
    def decode_latent(self, streams: Sequence[bytes], tile: tuple[int, int], rate: Any = None,
                      exact: bool = True) -> Tensor:
        eb, gc = self.entropy_bottleneck, self.gaussian_conditional
        check_coders(self)
        with decoder_threads():
            z_hat = eb.decompress([streams[0]], self._z_shape(tile))
            scales, means = self.gaussian_params(self.h_s(z_hat))
            return gc.decompress([streams[1]], gc.build_indexes(scales), z_hat.dtype, means)


class ScaleHyperpriorRD:
    """``latent_rd`` for a scale hyperprior, whose coder codes y_hat = round(y) (no means): the
    latent search (``lic.refine``) can run on it."""

    def latent_rd(self, y_rate: Tensor, y_syn: Tensor, z_mode: QuantMode, rate: Any = None) -> tuple[Tensor, Tensor]:
        z_hat, z_lik = bottleneck(self.entropy_bottleneck, self.h_a(self.hyper_input(y_rate)), z_mode)
        scales, means = self.gaussian_params(self.h_s(z_hat))
        gc = self.gaussian_conditional
        y_lik = gc.likelihood_lower_bound(gc._likelihood(y_rate, scales, means))
        return -torch.log2(y_lik).sum() - torch.log2(z_lik).sum(), self.g_s(y_syn)


class AutoregressiveCoding(CompressAIModel):
    """z by the entropy bottleneck; y position by position in raster order, each position's
    Gaussian from psi = h_s(z_hat) and the 5x5 masked context of the positions before it (one
    rANS string): streams ``z``, ``y``."""

    @torch.no_grad()
    def encode_latent(self, y: Tensor, rate: Any = None, exact: bool = True) -> Coded:
        eb, gc = self.entropy_bottleneck, self.gaussian_conditional
        z = self.h_a(y)
        z_strings = eb.compress(z)
        symbols: list[int] = []
        indexes: list[int] = []

        def write(h: int, w: int, idx: list[int], means: Tensor) -> Tensor:
            sym = gc.quantize(y[:, :, h:h + 1, w:w + 1], "symbols", means)      # round(y - means), (1, M, 1, 1)
            symbols.extend(sym.reshape(-1).tolist())
            indexes.extend(idx)
            return sym

        with decoder_threads():
            z_hat = eb.decompress(z_strings, z.shape[-2:])
            y_hat = self.serial_positions(self.h_s(z_hat), write)
        encoder = BufferedRansEncoder()
        encoder.encode_with_indexes(symbols, indexes, *self._coder_tables())
        return Coded([z_strings[0], encoder.flush()], y_hat)

    @torch.no_grad()
    def decode_latent(self, streams: Sequence[bytes], tile: tuple[int, int], rate: Any = None,
                      exact: bool = True) -> Tensor:
        eb = self.entropy_bottleneck
        check_coders(self)
        tables = self._coder_tables()
        replay = RansReplay(entropy_model_tables(self.gaussian_conditional), streams[1], "latent stream")
        decoder = RansDecoder()
        decoder.set_stream(streams[1])

        def read(h: int, w: int, idx: list[int], means: Tensor) -> Tensor:
            replay.advance(idx)    # CompressAI's decoder then reads only words the replay checked
            return torch.tensor(decoder.decode_stream(idx, *tables), dtype=torch.int32).reshape(1, -1, 1, 1)

        with decoder_threads():
            z_hat = eb.decompress([streams[0]], self._z_shape(tile))
            y_hat = self.serial_positions(self.h_s(z_hat), read)
        replay.finish()
        return y_hat

    def _coder_tables(self) -> tuple[list, list, list]:
        gc = self.gaussian_conditional
        return (gc.quantized_cdf.tolist(), gc.cdf_length.reshape(-1).int().tolist(),
                gc.offset.reshape(-1).int().tolist())

    def serial_positions(self, psi: Tensor, code: Callable[[int, int, list[int], Tensor], Tensor]) -> Tensor:
        """Raster-order coding, as encoder and decoder both run it: each position's parameters from
        psi (1, 2M, H, W) and the masked 5x5 context of the y_hat coded so far.  ``code(h, w,
        indexes, means)`` codes the M symbols at (h, w) (writes or reads them) and returns them
        (1, M, 1, 1); returns y_hat = symbols + means, (1, M, H, W)."""
        gc, cp = self.gaussian_conditional, self.context_prediction
        _, _, H, W = psi.shape
        k = cp.kernel_size[0]
        pad = k // 2
        weight = cp.weight * cp.mask          # masked here: stored weights need not be
        y_pad = psi.new_zeros(1, self.latent_channels, H + 2 * pad, W + 2 * pad)
        for h in range(H):
            for w in range(W):
                ctx = F.conv2d(y_pad[:, :, h:h + k, w:w + k], weight, cp.bias)     # (1, 2M, 1, 1)
                params = self.entropy_parameters(torch.cat((psi[:, :, h:h + 1, w:w + 1], ctx), dim=1))
                scales, means = params.chunk(2, 1)
                sym = code(h, w, gc.build_indexes(scales).reshape(-1).tolist(), means)
                y_pad[:, :, h + pad:h + pad + 1, w + pad:w + pad + 1] = gc.dequantize(sym, means)
        return y_pad[:, :, pad:pad + H, pad:pad + W].contiguous()


class LatentCodecCoding(CompressAIModel):
    """A CompressAI ``SimpleVAECompressionModel`` whose ``latent_codec`` is a
    ``HyperpriorLatentCodec``: its own compress / decompress, z moved to the front of the streams."""

    def y_shapes(self, tile: tuple[int, int]) -> Any:
        """The ``shape["y"]`` its latent codec's decompress takes for a tile of this size."""
        raise NotImplementedError

    @torch.no_grad()
    def encode_latent(self, y: Tensor, rate: Any = None, exact: bool = True) -> Coded:
        with decoder_threads():
            out = self.latent_codec.compress(y)
        *y_strings, z_strings = out["strings"]
        return Coded([z_strings[0]] + [s[0] for s in y_strings], out["y_hat"])

    @torch.no_grad()
    def decode_latent(self, streams: Sequence[bytes], tile: tuple[int, int], rate: Any = None,
                      exact: bool = True) -> Tensor:
        check_coders(self)
        shape = {"y": self.y_shapes(tile), "hyper": self._z_shape(tile)}
        with decoder_threads():
            return self.latent_codec.decompress([[s] for s in streams[1:]] + [[streams[0]]], shape)["y_hat"]
