"""Plain nn.Module networks, built by name from config."""

from slimlab.models.nets.cnn import SmallCNN
from slimlab.models.nets.hf import hf_sequence_classifier
from slimlab.models.nets.mlp import MLP
from slimlab.models.nets.resnet import CifarResNet
from slimlab.models.nets.vit import VisionTransformer

__all__ = ["MLP", "CifarResNet", "SmallCNN", "VisionTransformer", "hf_sequence_classifier"]
