"""Test a checkpoint: `python eval.py ckpt_path=<file.ckpt>` (see README.md)."""

import hydra
from omegaconf import DictConfig

from slimlab.eval import main as eval_main
from slimlab.utils.errors import exit_on_config_error


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    with exit_on_config_error():
        eval_main(cfg)


if __name__ == "__main__":
    main()
