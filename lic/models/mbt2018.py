"""Minnen, Ballé & Toderici, NeurIPS 2018, "Joint Autoregressive and Hierarchical Priors for
Learned Image Compression": CompressAI's ``mbt2018-mean`` (y ~ N(mean, scale) from the
hyperprior) and ``mbt2018`` (the same with a 5x5 autoregressive context, decoded position by
position)."""
from __future__ import annotations

from compressai.models import JointAutoregressiveHierarchicalPriors, MeanScaleHyperprior

from lic.models.compressai_coding import AutoregressiveCoding, HyperpriorCoding
from lic.models.registry import register


@register("mbt2018-mean")
class Mbt2018Mean(HyperpriorCoding, MeanScaleHyperprior):
    """(scales, means) = h_s(z_hat); the coder codes round(y - means).  Streams: z, y."""


@register("mbt2018")
class Mbt2018(AutoregressiveCoding, JointAutoregressiveHierarchicalPriors):
    """Gaussian parameters from h_s(z_hat) and the masked 5x5 context.  Streams: z, y."""
