"""Train a learned codec.

    python train.py lambda=0.0067 | model=mbt2018-mean lambda=0.0067 | -m quality=q1,q2,q3 | experiment=cpu_vr

Configs live in configs/ (Hydra); every run writes its resolved config, checkpoints and logs
into its own folder under logs/ (a sweep: one folder, a subfolder per job).  Resume with
ckpt_path=.../checkpoints/last.ckpt.
"""
import os

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", os.path.dirname(os.path.abspath(__file__)))


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from lic.training.run import train

    metrics = train(cfg)
    return metrics.get("val/loss")


if __name__ == "__main__":
    main()
