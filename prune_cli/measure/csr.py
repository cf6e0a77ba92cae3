"""Turn unstructured sparsity into speed: Linear layers with a CSR weight, kept only where they are faster.

A pruned weight stored densely runs at dense speed. Stored as CSR, a 1024x1024 Linear on a quiet 2-core CPU
was 1.75x / 2.8x / 4.4x faster than dense at batch 256 and 0.96x / 1.4x / 2.4x at batch 1, at 90 / 95 / 99%
sparsity; below that, or for small layers, the sparse kernel's overhead wins. So a run with
``export.sparse=true`` times both on the actual model, side by side, and keeps the sparse one only when
``sparse_is_faster`` says so.
"""
from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from prune_cli.pruning.sparsity import zero_count


class SparseLinear(nn.Module):
    """Inference-only Linear whose weight is a CSR matrix with int32 indices.

    ``y = (W_csr @ x.T + b[:, None]).T`` in one ``torch.addmm``. Measured on a 2-core CPU (torch 2.14,
    1024x1024, 90-99% sparse) it was the fastest at batch 256 against ``torch.sparse.addmm`` and
    ``torch.mm(W, x.T).T + b`` (a few % slower), ``F.linear`` with a CSR weight (a little faster at batch 1
    at 90%, but 2-3x slower at batch 256 and refused under ``inference_mode``), a COO weight (7-40x slower)
    and ``x @ W.T`` with a CSR ``W.T`` (4x slower or worse). int32 indices are up to ~30% faster than
    torch's default int64 at batch 1, and half the size. The output is returned as the transposed view:
    making it contiguous costs 30-60% at batch 256, and the next layer (dense or sparse) takes it as it is.

    The CSR parts are stored as three plain buffers and assembled per call (~2 us): a CSR tensor held as a
    buffer breaks ``copy.deepcopy`` ("Cannot access storage of SparseCsrTensorImpl"), while plain buffers
    also follow ``.to()`` and load with ``torch.load(weights_only=True)``.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        with warnings.catch_warnings():
            # "Sparse CSR tensor support is in beta state": true, and nothing the user can act on.
            warnings.simplefilter("ignore", UserWarning)
            csr = weight.detach().to_sparse_csr()
        self.register_buffer("crow_indices", csr.crow_indices().to(torch.int32))
        self.register_buffer("col_indices", csr.col_indices().to(torch.int32))
        self.register_buffer("values", csr.values().clone())
        # addmm broadcasts a (out, 1) column over the batch; without a bias it adds zeros, which is cheaper
        # than a second code path.
        bias = torch.zeros(self.out_features, dtype=weight.dtype, device=weight.device) if bias is None else bias
        self.register_buffer("bias", bias.detach().clone().unsqueeze(1))

    @classmethod
    def from_dense(cls, linear: nn.Linear) -> "SparseLinear":
        return cls(linear.weight, linear.bias)

    @property
    def weight(self) -> torch.Tensor:
        """The weight as a CSR tensor (it shares memory with the buffers). Invariants were checked when
        the buffers were made from a dense weight, so they are not re-checked on every call."""
        return torch.sparse_csr_tensor(self.crow_indices, self.col_indices, self.values,
                                       size=(self.out_features, self.in_features), check_invariants=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Any leading dimensions fold into one batch dimension, as nn.Linear allows.
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        out = torch.addmm(self.bias, self.weight, x2.t()).t()
        return out.reshape(*lead, self.out_features) if len(lead) != 1 else out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.values.numel()}"


def to_sparse(model: nn.Module, min_sparsity: float = 0.8) -> nn.Module:
    """A deep copy, in eval mode, with every Linear at least ``min_sparsity`` zero replaced by SparseLinear.

    Only exact ``nn.Linear`` instances are replaced: subclasses can have their weight used outside
    ``forward`` (``MultiheadAttention.out_proj`` is one), where a swapped module would be silently ignored
    or break. The original model is left untouched.
    """
    sparse = copy.deepcopy(model)
    for parent in list(sparse.modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is nn.Linear and zero_count(child.weight) / child.weight.numel() >= min_sparsity:
                setattr(parent, child_name, SparseLinear.from_dense(child))
    return sparse.eval()


def sparse_layer_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, SparseLinear)]


def sparse_is_faster(dense_ms: dict, sparse_ms: dict) -> bool:
    """Kept only when faster at the largest batch timed: the throughput case CSR kernels are meant for."""
    key = max(dense_ms, key=lambda k: int(k.split("_")[1]))
    return sparse_ms[key] < dense_ms[key]
