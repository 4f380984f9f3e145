"""A factorized-prior model with ReLU transforms (CompressAI's ``bmshj2018-factorized-relu``),
written out here as the worked example of adding an architecture (docs/models.md): this file,
``configs/model/bmshj2018-factorized-relu.yaml`` and its id in ``lic.container.MODELS``.

    x (B, 3, H, W) -g_a-> y (B, M, H/16, W/16) -Q, entropy bottleneck-> y_hat -g_s-> x_hat

The modules carry CompressAI's names (``g_a``, ``g_s``, ``entropy_bottleneck``), so CompressAI's
published checkpoints of this model load as they are (``python -m lic.export --from-compressai``).
How y is coded (one stream, y, by the entropy bottleneck) comes from ``FactorizedCoding``;
training uses ``forward``.
"""
from __future__ import annotations

from compressai.entropy_models import EntropyBottleneck
from compressai.models.utils import conv, deconv
from torch import Tensor, nn

from lic.models.base import RDOutput
from lic.models.compressai_coding import FactorizedCoding, SizeConfig
from lic.models.registry import register


@register("bmshj2018-factorized-relu")
class FactorizedReLU(FactorizedCoding):
    Config = SizeConfig                         # N (transforms), M (channels of y), lmbdas

    @staticmethod
    def compressai_args(config: SizeConfig) -> dict:
        return {}                               # no CompressAI class below this one: nn.Module's init

    def __init__(self, config: SizeConfig | None = None, **kwargs):
        super().__init__(config, **kwargs)
        N, M = self.config.N, self.config.M
        self.entropy_bottleneck = EntropyBottleneck(M)
        self.g_a = nn.Sequential(               # four 5x5 stride-2 convolutions: y is 1/16 of x
            conv(3, N), nn.ReLU(inplace=True),
            conv(N, N), nn.ReLU(inplace=True),
            conv(N, N), nn.ReLU(inplace=True),
            conv(N, M),
        )
        self.g_s = nn.Sequential(
            deconv(M, N), nn.ReLU(inplace=True),
            deconv(N, N), nn.ReLU(inplace=True),
            deconv(N, N), nn.ReLU(inplace=True),
            deconv(N, 3),
        )

    def forward(self, x: Tensor, mode=None) -> RDOutput:
        """x (B, 3, H, W) in [0, 1], H and W multiples of 16: noise in training, rounding around
        the bottleneck's medians in eval (what the coder codes)."""
        y = self.g_a(x)                                     # (B, M, H/16, W/16)
        y_hat, y_likelihoods = self.entropy_bottleneck(y)
        return RDOutput(x_hat=self.g_s(y_hat), likelihoods={"y": y_likelihoods})
