"""Test a checkpoint: `python eval.py ckpt_path=<file.ckpt, run folder, best or latest>`."""

import hydra
from omegaconf import DictConfig

from slimlab.eval import main as eval_main
from slimlab.utils.task import run_entry


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    eval_main(cfg)


if __name__ == "__main__":
    run_entry(main)
