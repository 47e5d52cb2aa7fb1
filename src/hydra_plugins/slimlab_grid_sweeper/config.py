"""Options of the `slimlab_grid` sweeper, registered as `hydra/sweeper=slimlab_grid`."""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore


@dataclass
class SlimlabGridSweeperConf:
    """Structured config of `GridSweeper`; each field is one `hydra.sweeper.<name>` key."""

    _target_: str = "hydra_plugins.slimlab_grid_sweeper.grid_sweeper.GridSweeper"
    # jobs per launcher call (>= 1); null launches all jobs in one call (parallel launchers
    # such as submitit run a call's jobs at the same time)
    max_batch_size: int | None = None
    # key -> values in Hydra sweep syntax (a,b,c, range(1, 4), choice(...)), swept as if
    # given on the command line; a command-line override of the same key replaces it
    params: dict[str, str] | None = None


ConfigStore.instance().store(
    group="hydra/sweeper", name="slimlab_grid", node=SlimlabGridSweeperConf, provider="slimlab"
)
