"""SlimLab: train a model and make it small and fast in the same Lightning + Hydra run."""

__version__ = "0.1.0"
