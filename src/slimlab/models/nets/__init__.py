"""Plain nn.Module networks, built by name from config."""

from slimlab.models.nets.cnn import SmallCNN
from slimlab.models.nets.mlp import MLP
from slimlab.models.nets.resnet import CifarResNet

__all__ = ["MLP", "CifarResNet", "SmallCNN"]
