"""Parity with CompressAI's own trainer: the same architecture trained through lic's loop and
through CompressAI's ``examples/train.py`` loop, then both scored with real bitstreams on Kodak.

    python -m bench.trainer_parity --steps 2000 [--arch bmshj2018-hyperprior] [--N 128] [--M 192]
        [--crop 256] [--batch 8] [--lmbda 0.0067] [--seed 1] [--workers 2] [--images 24]
        [--loops lic compressai] [--out logs/parity/NAME]

Both loops train ``--arch`` (one of CompressAI's, ``python -m lic.models``) at N, M from the same
seed (the same initial weights: the network is the first thing either builds after seeding), on
the same images (``../shared/data/train``, every file under it), with random crops of ``--crop``
pixels, batches of ``--batch``, the loss lambda * 255^2 * MSE + bpp, Adam at lr 1e-4 on the
network and at 1e-3 on the entropy bottleneck's quantiles (the aux loss), gradient-norm clipping
at 1.0 and no learning-rate schedule, for ``--steps`` steps each, one after the other on the
same machine:

* lic: ``python train.py model=ARCH ...`` (the Lightning loop, ``lic.training``; images decoded
  once and cached, crops flipped at random, cut by ``--workers`` loader processes as the
  reference loop's are), no validation during the run;
* compressai: this file's reproduction of ``examples/train.py``'s loop (CompressAI at commit
  0cc77e2f, the version read for this bench: it is not in the pip package): ``ImageFolder``-style
  reading of each file per item, ``RandomCrop`` (padded by reflection where an image is smaller
  than the crop, as lic pads) and ``ToTensor``, a shuffled ``DataLoader`` with ``--workers``
  processes, two Adam optimizers, ``loss.backward()``, ``clip_grad_norm_``, ``optimizer.step()``,
  ``aux_loss.backward()``, ``aux_optimizer.step()``; its ``ReduceLROnPlateau`` on test loss per
  epoch is left out, as lic's run has no schedule either.

Reported: images/s of each loop over its training steps (data loading included, start-up and
lic's image cache excluded), the ratio lic / compressai, the mean training loss of the last
tenth of the steps, and, for both final networks, bpp (whole .lic files) and PSNR on the first
``--images`` Kodak images through ``lic.codec``.  ``--out`` gets both checkpoints, the exported
weights and ``parity.json``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, required=True, help="training steps of each loop")
    p.add_argument("--arch", default="bmshj2018-hyperprior")
    p.add_argument("--N", type=int, default=128)
    p.add_argument("--M", type=int, default=192)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lmbda", type=float, default=0.0067)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workers", type=int, default=2, help="DataLoader processes of both loops")
    p.add_argument("--images", type=int, default=24, help="Kodak images scored at the end")
    p.add_argument("--loops", nargs="+", default=["lic", "compressai"], choices=["lic", "compressai"])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "train")
    p.add_argument("--kodak", type=Path, default=REPO.parent / "shared" / "data" / "kodak")
    p.add_argument("--out", type=Path, default=None, help="run folder (default logs/parity/<time>)")
    return p.parse_args(argv)


# ------------------------------------------------------------------ lic's loop: train.py itself

def run_lic(args, out: Path) -> dict:
    """train.py in a subprocess; images/s from the training seconds its checkpoint records."""
    import torch

    run = out / "lic"
    cmd = [sys.executable, str(REPO / "train.py"), f"model={args.arch}", f"lambda={args.lmbda}",
           f"model.model.N={args.N}", f"seed={args.seed}", f"data.train_dir={args.data}",
           f"data.crop={args.crop}", f"data.batch_size={args.batch}", f"data.num_workers={args.workers}",
           f"trainer.max_steps={args.steps}",
           "trainer.limit_val_batches=0", "model.val_real_images=0", "data.val_count=0",
           # one checkpoint, at the end (the periodic callback saves when fit ends)
           f"callbacks.model_checkpoint.every_n_train_steps={args.steps}",
           "~callbacks.progress_bar", "+trainer.enable_progress_bar=false", "logger=csv",
           f"paths.output_dir={run}", "optimizer=adam", "optimizer.lr=1e-4", "optimizer.aux_lr=1e-3",
           "scheduler=multistep", "scheduler.warmup_steps=0", "trainer.gradient_clip_val=1.0"]
    if "M" in _config_fields(args.arch):
        cmd.append(f"model.model.M={args.M}")
    subprocess.run(cmd, cwd=REPO, check=True, env=dict(os.environ, WANDB_MODE="offline"))
    ckpt = run / "checkpoints" / "last.ckpt"
    stats = torch.load(ckpt, map_location="cpu", weights_only=True)["lic_train_stats"]
    losses = _csv_losses(run)
    return {"checkpoint": str(ckpt), "steps": stats["steps"], "seconds": stats["train_seconds"],
            "images_per_s": stats["images_seen"] / stats["train_seconds"], "final_loss": _tail_mean(losses)}


def _config_fields(arch: str) -> set[str]:
    from dataclasses import fields

    from lic import models
    return {f.name for f in fields(models.get(arch).Config)}


def _csv_losses(run: Path) -> list[float]:
    import csv

    rows = []
    for path in run.rglob("metrics.csv"):
        with path.open() as f:
            rows += [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    return rows


def _tail_mean(values: list[float]) -> float:
    tail = values[-max(1, len(values) // 10):]
    return sum(tail) / len(tail) if tail else float("nan")


# ------------------------------------------------------------------ CompressAI's loop, reproduced

class _Files:
    """CompressAI's ``ImageFolder`` item: open the file, convert to RGB, apply the transform."""

    def __init__(self, files, transform):
        self.files, self.transform = files, transform

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.open(self.files[i]).convert("RGB"))


def run_compressai(args, out: Path) -> dict:
    import torch
    from torch.utils.data import DataLoader
    from torchvision import transforms

    from lic import models
    from lic.training.datamodule import list_images

    torch.manual_seed(args.seed)       # examples/train.py: torch.manual_seed, random.seed
    random.seed(args.seed)
    cls = models.get(args.arch)
    compressai_class = next(c for c in cls.__mro__[1:] if c.__module__.startswith("compressai.models"))
    net = compressai_class(**cls.compressai_args(cls.Config(**{k: getattr(args, k) for k in ("N", "M")
                                                                if k in _config_fields(args.arch)})))
    net.train()
    data = _Files(list_images(args.data), transforms.Compose([
        transforms.RandomCrop(args.crop, pad_if_needed=True, padding_mode="reflect"), transforms.ToTensor()]))
    loader = DataLoader(data, batch_size=args.batch, shuffle=True, num_workers=args.workers, drop_last=True,
                        persistent_workers=args.workers > 0)
    main = [p for n, p in net.named_parameters() if not n.endswith(".quantiles")]
    aux = [p for n, p in net.named_parameters() if n.endswith(".quantiles")]
    optimizer = torch.optim.Adam(main, lr=1e-4)
    aux_optimizer = torch.optim.Adam(aux, lr=1e-3)

    def criterion(output, target):
        n, _, h, w = target.shape
        bpp = sum(torch.log(lik).sum() / (-math.log(2) * n * h * w) for lik in output["likelihoods"].values())
        return args.lmbda * 255**2 * torch.nn.functional.mse_loss(output["x_hat"], target) + bpp

    losses, step, t0 = [], 0, time.perf_counter()
    while step < args.steps:
        for d in loader:
            optimizer.zero_grad()
            aux_optimizer.zero_grad()
            loss = criterion(net(d), d)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optimizer.step()
            aux_loss = net.aux_loss()
            aux_loss.backward()
            aux_optimizer.step()
            losses.append(loss.item())
            step += 1
            if step == args.steps:
                break
    seconds = time.perf_counter() - t0
    ckpt = out / "compressai" / "checkpoint.pth.tar"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 0, "state_dict": net.state_dict()}, ckpt)
    return {"checkpoint": str(ckpt), "steps": step, "seconds": seconds, "images_per_s": step * args.batch / seconds,
            "final_loss": _tail_mean(losses)}


# ------------------------------------------------------------------ the end: real files on Kodak

def score(net, kodak: Path, images: int) -> dict:
    import numpy as np

    from lic import codec, io
    from lic.eval.metrics import psnr
    from lic.training.datamodule import list_images

    bpps, psnrs = [], []
    for path in list_images(kodak)[:images]:
        px = io.read_image(path).pixels
        data = codec.encode_with_net(net, px)
        out = codec.decode_with_net(net, data)
        bpps.append(8 * len(data) / (px.shape[0] * px.shape[1]))
        psnrs.append(psnr(px, out))
    return {"bpp": float(np.mean(bpps)), "psnr": float(np.mean(psnrs)), "images": len(bpps)}


def main(argv=None) -> int:
    args = parse_args(argv)
    out = args.out or REPO / "logs" / "parity" / time.strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    from lic.export import export_checkpoint, export_compressai
    from lic.weights import load_safetensors

    results = {"args": {k: str(v) for k, v in vars(args).items()}}
    for loop in args.loops:
        res = run_lic(args, out) if loop == "lic" else run_compressai(args, out)
        weights = out / f"{loop}.safetensors"
        if loop == "lic":
            export_checkpoint(res["checkpoint"], weights)
        else:
            export_compressai(res["checkpoint"], args.arch, weights, lmbda=args.lmbda)
        res.update(score(load_safetensors(weights)[0], args.kodak, args.images))
        results[loop] = res
        print(f"{loop}: {res['steps']} steps in {res['seconds']:.0f} s = {res['images_per_s']:.2f} images/s, "
              f"final loss {res['final_loss']:.3f}, Kodak ({res['images']} images) {res['bpp']:.3f} bpp "
              f"{res['psnr']:.2f} dB", flush=True)
    if "lic" in results and "compressai" in results:
        results["ratio"] = results["lic"]["images_per_s"] / results["compressai"]["images_per_s"]
        print(f"lic / compressai images/s: {results['ratio']:.3f} (target >= 0.95)")
        print("| loop | steps | images/s | final train loss | Kodak bpp | Kodak PSNR (dB) |\n"
              "|---|---:|---:|---:|---:|---:|")
        for loop in ("lic", "compressai"):
            r = results[loop]
            print(f"| {loop} | {r['steps']} | {r['images_per_s']:.2f} | {r['final_loss']:.3f} | {r['bpp']:.3f} | "
                  f"{r['psnr']:.2f} |")
    (out / "parity.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"run folder: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
