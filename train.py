"""Train a learned codec.  python train.py lambda=0.0067 | model=mbt2018-mean lambda=0.0067 | -m quality=1,2,3 | experiment=cpu_vr

Configs live in configs/ (Hydra); every run writes its resolved config, checkpoints and
logs into its own folder under logs/.  Resume with ckpt_path=.../checkpoints/last.ckpt.
"""
import os
import sys

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", os.path.dirname(os.path.abspath(__file__)))


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from lic.training.run import train

    metrics = train(cfg)
    return metrics.get("val/loss")


if __name__ == "__main__":
    from lic.training.overrides import quote_numeric_choices

    # Hydra reads quality=3 as an int and refuses it for a config group: quote such numbers
    sys.argv = quote_numeric_choices(sys.argv, os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs"))
    main()
