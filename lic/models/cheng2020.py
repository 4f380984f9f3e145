"""Cheng et al., CVPR 2020: "Learned Image Compression with Discretized Gaussian
Mixture Likelihoods and Attention Modules", in one file.

    x ──g_a──> y ──(gain)──> y ──Q──> y_hat ──(inverse gain)──g_s──> x_hat
               │                        │
               └─h_a─> z ─Q─> z_hat ─h_s─> psi ─┐
                                                ├─ entropy_parameters ─> (weights, means, scales), K = 3
               context_prediction(y_hat) ─> phi ┘

Two context models share the same mixture head:

* ``serial``: the paper's 5x5 masked (raster-order) convolution; decoding visits
  the latent positions one by one.
* ``checkerboard``: He et al., CVPR 2021. Anchors (even i + j) are coded first with
  the hyperprior alone, then non-anchors with a 5x5 checkerboard context of the
  decoded anchors: two passes, tens of times faster to decode.

Optionally (``num_modes > 1``) the model is variable-rate: per-channel gain units
(Cui et al., CVPR 2021) scale y before quantization and back after it; mode ``q``
(0-based, continuous) interpolates the gain vectors of its neighbouring modes
geometrically, so one model covers every mode and the rates between them.

``forward`` (training, likelihood estimate) and ``encode_latent`` / ``decode_latent``
(real coding, the protocol of ``lic.models.base``) quantize through ``lic.entropy.quantize`` in
the same way: y_hat = round(y) in both, so ``bpp_est`` from ``forward`` in eval mode and the real
bpp agree.  The coding paths evaluate h_s, the context model and the mixture head through
``lic.models.exact`` (format version 2), so every machine derives the same tables.

Container ids 1-4 (``lic.container.MODELS``): checkerboard or serial, single- or variable-rate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from compressai.entropy_models import EntropyBottleneck
from compressai.layers import (
    AttentionBlock,
    ResidualBlock,
    ResidualBlockUpsample,
    ResidualBlockWithStride,
    conv3x3,
    subpel_conv3x3,
)
from compressai.ops import LowerBound
from torch import Tensor, nn

from lic.entropy.mixture import (
    SCALE_MIN,
    CodingParams,
    StreamReader,
    StreamWriter,
    mixture_likelihood,
    quantize_params,
    support_of,
)
from lic.entropy.quantize import QuantMode, quantize
from lic.entropy.rans import check_bottleneck_stream, entropy_model_tables
from lic.layers import MaskedConv2d, checkerboard_masks
from lic.models.base import (  # noqa: F401  (DECODER_THREADS, decoder_threads: re-exported for bench/)
    DECODER_THREADS,
    Coded,
    LicModel,
    RDOutput,
    SubpelSynthesis,
    bottleneck,
    decoder_threads,
)
from lic.models.exact import ExactHead
from lic.models.registry import register

CONTEXTS = ("checkerboard", "serial")
# (context, variable-rate) -> the container's model id (lic.container.MODELS)
_MODEL_IDS = {("checkerboard", False): 1, ("serial", False): 2, ("checkerboard", True): 3, ("serial", True): 4}

# The coded symbols of a variable-rate model are round(y x gain) with |y| at most Y_LIMIT, so at most
# ceil(Y_LIMIT x the mode's largest gain) in magnitude (``symbol_bound``): the encoder clamps to it and
# the decoder refuses streams that declare more, which bounds the decoder's table work per symbol
# (a hostile file costs at most about 2.5x a real one, docs/robustness.md).  The shipped model's |y|
# (before the gain) reaches 32 on Kodak and 38 on synthetic stripes, edges and text-like graphics;
# only inputs crafted by gradient ascent on |y| go further (87), and those latents are clamped.
Y_LIMIT = 48


def clamp_symbols(y_sym: Tensor, bound: int | None) -> Tensor:
    """The coded integers: y_sym limited to [-bound, bound] (None: as they are)."""
    return y_sym if bound is None else y_sym.clamp(-bound, bound)


class Gains(NamedTuple):
    """What a variable-rate model codes a tile at (``rate_of``): ``rate[0]``, ``rate[1]`` as the
    (gain, inverse gain) pair of ``_gains``, and the bound on the coded symbols."""
    gain: Tensor        # (1, M, 1, 1): y x gain is rounded
    inv_gain: Tensor    # (1, M, 1, 1): y_hat x inv_gain enters g_s
    bound: int          # the largest |symbol| coded (symbol_bound)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture hyperparameters (stored with every checkpoint and export).

    ``M`` and ``N_s`` left as None are resolved to N when the config is built, so
    ``dataclasses.replace(cfg, N=...)`` keeps the old widths: name them in the replace too.
    """

    N: int = 128                     # channels of the transforms
    K: int = 3                       # mixture components
    context: str = "checkerboard"    # "checkerboard" | "serial"
    num_modes: int = 1               # > 1: variable-rate model with gain units
    lmbdas: tuple[float, ...] = ()   # the lambda of each mode (for gain init and training)
    ste_synthesis: bool = False      # g_s sees round(y) with a straight-through gradient while training
    ste_rate: bool = False           # ... and so does the rate: y and z rounded straight through, no noise
                                     # (the "hard" stage of Guo et al., ICML 2021, "Soft then Hard":
                                     # fine-tune the encoder on what will be coded, the decoder frozen;
                                     # measured worse than noise here: docs/history.md)
    M: int | None = None             # channels of y; None: M = N, as in the paper
    N_s: int | None = None           # channels of g_s's 1/16-resolution residual block; None: N (the paper)

    def __post_init__(self):
        object.__setattr__(self, "lmbdas", tuple(float(v) for v in self.lmbdas))
        if self.M is None:
            object.__setattr__(self, "M", self.N)
        if self.N_s is None:
            object.__setattr__(self, "N_s", self.N)

    def to_dict(self) -> dict:
        d = {"N": self.N, "K": self.K, "context": self.context, "num_modes": self.num_modes,
             "lmbdas": list(self.lmbdas), "ste_synthesis": self.ste_synthesis}
        if self.M != self.N:   # written only when it differs: configs from before M existed read the same
            d["M"] = self.M
        if self.N_s != self.N:
            d["N_s"] = self.N_s
        if self.ste_rate:      # likewise: weights trained without it read the same
            d["ste_rate"] = True
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        d["lmbdas"] = tuple(float(v) for v in d.get("lmbdas", ()))
        return cls(**d)


@register("cheng2020-gmm")
class Cheng2020GMM(SubpelSynthesis, LicModel):
    """Cheng 2020 attention model with a K-component discretized Gaussian mixture.

    Streams of a tile: z, then y (two checkerboard passes, or one serial stream)."""

    Config = ModelConfig
    widenable = True   # init_from may start it from a narrower one: lic.training.widen knows its tensors

    def __init__(self, config: ModelConfig | None = None, **kwargs):
        config = config or ModelConfig(**kwargs)
        if config.context not in CONTEXTS:
            raise ValueError(f"context must be one of {CONTEXTS}, got {config.context!r}")
        super().__init__()
        self.config = config
        N, M, K, N_s = config.N, config.M, config.K, config.N_s

        self.g_a = nn.Sequential(
            ResidualBlockWithStride(3, N, stride=2),
            ResidualBlock(N, N),
            ResidualBlockWithStride(N, N, stride=2),
            AttentionBlock(N),
            ResidualBlock(N, N),
            ResidualBlockWithStride(N, N, stride=2),
            ResidualBlock(N, N),
            conv3x3(N, M, stride=2),
            AttentionBlock(M),
        )
        self.g_s = nn.Sequential(
            AttentionBlock(M),
            ResidualBlock(M, N_s),            # (B, N_s, H/16, W/16): with N_s = N, everything g_s
            ResidualBlockUpsample(N_s, N, 2), # draws from y passes N channels at 1/16 resolution
            ResidualBlock(N, N),
            ResidualBlockUpsample(N, N, 2),
            AttentionBlock(N),
            ResidualBlock(N, N),
            ResidualBlockUpsample(N, N, 2),
            ResidualBlock(N, N),
            subpel_conv3x3(N, 3, 2),
        )
        self.h_a = nn.Sequential(
            conv3x3(M, N), nn.LeakyReLU(inplace=True),
            conv3x3(N, N), nn.LeakyReLU(inplace=True),
            conv3x3(N, N, stride=2), nn.LeakyReLU(inplace=True),
            conv3x3(N, N), nn.LeakyReLU(inplace=True),
            conv3x3(N, N, stride=2),
        )
        self.h_s = nn.Sequential(
            conv3x3(N, N), nn.LeakyReLU(inplace=True),
            subpel_conv3x3(N, N, 2), nn.LeakyReLU(inplace=True),
            conv3x3(N, N * 3 // 2), nn.LeakyReLU(inplace=True),
            subpel_conv3x3(N * 3 // 2, N * 3 // 2, 2), nn.LeakyReLU(inplace=True),
            conv3x3(N * 3 // 2, M * 2),
        )
        self.context_prediction = MaskedConv2d(M, 2 * M, 5, kind=config.context)
        self.entropy_parameters = nn.Sequential(
            nn.Conv2d(M * 4, M * 10 // 3, 1), nn.LeakyReLU(inplace=True),
            nn.Conv2d(M * 10 // 3, M * 8 // 3, 1), nn.LeakyReLU(inplace=True),
            nn.Conv2d(M * 8 // 3, 3 * K * M, 1),
        )
        self.entropy_bottleneck = EntropyBottleneck(N)
        self.scale_lower_bound = LowerBound(SCALE_MIN)

        if config.num_modes > 1:
            lm = np.asarray(config.lmbdas or np.geomspace(0.0016, 0.045, config.num_modes), dtype=np.float64)
            if len(lm) != config.num_modes:
                raise ValueError("lmbdas must give one lambda per mode")
            # D ~ step^2 and lambda ~ 1/D: the gain (1/step) grows like sqrt(lambda).
            init = 0.5 * np.log(lm / np.exp(np.log(lm).mean()))
            self.log_gain = nn.Parameter(torch.tensor(init, dtype=torch.float32)[:, None].repeat(1, M))
            self.log_inv_gain = nn.Parameter(-self.log_gain.detach().clone())

    # ------------------------------------------------------------------ identity
    @property
    def model_id(self) -> int:
        return _MODEL_IDS[(self.config.context, self.config.num_modes > 1)]

    @property
    def latent_channels(self) -> int:
        return self.config.M

    # ------------------------------------------------------------------ helpers
    def rate_of(self, q: float | None) -> Gains | None:
        """The gain, inverse gain ((1, M, 1, 1) each) and symbol bound of 0-based mode ``q``; None for
        a single-rate model."""
        gains = self._gains(q, 1, self.g_a[0].conv1.weight.device)
        return None if gains is None else Gains(*gains, self.symbol_bound(q))

    def _gains(self, mode: Tensor | float | None, batch: int, device) -> tuple[Tensor, Tensor] | None:
        """Per-sample gain and inverse gain, (B, M, 1, 1), for continuous 0-based modes."""
        if self.config.num_modes <= 1:
            return None
        if mode is None:
            raise ValueError("a variable-rate model needs a mode")
        q = torch.as_tensor(mode, dtype=torch.float32, device=device).reshape(-1).expand(batch)
        q = q.clamp(0, self.config.num_modes - 1)
        i = q.floor().long().clamp(max=self.config.num_modes - 2)
        f = (q - i.float())[:, None]                                      # (B, 1)
        lg = (1 - f) * self.log_gain[i] + f * self.log_gain[i + 1]        # (B, M)
        lig = (1 - f) * self.log_inv_gain[i] + f * self.log_inv_gain[i + 1]
        return lg.exp()[:, :, None, None], lig.exp()[:, :, None, None]

    def symbol_bound(self, mode: float | None) -> int | None:
        """The largest |symbol| of y coded at 0-based ``mode``: ceil(Y_LIMIT x the largest gain of the
        two integer modes around it, which bound the interpolated gains); None for a single-rate
        model (the stream format's MAX_SUPPORT alone applies).  Computed in float64 from the stored
        log-gains, the same on both sides of the coder."""
        if self.config.num_modes <= 1:
            return None
        q = min(max(float(mode), 0.0), float(self.config.num_modes - 1))
        log_gain = self.log_gain.detach().to(torch.float64)
        top = float(torch.maximum(log_gain[math.floor(q)], log_gain[math.ceil(q)]).max())
        return math.ceil(Y_LIMIT * math.exp(top))

    def coding_symbols(self, y: Tensor, mode: float | None) -> Tensor:
        """The integers the coder writes for a gain-scaled y: round(y), clamped to ``symbol_bound``."""
        return clamp_symbols(quantize(y, QuantMode.ROUND), self.symbol_bound(mode))

    def _mixture(self, ctx: Tensor, psi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(weights, means, scales), each (B, K, M, H, W), from context and hyper features."""
        B, _, H, W = psi.shape
        K, M = self.config.K, self.config.M
        params = self.entropy_parameters(torch.cat([ctx, psi], dim=1))   # (B, 3KM, H, W)
        logits, means, scales = params.reshape(B, 3, K, M, H, W).unbind(1)
        return torch.softmax(logits, dim=1), means, self.scale_lower_bound(scales)

    # ------------------------------------------------------------------ training / estimate
    def forward(self, x: Tensor, mode: Tensor | float | None = None) -> RDOutput:
        """x: (B, 3, H, W) in [0, 1], H and W multiples of 64. Noise in train() (rounding straight
        through with ``ste_rate``), rounding in eval()."""
        qmode = ((QuantMode.STE if self.config.ste_rate else QuantMode.NOISE) if self.training
                 else QuantMode.ROUND)
        gains = self._gains(mode, x.shape[0], x.device)
        y = self.g_a(x)                                   # (B, M, H/16, W/16)
        if gains is not None:
            y = y * gains[0]
        psi, z_lik = self.hyper(y, qmode)                 # (B, 2M, H/16, W/16), (B, N, H/64, W/64)
        y_hat = quantize(y, qmode)
        y_lik = self.latent_likelihood(y_hat, psi)
        y_syn = quantize(y, QuantMode.STE) if (self.training and self.config.ste_synthesis) else y_hat
        x_hat = self.synthesize(y_syn, gains)
        return RDOutput(x_hat=x_hat, likelihoods={"y": y_lik, "z": z_lik})

    def hyper(self, y: Tensor, z_mode: QuantMode) -> tuple[Tensor, Tensor]:
        """The hyperprior of a (gain-scaled) y: (psi (B, 2M, H/16, W/16), z likelihoods (B, N, H/64, W/64))."""
        z = self.h_a(y)                                   # (B, N, H/64, W/64)
        z_hat, z_lik = bottleneck(self.entropy_bottleneck, z, z_mode)
        return self.h_s(z_hat), z_lik

    def latent_likelihood(self, y_hat: Tensor, psi: Tensor) -> Tensor:
        """Likelihood of each element of y_hat (B, M, H/16, W/16) under the context model and the
        mixture whose hyper features are psi; the training-time (float32) path."""
        if self.config.context == "checkerboard":
            anchor, non_anchor = checkerboard_masks(*y_hat.shape[-2:], device=y_hat.device)
            ctx = self.context_prediction(y_hat * anchor) * non_anchor   # anchors: no context
        else:
            ctx = self.context_prediction(y_hat)
        weights, means, scales = self._mixture(ctx, psi)
        return mixture_likelihood(y_hat, weights, means, scales)

    # ------------------------------------------------------------------ real coding
    def _flat_params(self, weights: Tensor, means: Tensor, scales: Tensor, sel: Tensor) -> CodingParams:
        """Gather the (n, K) parameters at positions sel ((M, H, W) bool) of batch item 0."""
        def pick(t: Tensor) -> Tensor:  # (1, K, M, H, W) -> (n, K)
            return t[0].permute(1, 2, 3, 0)[sel]
        return quantize_params(pick(weights), pick(means), pick(scales))

    def coding_head(self, exact: bool = True) -> ExactHead | None:
        """How the coding paths evaluate h_s, the context model and the mixture head: exactly
        (``lic.models.exact``, format version 2: the same tables on every machine) or, for
        version-1 files, with the float32 modules as they were made (None)."""
        return ExactHead(self) if exact else None

    def coding_psi(self, z_hat: Tensor, head: ExactHead | None) -> Tensor:
        """h_s(z_hat) as the coding paths use it: (1, 2M, 4h, 4w)."""
        return self.h_s(z_hat) if head is None else head.psi(z_hat)

    def analyze(self, x: Tensor, rate: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """The gain-scaled y (1, M, H/16, W/16) of a padded tile x (1, 3, H, W) in [0, 1]."""
        y = self.g_a(x)
        return y if rate is None else y * rate[0]

    @torch.no_grad()
    def encode_latent(self, y: Tensor, rate: tuple[Tensor, Tensor] | None = None, exact: bool = True) -> Coded:
        """Code a gain-scaled y (1, M, h, w): streams z, then y (two checkerboard passes or one
        serial stream); y_hat = round(y).  ``exact``: see ``coding_head``."""
        if y.shape[0] != 1:
            raise ValueError("encode_latent codes one tile at a time")
        z = self.h_a(y)
        z_strings = self.entropy_bottleneck.compress(z)     # rounds z - medians, like bottleneck()
        y_sym = clamp_symbols(quantize(y, QuantMode.ROUND), getattr(rate, "bound", None))
        streams = [z_strings[0]]
        with decoder_threads():  # the encoder derives its tables exactly as the decoder will
            z_hat = self.entropy_bottleneck.decompress(z_strings, z.shape[-2:])
            head = self.coding_head(exact)
            psi = self.coding_psi(z_hat, head)
            if self.config.context == "checkerboard":
                streams += self._code_checkerboard(psi, y_sym, head=head)
            else:
                streams += self._code_serial(psi, y_sym, head=head)
        return Coded(streams, y_hat=y_sym)

    def check_streams(self, streams: Sequence[bytes], tile: tuple[int, int], rate: Gains | None = None) -> None:
        """The z stream replayed against the bottleneck's tables (``lic.entropy.rans``, CompressAI's
        decoder reads past the end of a bad one), and the header of every y stream: its symbol range
        within what this mode codes (``symbol_bound``: the tables cost that range per symbol, so the
        decoder's work stays that of a real file)."""
        h, w = tile[0] // self.downsampling, tile[1] // self.downsampling
        check_bottleneck_stream(entropy_model_tables(self.entropy_bottleneck), streams[0], h * w)
        bound = getattr(rate, "bound", None)
        for s in streams[1:]:
            StreamReader(s, bound)

    @torch.no_grad()
    def decode_latent(self, streams: Sequence[bytes], tile: tuple[int, int],
                      rate: tuple[Tensor, Tensor] | None = None, exact: bool = True) -> Tensor:
        """y_hat (1, M, h/16, w/16) of a tile of padded size ``tile`` from its streams (after
        ``check_streams``)."""
        z_shape = (tile[0] // self.downsampling, tile[1] // self.downsampling)
        with decoder_threads():
            z_hat = self.entropy_bottleneck.decompress([streams[0]], z_shape)
            head = self.coding_head(exact)
            psi = self.coding_psi(z_hat, head)
            bound = getattr(rate, "bound", None)
            if self.config.context == "checkerboard":
                return self._code_checkerboard(psi, None, streams[1:], head=head, bound=bound)
            return self._code_serial(psi, None, streams[1:], head=head, bound=bound)

    @torch.no_grad()
    def reconstruct(self, x: Tensor, mode: float | None = None) -> Tensor:
        """g_s of the coded integers (round, clamped to ``symbol_bound``) exactly as the decoder
        computes them, without entropy coding: x_hat (B, 3, H, W)."""
        gains = self._gains(mode, x.shape[0], x.device)
        y = self.g_a(x)
        if gains is not None:
            y = y * gains[0]
        y_hat = self.coding_symbols(y, mode)
        with decoder_threads():
            return self.synthesize(y_hat, gains)

    def synth_input(self, y_hat: Tensor, gains: tuple[Tensor, Tensor] | None) -> Tensor:
        """What enters g_s: y_hat times the mode's inverse gain (y_hat itself for a single-rate model)."""
        return y_hat if gains is None else y_hat * gains[1]

    def latent_rd(self, y_rate: Tensor, y_syn: Tensor, z_mode: QuantMode,
                  gains: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
        """(bits of y_rate and of its z quantized by ``z_mode``, a scalar; g_s(y_syn) (1, 3, H, W)):
        differentiable in both latents (the latent search, ``lic.refine``)."""
        psi, z_lik = self.hyper(y_rate, z_mode)
        y_lik = self.latent_likelihood(y_rate, psi)
        return -torch.log2(y_lik).sum() - torch.log2(z_lik).sum(), self.synthesize(y_syn, gains)

    def checkerboard_passes(self, psi: Tensor, code: Callable[[int, Tensor, CodingParams], np.ndarray],
                            head: ExactHead | None = None) -> Tensor:
        """The two checkerboard passes that encoder, decoder and bit map all run, in this order.

        Pass 1 codes the anchors from the hyperprior alone; pass 2 the non-anchors with the
        context of the pass-1 anchors.  ``code(pass, sel, params)`` codes (writes, reads or
        costs) the symbols at ``sel`` ((M, H, W) bool) and returns them (int64); returns y_hat.
        ``head``: from ``coding_head`` (psi from ``coding_psi`` with the same head); with it the
        parameters are computed only at the positions each pass codes.
        """
        _, M2, H, W = psi.shape
        M = M2 // 2
        anchor, non_anchor = checkerboard_masks(H, W, device=psi.device)
        y_hat = torch.zeros(1, M, H, W, device=psi.device)
        for p, sel_mask in enumerate((anchor, non_anchor)):
            sel = sel_mask[0].bool().expand(M, H, W)                     # (M, H, W)
            if head is None:
                ctx = torch.zeros_like(psi) if p == 0 else self.context_prediction(y_hat * anchor)
                params = self._flat_params(*self._mixture(ctx, psi), sel)
            else:
                pos = sel_mask.flatten().nonzero().squeeze(1)            # (n,) row-major positions
                psi_cols = psi[0].flatten(1)[:, pos]                     # (2M, n)
                ctx = torch.zeros_like(psi_cols) if p == 0 else head.context_at(y_hat * anchor, pos)
                params = head.params(ctx, psi_cols)
            sym = code(p, sel, params)
            y_hat[0][sel] = torch.from_numpy(sym).to(y_hat)
        return y_hat

    def serial_positions(self, psi: Tensor, code: Callable[[int, int, CodingParams], np.ndarray],
                         head: ExactHead | None = None) -> Tensor:
        """Raster-order coding with the 5x5 masked context, one position at a time, as encoder,
        decoder and bit map all run it: each position's parameters come from the same 5x5 patch
        of already-coded latents.  ``code(h, w, params)`` codes the M symbols at (h, w) and
        returns them (int64); returns y_hat."""
        _, M2, H, W = psi.shape
        M = M2 // 2
        k = self.context_prediction.kernel_size[0]
        pad = k // 2
        weight = self.context_prediction.masked_weight()
        bias = self.context_prediction.bias
        y_pad = torch.zeros(1, M, H + 2 * pad, W + 2 * pad, device=psi.device)
        sel = torch.ones(M, 1, 1, dtype=torch.bool)
        for h in range(H):
            for w in range(W):
                patch = y_pad[:, :, h:h + k, w:w + k]                       # (1, M, k, k)
                if head is None:
                    ctx = F.conv2d(patch, weight, bias)                     # (1, 2M, 1, 1)
                    params = self._flat_params(*self._mixture(ctx, psi[:, :, h:h + 1, w:w + 1]), sel)
                else:
                    params = head.params(head.context_of_patch(patch), psi[0, :, h, w, None])
                sym = code(h, w, params)
                y_pad[0, :, h + pad, w + pad] = torch.from_numpy(sym).to(y_pad)
        return y_pad[:, :, pad:pad + H, pad:pad + W].contiguous()

    def _code_checkerboard(self, psi: Tensor, y_sym: Tensor | None, streams: Sequence[bytes] = (),
                           head: ExactHead | None = None, bound: int | None = None):
        """Encode (y_sym given: returns two streams) or decode (returns y_hat; ``bound``: see StreamReader)."""
        if y_sym is None:
            return self.checkerboard_passes(
                psi, lambda p, sel, params: StreamReader(streams[p], bound).read(params), head)
        out: list[bytes] = []

        def write(p: int, sel: Tensor, params: CodingParams) -> np.ndarray:
            sym = y_sym[0][sel].to(torch.int64).numpy()
            writer = StreamWriter(*support_of(sym))
            writer.write(sym, params)
            out.append(writer.getvalue())
            return sym

        self.checkerboard_passes(psi, write, head)
        return out

    def _code_serial(self, psi: Tensor, y_sym: Tensor | None, streams: Sequence[bytes] = (),
                     head: ExactHead | None = None, bound: int | None = None):
        """Encode (y_sym given: returns one stream) or decode (returns y_hat; ``bound``: see StreamReader)."""
        if y_sym is None:
            reader = StreamReader(streams[0], bound)
            return self.serial_positions(psi, lambda h, w, params: reader.read(params), head)
        sym_all = y_sym.to(torch.int64).numpy()                             # (1, M, H, W)
        writer = StreamWriter(*support_of(sym_all))

        def write(h: int, w: int, params: CodingParams) -> np.ndarray:
            writer.write(sym_all[0, :, h, w], params)
            return sym_all[0, :, h, w]

        self.serial_positions(psi, write, head)
        return [writer.getvalue()]
