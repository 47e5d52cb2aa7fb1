"""Options of the `slimlab_optuna` sweeper, registered as `hydra/sweeper=slimlab_optuna`."""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class SlimlabOptunaSweeperConf:
    """Structured config of `OptunaSweeper`; each field is one `hydra.sweeper.<name>` key."""

    _target_: str = "hydra_plugins.slimlab_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    # the sweeper builds sampler and pruner itself (it reseeds the sampler on resume)
    _recursive_: bool = False

    # name of the optuna study; with `storage` set, rerunning with the same name resumes it
    study_name: str | None = None
    # optuna storage: a URL (sqlite:///${hydra.sweep.dir}/../optuna.db) or a file path, taken
    # as sqlite; null keeps the study in memory, so the sweep cannot be resumed
    storage: str | None = None
    # "minimize" or "maximize"; a list of them for multi-objective: one per returned value, in
    # the order of the app's `optimized_metric` list (checked before any trial runs)
    direction: Any = "minimize"
    # total trials in the study (>= 1), counting those already run by earlier runs of it
    n_trials: int = 20
    # trials asked and launched together in one launcher call (>= 1); parallel if the launcher is
    n_jobs: int = 1
    # optuna sampler, built with hydra.utils.instantiate; `seed` null means not reproducible
    sampler: Any = field(
        default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": None}
    )
    # optional optuna pruner (`_target_` config, e.g. optuna.pruners.MedianPruner). It acts
    # through the slimlab.callbacks.OptunaPruning callback, which reports each validation to
    # the trial and stops a pruned one; a job raising optuna.TrialPruned counts as pruned
    pruner: Any = None
    # key -> search space in Hydra sweep syntax: interval(1e-4, 1e-2), tag(log, interval(..)),
    # tag(int, interval(1, 8)), range(1, 4), choice(32, 64, 128), 1,2,3; a plain value is fixed
    params: dict[str, str] | None = None
    # optional dotted path to fn(cfg: DictConfig, trial: optuna.Trial) -> None that suggests
    # more (e.g. conditional) params with trial.suggest_*; they are passed as overrides too
    custom_search_space: str | None = None
    # on resume, a trial that a killed sweep cut off runs again from this file of its job
    # folder when it exists (passed as `<resume_key>=<path>`); null: again from scratch
    resume_checkpoint: str | None = "checkpoints/last.ckpt"
    resume_key: str = "ckpt_path"  # the app's resume-from-checkpoint key (train.py's)


ConfigStore.instance().store(
    group="hydra/sweeper", name="slimlab_optuna", node=SlimlabOptunaSweeperConf, provider="slimlab"
)
