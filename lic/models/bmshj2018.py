"""Ballé, Minnen, Singh, Hwang & Johnston, ICLR 2018, "Variational Image Compression with a Scale
Hyperprior": CompressAI's ``bmshj2018-factorized`` (a learned density per channel of y) and
``bmshj2018-hyperprior`` (y Gaussian with scales from a hyperprior z), GDN transforms."""
from __future__ import annotations

from compressai.models import FactorizedPrior, ScaleHyperprior
from torch import Tensor

from lic.models.compressai_coding import FactorizedCoding, HyperpriorCoding, ScaleHyperpriorRD
from lic.models.registry import register


@register("bmshj2018-factorized")
class Bmshj2018Factorized(FactorizedCoding, FactorizedPrior):
    """x -g_a-> y (1/16) -entropy bottleneck-> y_hat -g_s-> x_hat.  Stream: y."""


@register("bmshj2018-hyperprior")
class Bmshj2018Hyperprior(ScaleHyperpriorRD, HyperpriorCoding, ScaleHyperprior):
    """z = h_a(|y|), y ~ N(0, h_s(z_hat)).  Streams: z, y.  The coder codes round(y): the latent
    search (``lic.refine``) can run on it."""

    def hyper_input(self, y: Tensor) -> Tensor:
        return y.abs()

    def gaussian_params(self, psi: Tensor) -> tuple[Tensor, None]:
        return psi, None
