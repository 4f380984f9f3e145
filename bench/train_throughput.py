"""Training throughput: the Lightning loop (LitCodec + Trainer) against a plain PyTorch loop.

    python -m bench.train_throughput [--N 32] [--batch 4] [--crop 128] [--steps 20] [--warmup 5]
                                     [--threads T] [--repeats 2] [--device cpu|cuda] [--num-modes 1]
                                     [--data DIR] [--limit 16] [--M M] [--vs lightning|compile]

Both loops train the same model (``Cheng2020GMM``, same seed) on the same batches (one
DataLoader over the same in-memory crops) with the same loss (lambda * 255^2 * MSE + bpp_est),
Adam (lr 1e-4, quantiles 1e-3), the aux loss and gradient-norm clipping at 1.0:

* plain: CompressAI's examples/train.py step -- two Adam optimizers, rd.backward(),
  clip_grad_norm_, optimizer.step(), aux.backward(), aux_optimizer.step();
* lightning: ``LitCodec.training_step`` in a ``Trainer`` (one Adam with two parameter groups
  on rd + aux, Lightning's clipping, the per-step LR scheduler and ``self.log`` calls), with
  no logger, checkpoints, progress bar or validation: the loop's own cost.

Each measurement times ``--steps`` steps after ``--warmup`` untimed ones, from the start of
step ``warmup`` (its batch already loaded) to the end of the last step, data loading
included; on CUDA with a synchronize at both ends.  The loops alternate (plain, lightning,
lightning, plain, ...) ``--repeats`` times each; the best of each is compared (the least
disturbed by other load on the machine).  Prints images/s of both and the ratio
lightning/plain (target >= 0.95).  ``--vs compile`` compares the plain loop with itself under
``torch.compile`` instead (the recipe question of whether compiling pays on this hardware).

Data: ``--data`` (default ``<repo>/../shared/data/train`` when it exists, its first
``--limit`` images), else random smooth synthetic images.
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

LMBDA = 0.0067


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--N", type=int, default=32, help="model width N (the paper: 128 or 192)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before them")
    p.add_argument("--repeats", type=int, default=2, help="measurements of each loop (alternating)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--num-modes", type=int, default=1, help="> 1: the variable-rate model, a mode per image")
    p.add_argument("--data", type=Path, default=None, help="image folder (default ../shared/data/train)")
    p.add_argument("--limit", type=int, default=16, help="images loaded from the folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--M", type=int, default=None, help="channels of y (default: N)")
    p.add_argument("--vs", default="lightning", choices=["lightning", "compile"],
                   help="what the plain loop is compared with: the Lightning loop, or the same plain "
                        "loop with the model under torch.compile (compilation happens in the untimed warm-up)")
    return p.parse_args(argv)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def model_config(args) -> dict:
    cfg = {"N": args.N, "num_modes": args.num_modes}
    if args.M:
        cfg["M"] = args.M
    if args.num_modes > 1:   # geometric from 0.0016 to 0.045 (the paper's range)
        cfg["lmbdas"] = [0.0016 * (0.045 / 0.0016) ** (i / max(1, args.num_modes - 1)) for i in range(args.num_modes)]
    return cfg


def make_loader(args):
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from lic.training.datamodule import CachedImages, EpochSampler, list_images

    data = args.data or REPO.parent / "shared" / "data" / "train"
    if not data.is_dir():   # synthetic smooth images, written once to a temporary folder
        import tempfile

        from PIL import Image

        data = Path(tempfile.mkdtemp(prefix="lic-bench-"))
        rng = np.random.default_rng(args.seed)
        size = args.crop + 32
        yy, xx = np.mgrid[0:size, 0:size] / size
        for i in range(args.limit):
            img = np.stack([np.sin(2 * np.pi * (rng.uniform(.5, 3) * xx + rng.uniform(0, 2) * yy) + rng.uniform(0, 6))
                            for _ in range(3)], -1) * .4 + .5
            img = np.clip(img * 255 + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(data / f"{i:03d}.png")
    ds = CachedImages(list_images(data)[:args.limit], args.crop, train=True)
    source = f"{len(ds)} images of {data}"
    g = torch.Generator().manual_seed(args.seed)
    loader = DataLoader(ds, batch_size=args.batch, sampler=EpochSampler(len(ds), args.seed), drop_last=True,
                        num_workers=0, generator=g, pin_memory=args.device == "cuda")
    return loader, source


def _sync(device) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def run_plain(args, loader, compiled: bool = False) -> float:
    """CompressAI examples/train.py's training step; returns the seconds of the timed steps.
    ``compiled``: the forward pass runs under ``torch.compile`` (as ``train.py compile=true``)."""
    import torch

    from lic.models.cheng2020 import Cheng2020GMM, ModelConfig
    from lic.training.losses import rate_distortion_loss

    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    net = Cheng2020GMM(ModelConfig.from_dict(model_config(args))).to(dev).train()
    main_p = [p for n, p in net.named_parameters() if not n.endswith(".quantiles")]
    aux_p = [p for n, p in net.named_parameters() if n.endswith(".quantiles")]
    optimizer = torch.optim.Adam(main_p, lr=1e-4)
    aux_optimizer = torch.optim.Adam(aux_p, lr=1e-3)
    fwd = torch.compile(net) if compiled else net
    lmbdas = torch.tensor(model_config(args).get("lmbdas") or [LMBDA], device=dev)
    t0 = t1 = None
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    for i, x in enumerate(batches):
        x = x.to(dev, non_blocking=True)
        if i == args.warmup:
            _sync(args.device)
            t0 = time.perf_counter()
        optimizer.zero_grad()
        aux_optimizer.zero_grad()
        if args.num_modes > 1:
            mode = torch.randint(0, args.num_modes, (x.shape[0],), device=dev)
            out, lmbda = fwd(x, mode.float()), lmbdas[mode]
        else:
            out, lmbda = fwd(x), LMBDA
        rd = rate_distortion_loss(out, x, lmbda)
        rd.loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        aux = net.aux_loss()
        aux.backward()
        aux_optimizer.step()
        if i + 1 == args.warmup + args.steps:
            _sync(args.device)
            t1 = time.perf_counter()
            break
    return t1 - t0


def run_lightning(args, loader) -> float:
    """LitCodec in a Trainer; returns the seconds of the timed steps."""
    import lightning as L
    import torch

    from lic.models.cheng2020 import Cheng2020GMM, ModelConfig
    from lic.training.module import LitCodec

    class StepTimer(L.Callback):
        t0 = t1 = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == args.warmup and self.t0 is None:
                _sync(args.device)
                self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == args.warmup + args.steps and self.t1 is None:
                _sync(args.device)
                self.t1 = time.perf_counter()

    torch.manual_seed(args.seed)
    cfg = model_config(args)
    module = LitCodec(model=Cheng2020GMM(ModelConfig.from_dict(cfg)), lmbda=LMBDA if args.num_modes <= 1 else None,
                      val_real_images=0)
    timer = StepTimer()
    trainer = L.Trainer(accelerator="gpu" if args.device == "cuda" else "cpu", devices=1, precision="32-true",
                        max_steps=args.warmup + args.steps, max_epochs=-1, gradient_clip_val=1.0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                        callbacks=[timer])
    trainer.fit(module, train_dataloaders=loader)
    return timer.t1 - timer.t0


def main(argv=None) -> int:
    args = parse_args(argv)
    import logging

    import lightning  # noqa: F401 - sets its loggers' levels on import: quiet them after it
    import torch

    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    loader, source = make_loader(args)
    dev_name = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device: {dev_name}; torch {torch.__version__}; N={args.N}, batch {args.batch}, crop {args.crop}, "
          f"modes {args.num_modes}; {args.steps} timed steps after {args.warmup}; data: {source}", flush=True)
    images = args.steps * args.batch
    other = args.vs
    results = {"plain": [], other: []}
    order = []
    for r in range(args.repeats):   # ABBA...: drift in the machine's load hits both loops alike
        order += ["plain", other] if r % 2 == 0 else [other, "plain"]
    runs = {"plain": run_plain, "lightning": run_lightning, "compile": lambda a, log: run_plain(a, log, compiled=True)}
    for name in order:
        secs = runs[name](args, loader)
        results[name].append(images / secs)
        print(f"  {name:9s} {images / secs:8.2f} images/s  ({secs / args.steps * 1000:.1f} ms/step)", flush=True)
    best = {k: max(v) for k, v in results.items()}
    med = {k: statistics.median(v) for k, v in results.items()}
    ratio = best[other] / best["plain"]
    print(f"plain:     best {best['plain']:.2f} images/s, median {med['plain']:.2f}")
    print(f"{other + ':':10s} best {best[other]:.2f} images/s, median {med[other]:.2f}")
    print(f"ratio {other}/plain: {ratio:.3f} (best), {med[other] / med['plain']:.3f} (median)"
          + (f"; target >= 0.95: {'met' if ratio >= 0.95 else 'NOT met'}" if other == "lightning" else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
