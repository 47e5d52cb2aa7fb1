"""LightningModules; `nets/` holds the plain nn.Modules they train."""

from slimlab.models.base import (
    SlimModule,
    call_net,
    count_parameters,
    load_module,
    logits_of,
    register_structure_restorer,
)
from slimlab.models.classification import ClassificationModule
from slimlab.models.classifier import ImageClassifier
from slimlab.models.text_classifier import TextClassifier

__all__ = [
    "ClassificationModule",
    "ImageClassifier",
    "SlimModule",
    "TextClassifier",
    "call_net",
    "count_parameters",
    "load_module",
    "logits_of",
    "register_structure_restorer",
]
