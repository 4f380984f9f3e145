"""Evaluate on real bitstreams: python evaluate.py dataset=kodak  (configs/eval.yaml).

Writes per-image CSV, CompressAI-schema JSON per codec, RD plots, a BD-rate table and the
Lena / Peppers / Baboon side-by-side figure into one run folder under logs/eval/.
"""
import os

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", os.path.dirname(os.path.abspath(__file__)))


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    from lic.eval.run import run

    run(cfg)


if __name__ == "__main__":
    main()
