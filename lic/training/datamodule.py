"""Image-folder data: decoded images cached in memory, random crops and flips, a held-out validation split.

The data order and the augmentation are functions of (seed, epoch, position) only: the sampler
draws epoch e's permutation and one seed per sample from a generator seeded with (seed, e), and
each crop and flip comes from its sample's seed.  Nothing reads a global RNG, so the batches do not
depend on the number of workers, and a resumed run continues the epoch where the checkpoint left
it (the datamodule's state in the checkpoint: epoch and batches consumed) with the same crops.

Validation: ``val_dir``, or else ``val_count`` images held out of ``train_dir`` (chosen by a hash
of their path relative to ``train_dir``: fixed, whatever the listing order or the machine, and
never trained on).  Kodak is the evaluation set (``evaluate.py``), never the validation set.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".webp"}


def list_images(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise FileNotFoundError(f"no images in {root}")
    return files


def held_out(files: list[Path], root: str | Path, count: int) -> tuple[list[Path], list[Path]]:
    """(train, val): the ``count`` files with the smallest sha256 of their path relative to ``root``."""
    if count <= 0:
        return files, []
    if count >= len(files):
        raise ValueError(f"data.val_count={count} would hold out all {len(files)} images of {root}")
    key = {p: hashlib.sha256(p.relative_to(root).as_posix().encode()).hexdigest() for p in files}
    val = set(sorted(files, key=key.__getitem__)[:count])
    return [p for p in files if p not in val], [p for p in files if p in val]


def _load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))  # (H, W, 3) uint8


class CachedImages(Dataset):
    """Images decoded once into memory; an item is one crop (3, crop, crop) in [0, 1].

    Training items are keyed ``(index, seed)`` (from :class:`EpochSampler`): a random crop and
    flips drawn from ``seed``.  Validation items are keyed by index: the centre crop.  Images
    smaller than the crop are padded by reflection.
    """

    def __init__(self, files: list[Path], crop: int, train: bool = True):
        self.images = [_load_rgb(p) for p in files]
        self.crop, self.train = crop, train

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int]) -> torch.Tensor:
        # an index alone (Lightning's overfit_batches replaces the sampler): the same crop every time
        i, seed = key if isinstance(key, tuple) else (key, key)
        img = self.images[i]
        c = self.crop
        h, w, _ = img.shape
        if h < c or w < c:
            img = np.pad(img, ((0, max(0, c - h)), (0, max(0, c - w)), (0, 0)), mode="reflect")
            h, w, _ = img.shape
        if self.train:
            rng = np.random.default_rng(seed)
            top, left = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
            flip_w, flip_h = rng.random(2) < 0.5
        else:
            top, left = (h - c) // 2, (w - c) // 2
            flip_w = flip_h = False
        patch = img[top:top + c, left:left + c]
        if flip_w:
            patch = patch[:, ::-1]
        if flip_h:
            patch = patch[::-1]
        # copy: a crop as wide as the image (no flip) is still a view of the read-only array
        # np.asarray(PIL) returned, and torch warns on non-writable memory
        return torch.from_numpy(patch.copy()).permute(2, 0, 1).float() / 255.0   # (3, c, c)


class EpochSampler(Sampler):
    """``repeats`` passes over the images per epoch in an order drawn from (seed, epoch); keys ``(index, seed)``.

    Shards by rank like ``DistributedSampler`` (every rank the same number of samples; the tail that
    does not divide is dropped).  ``set_epoch`` is called by Lightning at each epoch start;
    ``resume(epoch, samples)`` skips the samples of that epoch a checkpoint had already consumed.
    """

    def __init__(self, n_images: int, seed: int, repeats: int = 1, rank: int = 0, world_size: int = 1):
        self.n, self.seed, self.repeats = n_images, int(seed), int(repeats)
        self.rank, self.world = rank, world_size
        self.epoch = 0
        self._skip: tuple[int, int] | None = None   # (epoch, samples of this rank to skip)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def resume(self, epoch: int, samples: int) -> None:
        self._skip = (int(epoch), int(samples))

    def __len__(self) -> int:
        return self.n * self.repeats // self.world

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        total = self.n * self.repeats
        order = torch.randperm(total, generator=g) % self.n
        seeds = torch.randint(0, 2**62, (total,), generator=g)
        mine = torch.arange(self.rank, len(self) * self.world, self.world)
        start = 0
        if self._skip is not None and self._skip[0] == self.epoch:
            start = self._skip[1]
        self._skip = None
        for j in mine[start:].tolist():
            yield int(order[j]), int(seeds[j])


class ImageDataModule(L.LightningDataModule):
    def __init__(self, train_dir: str, val_dir: str | None = None, val_count: int = 16, crop: int = 256,
                 val_crop: int = 256, batch_size: int = 8, val_batch_size: int = 4, num_workers: int = 0,
                 repeats: int = 1, train_limit: int | None = None, val_limit: int | None = None, seed: int = 0):
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.train_set = self.val_set = None
        self.train_files: list[Path] = []
        self.val_files: list[Path] = []
        self._sampler: EpochSampler | None = None
        self._consumed = (0, 0)   # (epoch, training batches consumed in it), for the checkpoint
        self._resume_at: tuple[int, int] | None = None

    def split(self) -> tuple[list[Path], list[Path]]:
        """(training files, validation files)."""
        hp = self.hparams
        files = list_images(hp.train_dir)
        if hp.val_dir:
            train, val = files, list_images(hp.val_dir)
        else:
            train, val = held_out(files, hp.train_dir, int(hp.val_count or 0))
        return train[:hp.train_limit], val[:hp.val_limit]

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if self.train_set is None:
            self.train_files, self.val_files = self.split()
            self.train_set = CachedImages(self.train_files, hp.crop, train=True)
            if self.val_files:
                self.val_set = CachedImages(self.val_files, hp.val_crop, train=False)

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        self._sampler = EpochSampler(len(self.train_set), hp.seed, hp.repeats, rank, world)
        if self._resume_at is not None:
            epoch, batches = self._resume_at
            self._sampler.resume(epoch, batches * hp.batch_size)
            self._consumed, self._resume_at = (epoch, batches), None
        # generator: the loader's worker seed is drawn from it, not from the global RNG the model uses
        return DataLoader(self.train_set, batch_size=hp.batch_size, sampler=self._sampler, drop_last=True,
                          num_workers=hp.num_workers, persistent_workers=hp.num_workers > 0,
                          generator=torch.Generator().manual_seed(hp.seed))

    def val_dataloader(self):
        if self.val_set is None:
            return []
        return DataLoader(self.val_set, batch_size=self.hparams.val_batch_size, num_workers=0,
                          generator=torch.Generator().manual_seed(self.hparams.seed))

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Count the training batches the model consumed (not the ones the loader prefetched)."""
        trainer = self.trainer
        if trainer is not None and trainer.training:
            epoch = int(trainer.current_epoch)
            done = self._consumed[1] if self._consumed[0] == epoch else 0
            self._consumed = (epoch, done + 1)
        return batch

    def state_dict(self) -> dict:
        epoch, batches = self._consumed
        return {"epoch": epoch, "batches": batches, "seed": int(self.hparams.seed)}

    def load_state_dict(self, state_dict: dict) -> None:
        if int(state_dict.get("seed", self.hparams.seed)) != int(self.hparams.seed):
            return   # another data order: nothing to continue
        self._resume_at = (int(state_dict["epoch"]), int(state_dict["batches"]))
