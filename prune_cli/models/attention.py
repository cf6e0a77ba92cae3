"""Multi-head self-attention with one Linear per projection, so that heads can be removed.

``nn.MultiheadAttention`` packs the query, key and value projections into one ``in_proj_weight`` and applies
``out_proj``'s weight without calling it, so neither masks per head nor calibration hooks can reach them.
``HeadAttention`` computes the same function (Vaswani et al. 2017: softmax(QK^T / sqrt(d)) V per head, the heads
concatenated, then the output projection) with ``query``, ``key``, ``value`` and ``out`` as separate
``nn.Linear`` modules that are each called in ``forward``.

It declares its heads for structured pruning (``prune_cli.pruning.units``): ``head_projections`` names the
layers whose output rows are grouped ``head_dim`` at a time (query, key, value) and the layer whose input
columns read them (out). The number of heads is read from the layers' sizes, so a model whose projections
were shrunk (heads removed) runs as it is and rebuilds from its recorded shapes.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class HeadAttention(nn.Module):
    # Head h owns rows [h * head_dim, (h + 1) * head_dim) of query, key and value and the same columns of out.
    head_projections = {"heads": ("query", "key", "value"), "reader": "out"}

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} is not a multiple of num_heads={num_heads}")
        self.head_dim = embed_dim // num_heads
        self.dropout = float(dropout)
        self.query = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.key = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.value = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.out = nn.Linear(embed_dim, embed_dim, bias=bias)
        self._reset_parameters()

    @torch.no_grad()
    def _reset_parameters(self) -> None:
        """nn.MultiheadAttention's initialisation: Xavier-uniform over the packed (3E, E) projection (so each
        projection draws from the bound of that shape), zero projection biases; the output projection keeps
        nn.Linear's weights with a zero bias."""
        embed_dim = self.query.in_features
        bound = (6.0 / (embed_dim + 3 * embed_dim)) ** 0.5
        for layer in (self.query, self.key, self.value):
            nn.init.uniform_(layer.weight, -bound, bound)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        if self.out.bias is not None:
            nn.init.zeros_(self.out.bias)

    @property
    def num_heads(self) -> int:
        return self.query.out_features // self.head_dim

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # (batch, tokens, heads * dim) -> (batch, heads, tokens, dim)
        return x.unflatten(-1, (-1, self.head_dim)).transpose(1, 2)

    def forward(self, query: torch.Tensor, key=None, value=None, need_weights: bool = False):
        """Self-attention over ``query`` (batch, tokens, features). ``key``/``value`` and ``need_weights`` are
        accepted for ``nn.MultiheadAttention``'s call signature (torchvision's encoder block passes x three
        times); returns (output, None) like it."""
        if (key is not None and key is not query) or (value is not None and value is not query):
            raise ValueError("HeadAttention is self-attention: key and value must be the query tensor")
        q, k, v = self._split(self.query(query)), self._split(self.key(query)), self._split(self.value(query))
        heads = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out(heads.transpose(1, 2).flatten(2)), None
