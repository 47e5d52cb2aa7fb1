"""Hydra sweeper plugin `slimlab_optuna`: an Optuna study run with ask/tell that resumes.

Nothing is re-exported here on purpose: Hydra's plugin scanner imports (and re-executes) every
module of this package itself, so importing them here would register the sweeper class twice.
Use `hydra/sweeper=slimlab_optuna`; the options live in `config.py`, the sweeper in
`optuna_sweeper.py`.
"""
