"""Serve a model over HTTP: `python serve.py ckpt_path=<file.ckpt>` (docs/serving.md)."""

import hydra
from omegaconf import DictConfig

from slimlab.serve import main as serve_main
from slimlab.utils.errors import exit_on_config_error


@hydra.main(version_base="1.3", config_path="configs", config_name="serve")
def main(cfg: DictConfig) -> None:
    with exit_on_config_error():
        serve_main(cfg)


if __name__ == "__main__":
    main()
