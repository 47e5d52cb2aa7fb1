"""Template callbacks that are not compression (those live in slimlab.compression)."""

from slimlab.callbacks.optuna_pruning import OptunaPruning
from slimlab.callbacks.rng_state import RNGStateCallback

__all__ = ["OptunaPruning", "RNGStateCallback"]
