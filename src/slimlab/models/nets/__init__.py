"""Plain nn.Module networks, built by name from config."""

from slimlab.models.nets.cnn import SmallCNN
from slimlab.models.nets.mlp import MLP
from slimlab.models.nets.resnet import CifarResNet, resnet20, resnet32, resnet56

__all__ = ["MLP", "CifarResNet", "SmallCNN", "resnet20", "resnet32", "resnet56"]
