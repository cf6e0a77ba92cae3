"""Models. Every model takes images in [0, 1] shaped (N, C, H, W) and normalises them itself.

The classes are exported here under stable names (``prune_cli.models.MLP``): model configs and every saved
checkpoint's spec name them so, whatever file inside the package defines them.
"""
from prune_cli.models.builtin import (MLP, VGG, BasicBlock, CIFARResNet, Conv2, Conv4, Conv6, ConvNet,
                                      LeNet5, Normalize)
from prune_cli.models.spec import build, build_for, make_spec
from prune_cli.models.torchvision_model import TorchvisionModel
from prune_cli.models.vit import ViT

__all__ = ["MLP", "VGG", "BasicBlock", "CIFARResNet", "Conv2", "Conv4", "Conv6", "ConvNet", "LeNet5",
           "Normalize", "TorchvisionModel", "ViT", "build", "build_for", "make_spec"]
