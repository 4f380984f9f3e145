"""Layers that compressai.layers lacks.

compressai's ``MaskedConv2d`` / ``CheckerboardMaskedConv2d`` re-assign
``self.weight.data *= mask`` inside ``forward``: an in-place write to a parameter
that DDP and autograd do not see. Here the mask is applied functionally
(``weight * mask``), so the masked taps never receive gradient and the layer
works unchanged under DDP and torch.compile.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MaskedConv2d(nn.Conv2d):
    """Conv2d whose kernel is multiplied by a fixed 0/1 mask.

    kind="serial": PixelCNN type-A raster mask (rows above, and left of centre).
    kind="checkerboard": taps at odd (dy + dx) offsets only (He et al. 2021):
    a non-anchor position sees its anchor neighbours and nothing else.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 5, kind: str = "serial"):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        k = kernel_size
        mask = torch.zeros(1, 1, k, k)
        if kind == "serial":
            mask[:, :, : k // 2, :] = 1
            mask[:, :, k // 2, : k // 2] = 1
        elif kind == "checkerboard":
            ii, jj = torch.meshgrid(torch.arange(k), torch.arange(k), indexing="ij")
            mask[0, 0] = ((ii + jj) % 2 == 1).float()
        else:
            raise ValueError(f"unknown mask kind {kind!r}")
        self.register_buffer("mask", mask, persistent=False)

    def masked_weight(self) -> Tensor:
        return self.weight * self.mask

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.masked_weight(), self.bias, padding=self.padding)


def checkerboard_masks(h: int, w: int, device=None) -> tuple[Tensor, Tensor]:
    """(anchor, non_anchor) 0/1 float masks of shape (1, 1, h, w); anchors at even (i + j)."""
    ii = torch.arange(h, device=device).view(h, 1)
    jj = torch.arange(w, device=device).view(1, w)
    anchor = ((ii + jj) % 2 == 0).float().view(1, 1, h, w)
    return anchor, 1.0 - anchor
