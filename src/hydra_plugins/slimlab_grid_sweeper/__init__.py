"""Hydra sweeper plugin `slimlab_grid`: Hydra's grid sweep that records failed jobs and goes on.

Nothing is re-exported here on purpose: Hydra's plugin scanner imports every module of this
package itself. Use `hydra/sweeper=slimlab_grid` (the template's default, configs/hydra/);
the options live in `config.py`, the sweeper in `grid_sweeper.py`.
"""
