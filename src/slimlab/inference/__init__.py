"""Inference outside training: one Predictor over a checkpoint or an exported file."""

from slimlab.inference.predictor import InputError, Predictor

__all__ = ["InputError", "Predictor"]
