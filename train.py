"""Train a model: `python train.py experiment=<name>` (see README.md)."""

import hydra
from omegaconf import DictConfig

from slimlab.train import main as train_main
from slimlab.utils.errors import exit_on_config_error


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    with exit_on_config_error():
        return train_main(cfg)


if __name__ == "__main__":
    main()
