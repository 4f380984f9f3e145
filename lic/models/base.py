"""The model protocol: the few operations codec, container, training and evaluation need of an
architecture.  A model is one file (a :class:`LicModel` subclass registered by name with
:func:`lic.models.registry.register`) plus one config (``configs/model/NAME.yaml``); nothing
outside ``lic/models`` names a concrete model.

    training:  forward(x, mode) -> RDOutput (x_hat, likelihoods)        aux_loss() (CompressAI)
    coding:    rate = rate_of(q)            q: the model's 0-based mode, None for a single-rate model
               y = analyze(x, rate)                                     (1, M, H/16, W/16)
               encode_latent(y, rate) -> Coded(streams of one tile, y_hat)
               check_streams(streams, tile, rate)                         before any network runs
               decode_latent(streams, tile, rate) -> y_hat
               synthesize(y_hat, rate) -> x_hat                         (1, 3, H, W), unclamped

The container's table (``lic.container.MODELS``) says what each model id's files hold: the names
of one tile's streams and the padding (``downsampling``).  ``encode_latent`` and ``decode_latent``
run every network the decoder runs on :data:`DECODER_THREADS` threads (``decoder_threads``), and
the codec runs ``synthesize`` so too: encoder and decoder compute the same bits on one machine
whatever the caller's thread count.

Optional capabilities, for the encoder strategies of the codec (``lic.refine``, ``lic.adapt``);
a model has them or not (:func:`can_refine`, :func:`can_adapt`), and the codec says so in one line
when asked for one it cannot do:

* ``latent_rd(y_rate, y_syn, z_mode, rate) -> (bits, x_hat)``: a differentiable rate of a latent
  that the coder codes as ``round(y)``, and the synthesis of another (the latent search, refine);
* ``synth_features(y_hat, rate)`` and ``last_layer()``: g_s ends in one linear layer (a 3x3
  convolution and a pixel shuffle) whose inputs the decoder computes (the per-image update, adapt).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Sequence

import torch
import torch.nn.functional as F
from compressai.models import CompressionModel
from torch import Tensor

from lic import container
from lic.entropy.quantize import QuantMode, quantize

DECODER_THREADS = 2  # a constant of the format's implementation: never derived from the machine


@contextmanager
def decoder_threads():
    """Run the decoder-side networks on a FIXED thread count.

    Measured here: oneDNN convolutions give results that differ in the last bit
    between thread counts, enough to flip an 8-bit pixel now and then or, through
    the probability tables, to desynchronise the entropy decoder. With the same
    thread count (DECODER_THREADS, whatever the caller set and however many cores
    the machine has) encoder and decoder compute the same bits in every process.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(DECODER_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class RDOutput:
    """What ``forward`` returns: the reconstruction and the likelihood of every coded element."""

    x_hat: Tensor                     # (B, 3, H, W)
    likelihoods: dict[str, Tensor]    # e.g. {"y": (B, M, H/16, W/16), "z": (B, N, H/64, W/64)}

    def bits(self) -> Tensor:
        """Estimated bits per image, (B,)."""
        return sum(-torch.log2(lik).flatten(1).sum(1) for lik in self.likelihoods.values())

    def bpp_est(self) -> Tensor:
        """Mean estimated bits per pixel over the batch (a scalar)."""
        b, _, h, w = self.x_hat.shape
        return self.bits().sum() / (b * h * w)


@dataclass
class Coded:
    """One tile's real bitstreams, in the order of its model id's ``MODELS[id].streams``."""

    streams: list[bytes]
    y_hat: Tensor      # (1, M, h, w): the latent the decoder will rebuild (what ``synthesize`` takes)


@dataclass(frozen=True)
class SingleRateConfig:
    """Base of a single-rate model's hyperparameters: ``lmbdas`` records the lambda it was trained
    at (what refine and adapt weigh the rate with), empty when unknown."""

    lmbdas: tuple[float, ...] = ()

    num_modes: ClassVar[int] = 1

    def __post_init__(self):
        object.__setattr__(self, "lmbdas", tuple(float(v) for v in self.lmbdas))

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict):
        return cls(**d)


class LicModel(CompressionModel):
    """Base of every registered architecture (a CompressAI ``CompressionModel``: its ``update``,
    ``aux_loss`` and table-resizing ``load_state_dict``).  Subclasses set ``Config`` and implement
    the protocol of the module docstring; ``arch`` is set by ``register``."""

    arch: ClassVar[str] = ""
    Config: ClassVar[type] = SingleRateConfig
    config: Any

    # ------------------------------------------------------------------ identity
    @property
    def model_id(self) -> int:
        """The container's model id of this network (``lic.container.MODELS``)."""
        ids = [i for i, m in container.MODELS.items() if m.arch == self.arch]
        if len(ids) != 1:
            raise NotImplementedError(f"{type(self).__name__} must say which of the ids {ids} it writes")
        return ids[0]

    @property
    def format(self) -> container.ModelFormat:
        return container.MODELS[self.model_id]

    @property
    def downsampling(self) -> int:
        """The image is padded to a multiple of this (the file format's fact, ``MODELS[id].pad``)."""
        return self.format.pad

    @property
    def num_modes(self) -> int:
        return self.config.num_modes

    @property
    def lmbdas(self) -> tuple[float, ...]:
        return tuple(self.config.lmbdas)

    @property
    def latent_channels(self) -> int:
        """M, the channels of y (the header's latent_channels)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ coding
    def rate_of(self, q: float | None) -> Any:
        """What ``analyze`` / ``synthesize`` need to code at 0-based mode ``q`` (None: single-rate)."""
        if self.num_modes > 1:
            raise NotImplementedError(f"{type(self).__name__} is variable-rate but has no rate_of")
        return None

    def analyze(self, x: Tensor, rate: Any = None) -> Tensor:
        """y (1, M, H/16, W/16) of a padded tile x (1, 3, H, W) in [0, 1]."""
        return self.g_a(x)

    def encode_latent(self, y: Tensor, rate: Any = None, exact: bool = True) -> Coded:
        """Code y: one tile's streams and the y_hat the decoder will rebuild.  ``exact``: False
        only for a version-1 file of a model that existed then (``MODELS[id].since``)."""
        raise NotImplementedError

    def check_streams(self, streams: Sequence[bytes], tile: tuple[int, int], rate: Any = None) -> None:
        """Reject (``lic.entropy.rans.RansStreamError`` or another ValueError) streams that no
        encoder wrote at ``rate``, where that can be seen before any network runs (and a stream
        that would cost the decoder more than a real file of its size); ``tile``: (h, w) pixels."""

    def decode_latent(self, streams: Sequence[bytes], tile: tuple[int, int], rate: Any = None,
                      exact: bool = True) -> Tensor:
        """y_hat (1, M, h/16, w/16) from one tile's streams; ``tile``: its padded (h, w) in pixels."""
        raise NotImplementedError

    def synthesize(self, y_hat: Tensor, rate: Any = None, last: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """x_hat (B, 3, H, W), unclamped.  ``last``: (weight, bias) in place of g_s's last layer
        (``lic.adapt``; models with ``last_layer`` only)."""
        if last is not None:
            raise ValueError(f"{self.arch} has no last layer to update")
        return self.g_s(y_hat)


def can_refine(net) -> bool:
    """Whether the latent search (``lic.refine``) can run on ``net``."""
    return callable(getattr(net, "latent_rd", None))


def can_adapt(net) -> bool:
    """Whether the per-image last-layer update (``lic.adapt``) can run on ``net``."""
    return callable(getattr(net, "synth_features", None)) and callable(getattr(net, "last_layer", None))


class SubpelSynthesis:
    """For a g_s (an nn.Sequential) whose last layer is ``subpel_conv3x3``: a 3x3 convolution to
    3 r^2 maps and a pixel shuffle.  Gives a model the ``lic.adapt`` capability."""

    def synth_input(self, y_hat: Tensor, rate: Any) -> Tensor:
        """What enters g_s (y_hat itself, unless the model scales it)."""
        return y_hat

    def synth_features(self, y_hat: Tensor, rate: Any = None) -> Tensor:
        """What enters g_s's last layer (B, N, H/2, W/2): everything of g_s but that layer."""
        return self.g_s[:-1](self.synth_input(y_hat, rate))

    def last_layer(self) -> torch.nn.Conv2d:
        """g_s's last convolution (before the pixel shuffle)."""
        return self.g_s[-1][0]

    def synthesize(self, y_hat: Tensor, rate: Any = None, last: tuple[Tensor, Tensor] | None = None) -> Tensor:
        if last is None:
            return self.g_s(self.synth_input(y_hat, rate))
        feats = self.synth_features(y_hat, rate)                                # (B, N, H/2, W/2)
        return self.g_s[-1][1](F.conv2d(feats, last[0], last[1], padding=1))   # conv, pixel shuffle


def bottleneck(eb, z: Tensor, mode: QuantMode) -> tuple[Tensor, Tensor]:
    """Quantize z (B, C, h, w) around the entropy bottleneck's medians (``lic.entropy.quantize``,
    as ``EntropyBottleneck.compress`` rounds it); returns (z_hat, likelihoods), both like z."""
    B, C, H, W = z.shape
    values = z.permute(1, 0, 2, 3).reshape(C, 1, -1)                  # (C, 1, B*h*w)
    medians = eb._get_medians()                                        # (C, 1, 1)
    z_hat = quantize(values - medians, mode) + medians
    z_lik, _, _ = eb._likelihood(z_hat)
    z_lik = eb.likelihood_lower_bound(z_lik)

    def back(t: Tensor) -> Tensor:
        return t.reshape(C, B, H, W).permute(1, 0, 2, 3)
    return back(z_hat), back(z_lik)


def entropy_tables_ready(net: torch.nn.Module) -> bool:
    """Whether every CompressAI entropy model of ``net`` has its coding tables (``update()`` ran)."""
    from compressai.entropy_models import EntropyModel

    return all(m._quantized_cdf.numel() > 0 for m in net.modules() if isinstance(m, EntropyModel))
