"""Image-folder data: decoded images cached in memory, random crops and flips."""
from __future__ import annotations

import random
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".webp"}


def list_images(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise FileNotFoundError(f"no images in {root}")
    return files


def _load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))  # (H, W, 3) uint8


class CachedImageFolder(Dataset):
    """All images decoded once into memory; each item is one random crop (3, crop, crop) in [0, 1].

    ``repeats`` makes an epoch visit every image that many times (crops differ each time).
    Images smaller than the crop are padded by reflection.
    """

    def __init__(self, root, crop: int, train: bool = True, repeats: int = 1, limit: int | None = None):
        files = list_images(root)[:limit]
        self.images = [_load_rgb(p) for p in files]
        self.crop, self.train, self.repeats = crop, train, repeats

    def __len__(self) -> int:
        return len(self.images) * self.repeats

    def __getitem__(self, i: int) -> torch.Tensor:
        img = self.images[i % len(self.images)]
        c = self.crop
        h, w, _ = img.shape
        if h < c or w < c:
            img = np.pad(img, ((0, max(0, c - h)), (0, max(0, c - w)), (0, 0)), mode="reflect")
            h, w, _ = img.shape
        if self.train:
            top, left = random.randint(0, h - c), random.randint(0, w - c)
        else:
            top, left = (h - c) // 2, (w - c) // 2
        patch = img[top:top + c, left:left + c]
        if self.train:
            if random.random() < 0.5:
                patch = patch[:, ::-1]
            if random.random() < 0.5:
                patch = patch[::-1]
        # copy: a crop as wide as the image (no flip) is still a view of the read-only array
        # np.asarray(PIL) returned, and torch warns on non-writable memory
        x = torch.from_numpy(patch.copy()).permute(2, 0, 1).float() / 255.0
        return x  # (3, c, c)


class ImageDataModule(L.LightningDataModule):
    def __init__(self, train_dir: str, val_dir: str | None = None, crop: int = 256, val_crop: int = 256,
                 batch_size: int = 8, val_batch_size: int = 4, num_workers: int = 0, repeats: int = 1,
                 train_limit: int | None = None, val_limit: int | None = 8):
        super().__init__()
        self.save_hyperparameters()
        self.train_set = self.val_set = None

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if self.train_set is None:
            self.train_set = CachedImageFolder(hp.train_dir, hp.crop, True, hp.repeats, hp.train_limit)
        if self.val_set is None and hp.val_dir:
            self.val_set = CachedImageFolder(hp.val_dir, hp.val_crop, False, 1, hp.val_limit)

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        return DataLoader(self.train_set, batch_size=hp.batch_size, shuffle=True, drop_last=True,
                          num_workers=hp.num_workers, persistent_workers=hp.num_workers > 0)

    def val_dataloader(self):
        if self.val_set is None:
            return []
        return DataLoader(self.val_set, batch_size=self.hparams.val_batch_size, num_workers=0)
