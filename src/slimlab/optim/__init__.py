"""Optimizers the `optimizer` config group can choose beside torch's own."""

from slimlab.optim.bnb import bnb_optimizer

__all__ = ["bnb_optimizer"]
