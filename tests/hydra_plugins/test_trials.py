"""The Optuna sweeper's public API for jobs: the trial of the job running in this process."""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict, read_write

from hydra_plugins.slimlab_optuna_sweeper.trials import current_trial, launching, trial_of_job


def test_a_job_finds_its_trial_only_while_its_batch_is_launched(compose_cfg) -> None:
    cfg = compose_cfg()
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.job.num = 7
    HydraConfig().set_config(cfg)
    trial = object()
    assert current_trial() is None
    with launching({7: trial, 8: object()}):
        assert current_trial() is trial
        assert trial_of_job(7) is trial
    assert current_trial() is None and trial_of_job(8) is None
