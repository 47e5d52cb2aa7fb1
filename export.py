"""Export a checkpoint: `python export.py ckpt_path=<file.ckpt>` (README.md, docs/export.md)."""

import hydra
from omegaconf import DictConfig

from slimlab.export import main as export_main
from slimlab.utils.task import run_entry


@hydra.main(version_base="1.3", config_path="configs", config_name="export")
def main(cfg: DictConfig) -> None:
    export_main(cfg)


if __name__ == "__main__":
    run_entry(main)
