"""LightningModules; `nets/` holds the plain nn.Modules they train."""

from slimlab.models.base import (
    SlimModule,
    call_net,
    count_parameters,
    load_module,
    logits_of,
    register_structure_restorer,
)
from slimlab.models.classifier import ImageClassifier

__all__ = [
    "ImageClassifier",
    "SlimModule",
    "call_net",
    "count_parameters",
    "load_module",
    "logits_of",
    "register_structure_restorer",
]
