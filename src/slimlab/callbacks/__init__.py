"""Template callbacks that are not compression (those live in slimlab.compression)."""

from slimlab.callbacks.rng_state import RNGStateCallback

__all__ = ["RNGStateCallback"]
