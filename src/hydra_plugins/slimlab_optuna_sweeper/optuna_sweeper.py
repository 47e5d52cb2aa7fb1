"""A Hydra sweeper that drives an Optuna study with ask/tell and resumes it from its storage.

Timeline of one batch: the sweeper asks the study for `n_jobs` trials, composes each job's
config (a bad one fails the batch before anything runs) and records the job's folder with its
trial (user attr `output_dir`); the launcher runs the jobs, which find their trial through
`trials.current_trial()` when they run in this process, and each job writes `job_status.json`
in its folder (slimlab.utils.sweeps); the sweeper tells the study each job's values (one
per objective, `optimized_metric` names them), or PRUNED, or FAIL. A failed job is logged and
the sweep goes on; after the last trial `optimization_results.yaml` is written (the best
trial, or the Pareto set of a multi-objective study), and if any job raised, the command
exits 1 naming them.

Resume: with `storage` and `study_name` set, a rerun loads the study and runs only the trials
still missing to reach `n_trials` finished ones (complete, pruned or failed). A trial left
RUNNING by a killed sweep is settled from its job's `job_status.json` when the job finished
(its values are told, it is not run again); otherwise it is told FAIL and its params are
enqueued again (the retry has user attr `retry_of`), resuming from the job's
`checkpoints/last.ckpt` when one exists (`ckpt_path=...`, SlimLab's exact resume). An
interrupted trial does not count toward `n_trials`, its retry does. This assumes one sweep
process per study at a time: a second live sweep would see the first one's running trials as
interrupted.

Hydra imports every module under `hydra_plugins` whenever any Hydra app starts, so this module
imports only Hydra and OmegaConf at the top; optuna and slimlab are imported where needed.
"""

from __future__ import annotations

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
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import HydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.slimlab_optuna_sweeper.trials import launching

if TYPE_CHECKING:
    import optuna
    from hydra.core.config_loader import ConfigLoader
    from optuna.distributions import BaseDistribution

# The sweeper runs only in the launching process (never inside DDP ranks): a plain logger will do.
log = logging.getLogger(__name__)

DIRECTIONS = ("minimize", "maximize")
JOB_IDX_ATTR = "hydra_job_idx"  # trial user attr: the Hydra job number (folder) that ran it
OUTPUT_DIR_ATTR = "output_dir"  # trial user attr: the folder of the job that ran it
RETRY_ATTR = "retry_of"  # trial user attr: number of the interrupted trial this one re-runs
RESUME_ATTR = "resume_from"  # trial user attr: checkpoint an interrupted trial's retry resumes
VALID_FORMS = (
    "interval(low, high), tag(log, interval(low, high)), tag(int, interval(low, high)), "
    "range(start, stop[, step]), choice(a, b, ...), a,b,c, or a fixed value"
)
VALID_TAGS = {"interval": {"log", "int"}, "range": {"log"}, "choice": set()}


def _config_error(message: str) -> Exception:
    """Return the error for bad sweeper config (a slimlab ConfigError), imported late to keep
    Hydra's plugin scan light."""
    from slimlab.utils.sweeps import SweeperConfigError

    return SweeperConfigError(message)


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


def objective_names(optimized_metric: Any, directions: Sequence[str]) -> list[str] | None:
    """The names of the objectives (the app's `optimized_metric`), checked against `directions`.

    None when the app has no `optimized_metric` key (a plain Hydra app returning numbers).
    """
    if optimized_metric is None:
        return None
    names = [optimized_metric] if isinstance(optimized_metric, str) else list(optimized_metric)
    if len(names) != len(directions):
        raise _config_error(
            f"optimized_metric={names} names {len(names)} objective(s) but "
            f"hydra.sweeper.direction={directions} gives {len(directions)}: give one direction "
            "per metric, in the same order"
        )
    return [str(name) for name in names]


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
        resume_checkpoint: str | None = "checkpoints/last.ckpt",
        resume_key: str = "ckpt_path",
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
        self.resume_checkpoint = resume_checkpoint
        self.resume_key = resume_key
        self.objectives: list[str] | None = None
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher: Any = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        """Keep Hydra's context and config; build the launcher around the recording task."""
        from slimlab.utils.sweeps import recording_launcher

        self.hydra_context = hydra_context
        self.config = config
        self.objectives = objective_names(config.get("optimized_metric"), self.directions)
        self.launcher = recording_launcher(hydra_context, task_function, config)

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        """Run the remaining trials of the study and write `optimization_results.yaml`."""
        from slimlab.utils.sweeps import job_folders, raise_if_failed

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
        self._settle_interrupted(study)
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

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        returns: list[Sequence[JobReturn]] = []
        failures: list[Any] = []
        launched = 0
        while remaining > 0:
            batch = [study.ask(distributions) for _ in range(min(self.n_jobs, remaining))]
            try:  # a broken config fails every trial alike: stop, and leave no trial running
                overrides = [
                    self._trial_overrides(trial, fixed, extend, job_idx + offset)
                    for offset, trial in enumerate(batch)
                ]
                folders = job_folders(
                    self.hydra_context.config_loader, self.config, overrides, job_idx
                )
            except Exception:
                for trial in batch:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                raise
            for trial, folder in zip(batch, folders):
                trial.set_user_attr(OUTPUT_DIR_ATTR, str(folder))
            with launching({job_idx + i: trial for i, trial in enumerate(batch)}):
                try:
                    results = self.launcher.launch(overrides, initial_job_idx=job_idx)
                except Exception as exc:  # the launcher lost the batch: read what its jobs wrote
                    log.error(
                        "The launcher failed on trials %s: %r", [t.number for t in batch], exc
                    )
                    results = None
                    failures += self._settle_lost(study, batch, overrides, exc)
            for trial, trial_overrides, result in zip(batch, overrides, results or []):
                failure = self._tell(study, trial, trial_overrides, result)
                if failure is not None:
                    failures.append(failure)
            if results is not None:
                returns.append(results)
            job_idx += len(batch)
            launched += len(batch)
            remaining -= len(batch)

        self._write_results(study, sweep_dir / "optimization_results.yaml")
        raise_if_failed(failures, launched, sweep_dir)
        return returns

    def _trial_overrides(
        self, trial: optuna.Trial, fixed: list[str], extend: Any, job_num: int
    ) -> list[str]:
        """The overrides of the job that runs `trial`: fixed, suggested, and a resume point."""
        if extend is not None:
            extend(self.config, trial)
        trial.set_user_attr(JOB_IDX_ATTR, job_num)
        overrides = fixed + [f"{k}={override_value(v)}" for k, v in trial.params.items()]
        resume = trial.user_attrs.get(RESUME_ATTR)
        if resume and Path(resume).is_file():
            log.info(
                "Trial %d resumes interrupted trial %s from %s",
                trial.number,
                trial.user_attrs.get(RETRY_ATTR),
                resume,
            )
            overrides.append(f"{self.resume_key}={override_value(resume)}")
        return overrides

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

    def _settle_interrupted(self, study: optuna.Study) -> None:
        """Settle the trials a killed sweep left RUNNING: from their job's status file when the
        job finished, else told FAIL and enqueued again (resuming from the job's checkpoint)."""
        import optuna

        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        for trial in running:
            folder = trial.user_attrs.get(OUTPUT_DIR_ATTR)
            if self._tell_status(study, trial.number, folder) is not None:
                log.info(
                    "Trial %d (job %s) had finished when the sweep stopped: recorded",
                    trial.number,
                    trial.user_attrs.get(JOB_IDX_ATTR),
                )
                continue
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            attrs = {RETRY_ATTR: trial.number}
            checkpoint = self._checkpoint_of(folder)
            if checkpoint is not None:
                attrs[RESUME_ATTR] = str(checkpoint)
            study.enqueue_trial(trial.params, user_attrs=attrs)
            log.warning(
                "Trial %d (job %s) was left running by an interrupted sweep: marked failed, "
                "its params %s will run again%s",
                trial.number,
                trial.user_attrs.get(JOB_IDX_ATTR),
                trial.params,
                f", resuming from {checkpoint}" if checkpoint else "",
            )

    def _checkpoint_of(self, folder: str | None) -> Path | None:
        """The resume checkpoint an interrupted job in `folder` left, if any."""
        if folder is None or self.resume_checkpoint is None:
            return None
        path = Path(folder) / self.resume_checkpoint
        return path if path.is_file() else None

    def _tell_status(self, study: optuna.Study, number: int, folder: str | None) -> Any:
        """Tell trial `number` what its job's `job_status.json` says; None if there is none."""
        import optuna

        from slimlab.utils.sweeps import COMPLETED, PRUNED, read_status

        status = read_status(folder)
        if status is None:
            return None
        state = status.get("status")
        if state == PRUNED:
            study.tell(number, state=optuna.trial.TrialState.PRUNED)
        elif state == COMPLETED:
            try:
                values = objective_values(status.get("value"), len(self.directions))
            except ValueError:
                study.tell(number, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(number, values[0] if len(values) == 1 else values)
        else:
            study.tell(number, state=optuna.trial.TrialState.FAIL)
        return status

    def _settle_lost(
        self,
        study: optuna.Study,
        batch: Sequence[optuna.Trial],
        overrides: Sequence[Sequence[str]],
        exc: Exception,
    ) -> list[Any]:
        """Settle a batch whose launcher raised, from what its jobs wrote; return the failures."""
        import optuna

        from slimlab.utils.sweeps import COMPLETED, PRUNED, Failure, error_text

        failures = []
        for trial, trial_overrides in zip(batch, overrides):
            status = self._tell_status(study, trial.number, trial.user_attrs.get(OUTPUT_DIR_ATTR))
            if status is None:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                status = {"error": f"lost by the launcher: {error_text(exc)}"}
            if status.get("status") not in (COMPLETED, PRUNED):
                job = trial.user_attrs.get(JOB_IDX_ATTR, -1)
                error = status.get("error") or "failed"
                failures.append(Failure(job, self._named(trial, trial_overrides), error))
        return failures

    @staticmethod
    def _named(trial: optuna.Trial, overrides: Sequence[str]) -> tuple[str, ...]:
        """The overrides that tell this trial from the others: its suggested params."""
        keys = tuple(f"{key}=" for key in trial.params)
        return tuple(o for o in overrides if o.startswith(keys)) or tuple(overrides)

    def _tell(
        self, study: optuna.Study, trial: optuna.Trial, overrides: Sequence[str], result: JobReturn
    ) -> Any:
        """Tell the study how one job ended; return the Failure of a job that raised, or None.

        A failed job is logged, never re-raised.
        """
        import optuna

        from slimlab.utils.compat import hydra_job_error
        from slimlab.utils.sweeps import Failure, error_text, is_user_error

        job = trial.user_attrs.get(JOB_IDX_ATTR)
        # read what the job raised without `return_value`, which writes "Error executing job"
        raised = hydra_job_error(result)
        if isinstance(raised, optuna.TrialPruned):  # a pruned job is no error
            log.info("Trial %d (job %s) was %s", trial.number, job, raised)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return None
        if result.status != JobStatus.COMPLETED:
            text = error_text(raised) if raised is not None else f"status {result.status.name}"
            trace = None if raised is None or is_user_error(raised) else raised
            log.warning(
                "Trial %d (job %s) failed: %s; overrides %s",
                trial.number,
                job,
                text,
                list(overrides),
                exc_info=trace,
            )
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return Failure(job, self._named(trial, overrides), text)
        try:
            values = objective_values(result.return_value, len(self.directions))
        except ValueError as exc:
            log.warning(
                "Trial %d (job %s) failed: %s; overrides %s", trial.number, job, exc, overrides
            )
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return None
        study.tell(trial, values[0] if len(values) == 1 else values)
        return None

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
        if self.objectives is not None:
            results["optimized_metric"] = (
                self.objectives[0] if len(self.objectives) == 1 else self.objectives
            )
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
        else:  # the Pareto set: every trial no other trial beats in all objectives
            names = self.objectives or [f"objective_{i}" for i in range(len(self.directions))]
            results["best_trials"] = [
                {
                    "trial": t.number,
                    "job": t.user_attrs.get(JOB_IDX_ATTR),
                    "output_dir": t.user_attrs.get(OUTPUT_DIR_ATTR),
                    "params": t.params,
                    "values": t.values,
                    "metrics": dict(zip(names, t.values)),
                }
                for t in sorted(study.best_trials, key=lambda t: t.number)
            ]
            log.info("Pareto set: %d trials", len(results["best_trials"]))
        OmegaConf.save(OmegaConf.create(results), path)
        log.info("Wrote %s", path)
