"""Serve a model over HTTP: `python serve.py ckpt_path=<file.ckpt>` (docs/serving.md)."""

import hydra
from omegaconf import DictConfig

import slimlab.utils.resolvers  # noqa: F401  (registers ${slimlab.*} before Hydra composes)


@hydra.main(version_base="1.3", config_path="configs", config_name="serve")
def main(cfg: DictConfig) -> None:
    # imported here: with serve.workers > 1 each worker process re-imports this file (spawn)
    # and should not pay for torch before it can answer uvicorn's health checks
    from slimlab.serve import main as serve_main

    serve_main(cfg)


if __name__ == "__main__":
    from slimlab.utils.task import run_entry

    run_entry(main)
