"""A Hydra sweeper that drives an Optuna study with ask/tell and resumes it from its storage.

Resume: with `storage` and `study_name` set, a rerun loads the study and runs only the trials
still missing to reach `n_trials` finished ones (complete, pruned or failed). Trials left
RUNNING by a crashed sweep are told FAIL and their params are enqueued again (the retry has
user attr `retry_of`); an interrupted trial does not count toward `n_trials`, its retry does.
This assumes one sweep process per study at a time: a second live sweep would see the first
one's running trials as interrupted.

Hydra imports every module under `hydra_plugins` whenever any Hydra app starts, so this module
imports only Hydra and OmegaConf at the top; optuna and slimlab are imported where needed.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    IntervalSweep,
    Override,
    Quote,
    QuotedString,
    RangeSweep,
    Transformer,
)
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import HydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    import optuna
    from hydra.core.config_loader import ConfigLoader
    from optuna.distributions import BaseDistribution

# The sweeper runs only in the launching process (never inside DDP ranks): a plain logger will do.
log = logging.getLogger(__name__)

DIRECTIONS = ("minimize", "maximize")
JOB_IDX_ATTR = "hydra_job_idx"  # trial user attr: the Hydra job number (folder) that ran it
RETRY_ATTR = "retry_of"  # trial user attr: number of the interrupted trial this one re-runs
VALID_FORMS = (
    "interval(low, high), tag(log, interval(low, high)), tag(int, interval(low, high)), "
    "range(start, stop[, step]), choice(a, b, ...), a,b,c, or a fixed value"
)
VALID_TAGS = {"interval": {"log", "int"}, "range": {"log"}, "choice": set()}


# The trials of the batch being launched, by Hydra job number. Jobs that the launcher runs in
# this process (Hydra's basic launcher) find their trial here, so a Lightning callback
# (slimlab.callbacks.OptunaPruning) can report intermediate values to the study's pruner.
_RUNNING_TRIALS: dict[int, Any] = {}


def running_trial(job_num: int) -> optuna.Trial | None:
    """The trial that Hydra job `job_num` runs, if this process launched it, else None."""
    return _RUNNING_TRIALS.get(job_num)


@functools.cache
def _sweeper_error_type() -> type[Exception]:
    """slimlab's ConfigError that Hydra prints as its message alone, built on first use.

    The sweeper runs outside the task, so slimlab's entry-point handler never sees its
    errors; Hydra prints a `CompactHydraException` without a traceback and exits 1. Imported
    late to keep Hydra's plugin scan light.
    """
    from hydra.errors import CompactHydraException

    from slimlab.utils.errors import ConfigError

    class SweeperConfigError(ConfigError, CompactHydraException):
        """Bad sweeper config: a message naming the key and what would be valid."""

    return SweeperConfigError


def _config_error(message: str) -> Exception:
    """Return the error for bad sweeper config (a slimlab ConfigError)."""
    return _sweeper_error_type()(message)


def _import_optuna() -> Any:
    """Import optuna, or say which extra installs it."""
    try:
        import optuna
    except ImportError as exc:
        raise ImportError(
            "hydra/sweeper=slimlab_optuna needs optuna: pip install 'slimlab[optuna]'"
        ) from exc
    return optuna


def parse_directions(direction: Any) -> list[str]:
    """Return `direction` (a string or a list of them) as a list of 'minimize'/'maximize'."""
    given = [direction] if isinstance(direction, str) else list(direction or [])
    directions = [str(d).lower() for d in given]
    if not directions or any(d not in DIRECTIONS for d in directions):
        raise _config_error(
            f"hydra.sweeper.direction={direction!r} is not valid: give 'minimize' or 'maximize', "
            "or a list of them for multi-objective"
        )
    return directions


def storage_url(storage: str | None) -> str | None:
    """Return an optuna storage URL; a plain path is taken as sqlite, whose folder is created."""
    if storage is None:
        return None
    if "://" in storage and not storage.startswith("sqlite:///"):
        return storage
    path, _, query = storage.removeprefix("sqlite:///").partition("?")
    if path in ("", ":memory:"):
        return storage
    path = os.path.abspath(os.path.expanduser(path))  # collapses `sweep_dir/..` before it exists
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}" + (f"?{query}" if query else "")


def redacted(url: str | None) -> str | None:
    """`url` with any password masked, for files and messages people share."""
    if url is None or "://" not in url:
        return url
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:  # not an SQLAlchemy URL (e.g. a journal storage): keep the scheme only
        return url.split("://", 1)[0] + "://***"


def distribution_from_override(override: Override, origin: str) -> BaseDistribution:
    """Return the optuna distribution of a parsed sweep override; `origin` names it in errors."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    value = override.value()
    tags = set(getattr(value, "tags", set()))
    kind = "interval" if override.is_interval_sweep() else "range"
    kind = "choice" if override.is_choice_sweep() else kind
    unknown = tags - VALID_TAGS[kind]
    if unknown:
        valid = ", ".join(sorted(VALID_TAGS[kind])) or "none"
        raise _config_error(
            f"{origin}: tag {sorted(unknown)} is not supported on {kind}(...); valid tags: {valid}"
        )
    log_scale = "log" in tags
    try:
        if kind == "choice":
            return CategoricalDistribution(
                tuple(override.sweep_iterator(transformer=Transformer.encode))
            )
        if kind == "range":
            assert isinstance(value, RangeSweep)
            points = list(override.sweep_iterator())
            if not points:
                raise ValueError("the range is empty")
            low, high, step = min(points), max(points), abs(value.step)
            if all(isinstance(p, int) for p in points):
                return IntDistribution(low, high, step=step, log=log_scale)
            return FloatDistribution(low, high, step=step, log=log_scale)
        assert isinstance(value, IntervalSweep)
        if "int" in tags:
            return IntDistribution(int(value.start), int(value.end), log=log_scale)
        return FloatDistribution(value.start, value.end, log=log_scale)
    except (ValueError, TypeError) as exc:
        raise _config_error(f"{origin} is not a valid search space: {exc}") from exc


def parse_search_space(
    params: Mapping[str, str],
    arguments: Sequence[str],
    config_loader: ConfigLoader | None = None,
) -> tuple[dict[str, BaseDistribution], list[str]]:
    """Split `params` and command-line overrides into distributions and fixed overrides.

    A command-line override of a key replaces the `params` entry for it.
    """
    parser = OverridesParser.create(config_loader=config_loader)
    entries = [(f"hydra.sweeper.params.{k}={v}", f"{k}={v}") for k, v in params.items()]
    entries += [(argument, argument) for argument in arguments]
    distributions: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for origin, text in entries:
        try:
            (override,) = parser.parse_overrides([text])
        except HydraException as exc:
            raise _config_error(
                f"{origin} is not a valid search space ({exc}). Valid forms: {VALID_FORMS}"
            ) from exc
        key = override.get_key_element()
        distributions.pop(key, None)
        fixed.pop(key, None)
        if override.is_sweep_override():
            distributions[key] = distribution_from_override(override, origin)
        else:
            fixed[key] = text
    return distributions, list(fixed.values())


def override_value(value: Any) -> str:
    """Return `value` as it is written on the right of `key=` in a Hydra override."""
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        # written as is if it reads as one value: choices that are lists arrive as '[1,2]'
        try:
            if not OverridesParser.create().parse_override(f"k={value}").is_sweep_override():
                return value
        except HydraException:
            pass
        return QuotedString(text=value, quote=Quote.single).with_quotes()
    return str(value)


def objective_values(value: Any, n_objectives: int) -> list[float]:
    """Return a job's return value as `n_objectives` floats; ValueError says why it cannot."""
    if value is None:
        raise ValueError("the task returned None")
    if n_objectives == 1:
        values = [value]
    elif isinstance(value, str) or not hasattr(value, "__len__"):
        raise ValueError(f"expected {n_objectives} values, the task returned {value!r}")
    else:
        values = list(value)
    if len(values) != n_objectives:
        raise ValueError(f"expected {n_objectives} values, the task returned {value!r}")
    try:
        floats = [float(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the task returned {value!r}, not a number") from exc
    if any(math.isnan(v) for v in floats):
        raise ValueError(f"the task returned NaN ({value!r})")
    return floats


class OptunaSweeper(Sweeper):
    """Runs `n_trials` Optuna trials, `n_jobs` per launcher call, in one resumable study."""

    def __init__(
        self,
        study_name: str | None = None,
        storage: str | None = None,
        direction: Any = "minimize",
        n_trials: int = 20,
        n_jobs: int = 1,
        sampler: DictConfig | None = None,
        pruner: DictConfig | None = None,
        params: Mapping[str, str] | None = None,
        custom_search_space: str | None = None,
    ) -> None:
        super().__init__()
        self.directions = parse_directions(direction)
        if not isinstance(n_trials, int) or n_trials < 1:
            raise _config_error(
                f"hydra.sweeper.n_trials={n_trials!r} is out of range: give the total number "
                "of trials in the study, an integer >= 1"
            )
        if not isinstance(n_jobs, int) or n_jobs < 1:
            raise _config_error(
                f"hydra.sweeper.n_jobs={n_jobs!r} is out of range: give the number of trials "
                "per launcher call, an integer >= 1"
            )
        if storage is not None and study_name is None:
            log.warning(
                "hydra.sweeper.storage is set but study_name is null: optuna names a new study "
                "each run, so this sweep cannot be resumed; set hydra.sweeper.study_name"
            )
        self.study_name = study_name
        self.storage = storage_url(storage)
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.sampler = sampler
        self.pruner = pruner
        self.params = dict(params or {})
        self.custom_search_space = custom_search_space
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher: Any = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        """Keep Hydra's context and config, and build the launcher that runs the trials."""
        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        """Run the remaining trials of the study and write `optimization_results.yaml`."""
        assert self.config is not None and self.launcher is not None
        assert self.hydra_context is not None
        optuna = _import_optuna()
        distributions, fixed = parse_search_space(
            self.params, arguments, self.hydra_context.config_loader
        )
        extend = self._custom_search_space()
        if not distributions and extend is None:
            log.warning("No search space: give hydra.sweeper.params or sweep overrides")

        study = self._open_study()
        self._requeue_interrupted(study)
        trials = study.get_trials(deepcopy=False)
        interrupted = {t.user_attrs[RETRY_ATTR] for t in trials if RETRY_ATTR in t.user_attrs}
        done = sum(t.state.is_finished() and t.number not in interrupted for t in trials)
        remaining = self.n_trials - done
        # job folders are numbered on across runs of the study, so a resume overwrites none
        job_idx = 1 + max((t.user_attrs.get(JOB_IDX_ATTR, -1) for t in trials), default=-1)
        log.info(
            "Study %r: %d of %d trials done, running %d more; search space: %s",
            study.study_name,
            done,
            self.n_trials,
            max(remaining, 0),
            distributions,
        )

        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        returns: list[Sequence[JobReturn]] = []
        while remaining > 0:
            batch = [study.ask(distributions) for _ in range(min(self.n_jobs, remaining))]
            try:  # a broken config fails every trial alike: stop, and leave no trial running
                overrides = []
                for offset, trial in enumerate(batch):
                    if extend is not None:
                        extend(self.config, trial)
                    trial.set_user_attr(JOB_IDX_ATTR, job_idx + offset)
                    suggested = [f"{k}={override_value(v)}" for k, v in trial.params.items()]
                    overrides.append(fixed + suggested)
                self.validate_batch_is_legal(overrides)
            except Exception:
                for trial in batch:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                raise
            _RUNNING_TRIALS.update((job_idx + i, trial) for i, trial in enumerate(batch))
            try:
                results = self.launcher.launch(overrides, initial_job_idx=job_idx)
            finally:
                _RUNNING_TRIALS.clear()
            for trial, trial_overrides, result in zip(batch, overrides, results):
                self._tell(study, trial, trial_overrides, result)
            returns.append(results)
            job_idx += len(batch)
            remaining -= len(batch)

        self._write_results(study, sweep_dir / "optimization_results.yaml")
        return returns

    def _custom_search_space(self) -> Callable[[DictConfig, Any], None] | None:
        """Return the user's search-space function named by `custom_search_space`, if any."""
        if self.custom_search_space is None:
            return None
        try:
            return get_method(self.custom_search_space)
        except Exception as exc:
            raise _config_error(
                f"hydra.sweeper.custom_search_space={self.custom_search_space!r} cannot be "
                f"imported ({exc}): give the dotted path of fn(cfg, trial) -> None"
            ) from exc

    def _open_study(self) -> optuna.Study:
        """Create the study or load it from storage, with the sampler reseeded for a resume."""
        import optuna

        pruner = None if self.pruner is None else instantiate(self.pruner, _convert_="all")
        study = optuna.create_study(
            study_name=self.study_name,
            storage=self.storage,
            directions=self.directions,
            pruner=pruner,
            load_if_exists=True,
        )
        stored = [d.name.lower() for d in study.directions]
        if stored != self.directions:
            raise _config_error(
                f"hydra.sweeper.direction={self.directions} differs from {stored} of study "
                f"{study.study_name!r} in {redacted(self.storage)}: use the same direction or a "
                "new study_name"
            )
        if self.sampler is not None:
            study.sampler = self._build_sampler(seed_offset=len(study.get_trials(deepcopy=False)))
        return study

    def _build_sampler(self, seed_offset: int) -> optuna.samplers.BaseSampler:
        """Build the sampler; a resume adds the earlier trial count to its seed, not to replay."""
        assert self.sampler is not None
        seed = self.sampler.get("seed")
        if seed is None or seed_offset == 0:
            return instantiate(self.sampler, _convert_="all")
        log.info("Resuming: sampler seed %s + %d earlier trials", seed, seed_offset)
        return instantiate(self.sampler, seed=int(seed) + seed_offset, _convert_="all")

    def _requeue_interrupted(self, study: optuna.Study) -> None:
        """Tell FAIL to trials a crashed sweep left RUNNING and enqueue their params again."""
        import optuna

        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        for trial in running:
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            study.enqueue_trial(trial.params, user_attrs={RETRY_ATTR: trial.number})
            log.warning(
                "Trial %d (job %s) was left running by an interrupted sweep: marked failed, "
                "its params %s will run again",
                trial.number,
                trial.user_attrs.get(JOB_IDX_ATTR),
                trial.params,
            )

    def _tell(
        self, study: optuna.Study, trial: optuna.Trial, overrides: Sequence[str], result: JobReturn
    ) -> None:
        """Tell the study how one job ended; a failed job is logged, never re-raised."""
        import optuna

        job = trial.user_attrs.get(JOB_IDX_ATTR)
        # a pruned job is no error: read what it raised without `return_value`, which logs
        # "Error executing job" before it re-raises
        raised = getattr(result, "_return_value", None)
        if result.status == JobStatus.FAILED and isinstance(raised, optuna.TrialPruned):
            log.info("Trial %d (job %s) was %s", trial.number, job, raised)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return
        try:
            returned = result.return_value  # re-raises what the job raised
        except Exception as exc:
            log.warning(
                "Trial %d (job %s) raised %r; overrides %s",
                trial.number,
                job,
                exc,
                list(overrides),
                exc_info=exc,
            )
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return
        try:
            values = objective_values(returned, len(self.directions))
        except ValueError as exc:
            log.warning(
                "Trial %d (job %s) failed: %s; overrides %s", trial.number, job, exc, overrides
            )
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return
        study.tell(trial, values[0] if len(values) == 1 else values)

    def _write_results(self, study: optuna.Study, path: Path) -> None:
        """Write the best params and value (or the Pareto front) of the study to `path`."""
        counts: dict[str, int] = {}
        for trial in study.get_trials(deepcopy=False):
            state = trial.state.name.lower()
            counts[state] = counts.get(state, 0) + 1
        results: dict[str, Any] = {
            "name": "slimlab_optuna",
            "study_name": study.study_name,
            "storage": redacted(self.storage),
            "direction": self.directions[0] if len(self.directions) == 1 else self.directions,
            "trials": counts,
        }
        if counts.get("complete", 0) == 0:
            log.warning("No trial of study %r completed: see the job logs", study.study_name)
        elif len(self.directions) == 1:
            best = study.best_trial
            results.update(
                best_params=best.params,
                best_value=best.value,
                best_trial=best.number,
                best_job=best.user_attrs.get(JOB_IDX_ATTR),
            )
            log.info("Best value %s, params %s (trial %d)", best.value, best.params, best.number)
        else:
            results["best_trials"] = [
                {
                    "trial": t.number,
                    "job": t.user_attrs.get(JOB_IDX_ATTR),
                    "params": t.params,
                    "values": t.values,
                }
                for t in study.best_trials
            ]
            log.info("Pareto front: %d trials", len(results["best_trials"]))
        OmegaConf.save(OmegaConf.create(results), path)
        log.info("Wrote %s", path)
