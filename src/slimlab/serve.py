"""The serve entry: a checkpoint or an exported model behind HTTP, with Prometheus metrics.

Timeline of `python serve.py ckpt_path=<file>` (or `model_path=<export>/model.int8.onnx`):

1. the `serve` settings are checked (port, workers, batching, limits, auth, ...) and exactly one
   of ckpt_path / model_path is required, before anything heavy;
2. the model file is resolved (a path, `latest`, `best`) and opened with
   `slimlab.inference.Predictor`, so a missing or wrong file stops here with one line, exit 2;
3. `slimlab.inference.service.run_service` serves it until SIGTERM or Ctrl-C (in-flight requests
   finish first). With `serve.workers > 1`, each uvicorn worker opens its own copy and their
   metrics merge through PROMETHEUS_MULTIPROC_DIR (a folder in the run folder).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

import slimlab.utils.resolvers  # noqa: F401  (registers ${slimlab.*} before Hydra composes)
from slimlab.inference.predictor import Predictor
from slimlab.inference.service import ServeSettings, run_service, settings_from_config
from slimlab.utils.checkpoints import find_best_checkpoint, resolve_checkpoint
from slimlab.utils.errors import ConfigError
from slimlab.utils.logging import get_logger
from slimlab.utils.task import apply_extras, task_wrapper

log = get_logger(__name__)


def check_settings(cfg: DictConfig) -> ServeSettings:
    """Validate the serve settings and the model choice (before anything heavy)."""
    given = [k for k in ("ckpt_path", "model_path") if cfg.get(k)]
    if len(given) != 1:
        raise ConfigError(
            ("both ckpt_path and model_path are set" if given else "nothing to serve")
            + ": give one of ckpt_path=<.ckpt | latest | best> (with name=<experiment>) or "
            "model_path=<export>/model.int8.onnx"
        )
    serve = OmegaConf.to_container(cfg.serve, resolve=True)
    assert isinstance(serve, dict)
    return settings_from_config(serve)


def resolve_model(cfg: DictConfig) -> Path:
    """The file to serve: model_path, or the checkpoint ckpt_path names (path, latest, best)."""
    if cfg.get("model_path"):
        path = Path(str(cfg.model_path)).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"model_path={cfg.model_path} does not exist: give an ONNX file from export.py "
                "(<run>/export/model.int8.onnx) or a .ckpt"
            )
        return path.resolve()
    if str(cfg.ckpt_path) == "best":
        return find_best_checkpoint(cfg.paths.log_dir, "train", cfg.name)
    return Path(str(resolve_checkpoint(str(cfg.ckpt_path), cfg.paths.log_dir, "train", cfg.name)))


def masked(cfg: DictConfig) -> DictConfig:
    """A copy of `cfg` whose API key is hidden (for the printed and saved config tree)."""
    copy = cfg.copy()
    with open_dict(copy):
        if OmegaConf.select(copy, "serve.auth.api_key") is not None:
            copy.serve.auth.api_key = "***"
    return copy


@task_wrapper
def main(cfg: DictConfig) -> None:
    """Hydra task: check, extras, open the model, serve until stopped."""
    settings = check_settings(cfg)
    apply_extras(masked(cfg))
    path = resolve_model(cfg)
    log.info(f"Loading <{path}>")
    predictor = Predictor.from_path(path, threads=settings.threads)
    if settings.workers > 1:
        predictor = None  # checked here; each worker opens its own copy
    log.info(
        f"Serving on http://{settings.host}:{settings.port} ({settings.workers} worker(s), "
        f"batching {'on' if settings.batching else 'off'}, auth "
        f"{'on' if settings.api_key else 'off'})"
    )
    metrics_dir = Path(cfg.paths.output_dir) / "prometheus_multiproc"
    run_service(settings, path, predictor, metrics_dir)
