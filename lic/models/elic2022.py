"""He, Yang, Peng, Ma, Qin & Wang, CVPR 2022, "ELIC: Efficient Learned Image Compression with
Unevenly Grouped Space-Channel Contextual Adaptive Coding": CompressAI's ``elic2022-official``.
y is coded in five channel groups of uneven size (16, 16, 32, 64, M - 128), each from the groups
before it and, in two checkerboard passes, from its own anchors."""
from __future__ import annotations

from dataclasses import dataclass

from compressai.models import Elic2022Official
from torch import Tensor

from lic.container import LATENT_STRIDE
from lic.models.compressai_coding import LatentCodecCoding, SizeConfig
from lic.models.registry import register


@dataclass(frozen=True)
class ElicConfig(SizeConfig):
    """N: channels of the transforms; M: channels of y (more than 128: the first four groups
    take 128)."""

    N: int = 192
    M: int = 320

    def __post_init__(self):
        super().__post_init__()
        if self.M <= 128:
            raise ValueError(f"ELIC needs M > 128 (its first four channel groups take 128), got {self.M}")


@register("elic2022-official")
class Elic2022(LatentCodecCoding, Elic2022Official):
    """Streams: z, then each of the five groups' two checkerboard passes (lic.container.MODELS)."""

    Config = ElicConfig

    @classmethod
    def config_from_state(cls, state: dict[str, Tensor], **extra):
        return cls.Config(N=state["g_a.0.weight"].size(0), M=state["g_a.13.weight"].size(0), **extra)

    def y_shapes(self, tile: tuple[int, int]) -> list[tuple[int, int, int]]:
        h, w = tile[0] // LATENT_STRIDE, tile[1] // LATENT_STRIDE
        return [(g, h, w) for g in self.groups]
