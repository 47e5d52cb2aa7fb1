"""LightningModules; `nets/` holds the plain nn.Modules they train."""

from slimlab.models.base import SlimModule, count_parameters, register_structure_restorer
from slimlab.models.classifier import ImageClassifier

__all__ = ["ImageClassifier", "SlimModule", "count_parameters", "register_structure_restorer"]
