"""Train a model: `python train.py experiment=<name>` (see README.md)."""

import hydra
from omegaconf import DictConfig

from slimlab.train import main as train_main
from slimlab.utils.task import run_entry


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return train_main(cfg)


if __name__ == "__main__":
    run_entry(main)
