"""Shared fixtures: tiny untrained models (entropy tables updated) and small images."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts OpenMP: see lic/cli.py

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
KODAK = SHARED / "data" / "kodak"


def tiny_net(context: str = "checkerboard", num_modes: int = 1, N: int = 8, seed: int = 0, M: int | None = None,
             lmbdas: tuple[float, ...] = ()):
    from lic.models import Cheng2020GMM, ModelConfig

    torch.manual_seed(seed)
    net = Cheng2020GMM(ModelConfig(N=N, context=context, num_modes=num_modes, M=M, lmbdas=lmbdas)).eval()
    net.update(force=True)
    return net


# the smallest config of every registered architecture: what the per-architecture tests code with
TINY_CONFIGS = {
    "cheng2020-gmm": {"N": 8},
    "bmshj2018-factorized": {"N": 8, "M": 8},
    "bmshj2018-factorized-relu": {"N": 8, "M": 8},
    "bmshj2018-hyperprior": {"N": 8, "M": 8},
    "mbt2018-mean": {"N": 8, "M": 8},
    "mbt2018": {"N": 8, "M": 12},
    "cheng2020-anchor": {"N": 8},
    "cheng2020-attn": {"N": 8},
    "elic2022-official": {"N": 8, "M": 136},   # ELIC's first four channel groups take 128
}


def tiny_model(arch: str, seed: int = 0, **config):
    """A tiny untrained network of a registered architecture, coding tables updated."""
    from lic import models

    torch.manual_seed(seed)
    net = models.build(arch, {**TINY_CONFIGS[arch], **config}).eval()
    net.update(force=True)
    return net


@pytest.fixture(scope="session")
def kodak_crop() -> np.ndarray:
    """A 256x256 crop of a real photo (kodim05), or a smooth synthetic image when ../shared is absent."""
    path = KODAK / "kodim05.png"
    if path.exists():
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))[:256, :256].copy()
    yy, xx = np.mgrid[0:256, 0:256]
    img = np.stack([(xx + yy) / 2, 128 + 100 * np.sin(xx / 9.0), 255 - yy], axis=-1)
    return np.clip(img, 0, 255).astype(np.uint8)


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(max(1, h // 8 + 1), max(1, w // 8 + 1), 3)).astype(np.float64)
    img = np.kron(base, np.ones((8, 8, 1)))[:h, :w] + rng.normal(0, 6, size=(h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def decode_under_threads(net, data: bytes, counts=(1, 2)) -> list[np.ndarray]:
    """Decode ``data`` once per torch thread count; restores the caller's count."""
    from lic import codec

    before = torch.get_num_threads()
    try:
        outs = []
        for n in counts:
            torch.set_num_threads(n)
            outs.append(codec.decode_with_net(net, data))
    finally:
        torch.set_num_threads(before)
    return outs
