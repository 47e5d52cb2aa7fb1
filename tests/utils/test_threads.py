"""`threads`: the CPU threads a run uses, respecting OMP_NUM_THREADS and sharing cores among
the local DDP processes, never the value a previous job exported mistaken for the user's."""

from __future__ import annotations

import os

import pytest
import torch

from slimlab.utils import threads as threads_mod
from slimlab.utils.errors import ConfigError
from slimlab.utils.threads import apply_threads, local_processes, resolve_threads


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No user OMP_NUM_THREADS, nothing remembered; torch's thread count restored after."""
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("SLIMLAB_USER_OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    yield
    torch.set_num_threads(before)


def test_auto_leaves_a_core_free_and_shares_the_rest_among_local_processes(monkeypatch) -> None:
    monkeypatch.setattr(threads_mod, "usable_cores", lambda: 16)
    assert resolve_threads("auto", {"devices": 1, "accelerator": "cpu"}) == 15
    assert resolve_threads("auto", {"devices": 2, "accelerator": "cpu"}) == 7  # trainer=ddp_sim
    assert resolve_threads("auto", {"devices": "0,1,2", "accelerator": "gpu"}) == 5
    monkeypatch.setattr(threads_mod, "usable_cores", lambda: 2)  # the development machine
    assert resolve_threads("auto", {"devices": 1}) == 1
    assert resolve_threads("auto", {"devices": 2, "accelerator": "cpu"}) == 1  # never 0


def test_users_omp_num_threads_wins_over_auto_and_an_integer_over_both(monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert resolve_threads("auto", {"devices": 1}) == 3
    assert resolve_threads(2, {"devices": 1}) == 2


def test_an_exported_value_is_not_mistaken_for_the_users_in_the_next_job(monkeypatch) -> None:
    monkeypatch.setattr(threads_mod, "usable_cores", lambda: 16)
    assert apply_threads("auto", {"devices": 1, "accelerator": "cpu"}) == 15
    assert torch.get_num_threads() == 15 and os.environ["OMP_NUM_THREADS"] == "15"
    # the next job of a multirun (same process) runs 2 DDP processes: 7 each, not 15 each
    assert apply_threads("auto", {"devices": 2, "accelerator": "cpu"}) == 7
    assert os.environ["OMP_NUM_THREADS"] == "7"  # what its DDP ranks inherit


def test_local_processes_reads_torchrun_and_device_lists(monkeypatch) -> None:
    assert local_processes({"devices": [0, 1, 2, 3], "accelerator": "gpu"}) == 4
    assert local_processes({"devices": "auto", "accelerator": "cpu"}) == 1
    assert local_processes(None) == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert local_processes({"devices": 1}) == 8


@pytest.mark.parametrize("bad", [0, -2, "many", 1.5, True])
def test_bad_threads_value_names_the_key_and_what_is_valid(bad) -> None:
    with pytest.raises(ConfigError, match=r"threads=.* give a positive integer, or auto"):
        resolve_threads(bad, {"devices": 1})


def test_train_applies_threads_before_building_and_records_them(compose_cfg) -> None:
    import json
    from pathlib import Path

    from slimlab.train import train

    cfg = compose_cfg(["debug=fdr", "threads=1"])
    train(cfg)
    assert torch.get_num_threads() == 1
    summary = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert summary["threads"] == 1
