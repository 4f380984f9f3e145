"""Cheng, Sun, Takeuchi & Katto, CVPR 2020, as CompressAI has it: ``cheng2020-anchor`` (residual
blocks, sub-pixel convolutions) and ``cheng2020-attn`` (with attention blocks), both with a single
Gaussian and the 5x5 serial context of mbt2018, M = N.  (The paper's mixture of three Gaussians,
a checkerboard context and variable rate are ``cheng2020-gmm``, lic.models.cheng2020.)"""
from __future__ import annotations

from dataclasses import dataclass

from compressai.models import Cheng2020Anchor, Cheng2020Attention
from torch import Tensor

from lic.models.base import SingleRateConfig, SubpelSynthesis
from lic.models.compressai_coding import AutoregressiveCoding
from lic.models.registry import register


@dataclass(frozen=True)
class AnchorConfig(SingleRateConfig):
    """N: channels of the transforms and of y."""

    N: int = 192

    @property
    def M(self) -> int:
        return self.N


class _Cheng2020Coding(SubpelSynthesis, AutoregressiveCoding):
    Config = AnchorConfig

    @staticmethod
    def compressai_args(config) -> dict:
        return {"N": config.N}

    @classmethod
    def config_from_state(cls, state: dict[str, Tensor], **extra):
        return cls.Config(N=state["g_a.0.conv1.weight"].size(0), **extra)


@register("cheng2020-anchor")
class Cheng2020AnchorLic(_Cheng2020Coding, Cheng2020Anchor):
    """Streams: z, y.  g_s ends in a sub-pixel convolution: the per-image update (``lic.adapt``)
    can run on it."""


@register("cheng2020-attn")
class Cheng2020AttnLic(_Cheng2020Coding, Cheng2020Attention):
    """Streams: z, y.  g_s ends in a sub-pixel convolution: the per-image update (``lic.adapt``)
    can run on it."""
