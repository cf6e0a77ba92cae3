"""A small Vision Transformer: torchvision's ``VisionTransformer`` (Dosovitskiy et al. 2021), sized for small
images and any channel count.

Patches of ``patch_size`` pixels (``null``: a quarter of the image side, 2 on 8x8 digits, 7 on 28x28 MNIST,
8 on 32x32 CIFAR), ``layers`` encoder blocks of ``heads`` attention heads over ``hidden_dim`` features and an
MLP of ``mlp_dim`` hidden units each, then the class token's Linear head. ``width`` scales ``hidden_dim`` (kept
a multiple of ``heads``) and ``mlp_dim``, for ``strategy=compress``.

Each block's ``nn.MultiheadAttention`` is replaced by ``HeadAttention`` (``attention.py``): the same function
with the query, key, value and output projections as separate Linear layers, so that every Linear (the four
projections, the MLP blocks, the head) and the patch embedding take unstructured and N:M masks and calibration
(Wanda, SparseGPT) sees each projection's inputs. Structured strategies remove attention heads (a head's rows
of query, key and value and its columns of the output projection) and MLP hidden units, physically, like any
other structured result; the residual stream is tied to the class token, the position embedding and the
LayerNorms, so it keeps its width (the report names it).
"""
from __future__ import annotations

from typing import Optional

from torch import nn

from prune_cli.errors import UsageError
from prune_cli.models.attention import HeadAttention
from prune_cli.models.builtin import Normalize, scaled
from prune_cli.schema import WIDTH, Int, Optional_


class ViT(nn.Module):
    config_schema = {"width": WIDTH, "patch_size": Optional_(Int(1, 4096)), "layers": Int(1, 1000),
                     "heads": Int(1, 1024), "hidden_dim": Int(1, 1 << 16), "mlp_dim": Int(1, 1 << 20)}

    def __init__(self, input_shape, num_classes, mean, std, patch_size: Optional[int] = None, layers: int = 2,
                 heads: int = 4, hidden_dim: int = 64, mlp_dim: int = 128, width: float = 1.0):
        super().__init__()
        from torchvision.models.vision_transformer import VisionTransformer
        channels, height, width_px = (int(v) for v in input_shape)
        if height != width_px:
            raise UsageError(f"model=vit: needs square images, got {height}x{width_px}")
        patch = int(patch_size) if patch_size is not None else max(1, height // 4)
        if height % patch:
            raise UsageError(f"model.patch_size={patch}: must divide the image size {height}")
        hidden = int(heads) * max(1, round(int(hidden_dim) * float(width) / int(heads)))
        self.normalize = Normalize(mean, std)
        self.net = VisionTransformer(image_size=height, patch_size=patch, num_layers=int(layers),
                                     num_heads=int(heads), hidden_dim=hidden, mlp_dim=scaled(int(mlp_dim), width),
                                     num_classes=int(num_classes))
        if channels != 3:  # torchvision's patch embedding takes RGB
            self.net.conv_proj = nn.Conv2d(channels, hidden, kernel_size=patch, stride=patch)
        for block in self.net.encoder.layers:  # torchvision's attention dropout is 0.0 too
            block.self_attention = HeadAttention(hidden, int(heads))

    def forward(self, x):
        return self.net(self.normalize(x))
