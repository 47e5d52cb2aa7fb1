"""Export a checkpoint: `python export.py ckpt_path=<file.ckpt>` (README.md, docs/export.md)."""

import hydra
from omegaconf import DictConfig

from slimlab.export import main as export_main
from slimlab.utils.errors import exit_on_config_error


@hydra.main(version_base="1.3", config_path="configs", config_name="export")
def main(cfg: DictConfig) -> None:
    with exit_on_config_error():
        export_main(cfg)


if __name__ == "__main__":
    main()
