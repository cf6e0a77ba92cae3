"""Measured inference latency: structured pruning shrunk with prune_cli.pruning.shrink, and the CSR sparse export.

1. Structured: half the units of every hidden layer (lowest L1 norm) masked with prune_cli.pruning.units.unit_masks,
   then physically removed with prune_cli.pruning.shrink.shrink (which checks the small model computes what the masked
   one does). Dense vs shrunk, batch 1 and 256:
   - MLP 784-1024-1024-10 -> 784-512-512-10;
   - LeNet-5 on 1x28x28 (conv 6-16, fc 120-84 -> conv 3-8, fc 60-42);
   - Conv-2 on 1x28x28 (VGG-like: conv 64-64, pool, fc 256-256 -> conv 32-32, fc 128-128).
2. Unstructured: MLP 784-1024-1024-10 at 90 / 95 / 99% sparsity in every Linear (per-layer magnitude), stored
   densely (= dense speed) vs exported with prune_cli.measure.csr.to_sparse (CSR Linear layers).

Timing: inference_mode, eval mode, float32, the contenders of one comparison interleaved round by round
(A, B, A, B, ...), each round timing several single forward passes; the table shows the median per pass over
all rounds and the speed-up (dense median / other median); "speed-up (minima)" is the ratio of the fastest
passes, the least disturbed by other processes on a shared machine.

    python benchmarks/latency.py [--rounds 15]
"""
from __future__ import annotations

import argparse
import statistics
import warnings

import torch
from torch import nn

from _common import add_common_args, begin, machine, table, write_results
from prune_cli.measure.latency import time_side_by_side

INPUT = (1, 28, 28)


def build(name):
    from prune_cli.models import MLP, Conv2, LeNet5
    torch.manual_seed(0)
    kwargs = dict(input_shape=INPUT, num_classes=10, mean=[0.5], std=[0.25])
    if name == "mlp":
        return MLP(hidden=[1024, 1024], **kwargs).eval()
    if name == "lenet5":
        return LeNet5(**kwargs).eval()
    if name == "conv2":
        return Conv2(**kwargs).eval()
    raise ValueError(name)


@torch.inference_mode()
def interleaved_latency(models: dict[str, nn.Module], batch: int, rounds: int, per_round: int,
                        budget_s: float) -> dict[str, list[float]]:
    """Per-pass seconds of each model, interleaved by prune-cli's own timer; stops (after 3 rounds) past
    ``budget_s``."""
    x = torch.rand(batch, *INPUT)
    calls = {name: (lambda m=m: m(x)) for name, m in models.items()}
    return time_side_by_side(calls, repeats=rounds, warmup=2, max_time_s=budget_s, per_turn=per_round)


def half_units_shrunk(model):
    from prune_cli.pruning.shrink import shrink
    from prune_cli.pruning.units import unit_layers, unit_masks
    example = torch.zeros(1, *INPUT)
    layers = unit_layers(model, example)
    params = dict(model.named_parameters())
    removed = {}
    for layer in layers:
        norms = params[layer.weight_name].detach().abs().flatten(1).sum(1)
        removed[layer.name] = torch.argsort(norms)[: layer.num_units // 2].tolist()
    masks = unit_masks(model, example, removed, layers=layers)
    small, info = shrink(model, masks, example)
    # shrink checks exactness itself; check again on a real batch
    masked = _masked_copy(model, masks)
    x = torch.rand(64, *INPUT)
    with torch.no_grad():
        diff = float((masked(x) - small(x)).abs().max())
    return masked, small.eval(), info, diff


def _masked_copy(model, masks):
    import copy
    m = copy.deepcopy(model)
    masks.apply_(m)
    return m.eval()


def sparse_mlp(sparsity):
    from prune_cli.pruning.masks import Masks, prunable_names, topk_masks
    from prune_cli.measure.csr import sparse_layer_names, to_sparse
    model = build("mlp")
    params = dict(model.named_parameters())
    names = prunable_names(model)
    masks = Masks(topk_masks({n: params[n].detach().abs() for n in names}, sparsity, scope="layer"))
    masks.apply_(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sparse = to_sparse(model, min_sparsity=0.8)
    x = torch.rand(64, *INPUT)
    with torch.inference_mode():
        diff = float((model(x) - sparse(x)).abs().max())
    return model, sparse, sparse_layer_names(sparse), diff


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--budget", type=float, default=8.0, help="seconds per comparison and batch size")
    add_common_args(parser)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*Sparse CSR.*")
    contention = begin(args)

    def per_round(batch):
        return 20 if batch == 1 else 4

    results = {"structured": {}, "sparse": {}}
    rows_s, rows_u = [], []
    for name, label in (("mlp", "MLP 784-1024-1024-10"), ("lenet5", "LeNet-5 (1x28x28)"),
                        ("conv2", "Conv-2 64-64/256-256 (1x28x28)")):
        dense = build(name)
        masked, small, info, diff = half_units_shrunk(dense)
        entry = {"units_kept": info["units_kept"], "params_dense": sum(p.numel() for p in dense.parameters()),
                 "params_shrunk": info["params"], "max_abs_diff_masked_vs_shrunk": diff, "batches": {}}
        for batch in (1, 256):
            s = interleaved_latency({"dense": dense, "shrunk": small}, batch, args.rounds, per_round(batch),
                                    args.budget)
            d, k = statistics.median(s["dense"]), statistics.median(s["shrunk"])
            dm, km = min(s["dense"]), min(s["shrunk"])
            entry["batches"][batch] = {"dense_ms": d * 1e3, "shrunk_ms": k * 1e3, "speedup": d / k,
                                       "dense_min_ms": dm * 1e3, "shrunk_min_ms": km * 1e3,
                                       "speedup_of_minima": dm / km, "samples": len(s["dense"])}
            rows_s.append([label, batch, f"{d * 1e3:.3f}", f"{k * 1e3:.3f}", f"{d / k:.2f}x",
                           f"{dm / km:.2f}x", len(s["dense"])])
        results["structured"][label] = entry
        print(f"  {label}: units kept {info['units_kept']}, |masked - shrunk| <= {diff:.2g}", flush=True)

    for sparsity in (0.9, 0.95, 0.99):
        dense, sparse, layers, diff = sparse_mlp(sparsity)
        entry = {"sparse_layers": layers, "max_abs_diff": diff, "batches": {}}
        for batch in (1, 256):
            s = interleaved_latency({"dense": dense, "csr": sparse}, batch, args.rounds, per_round(batch),
                                    args.budget)
            d, k = statistics.median(s["dense"]), statistics.median(s["csr"])
            dm, km = min(s["dense"]), min(s["csr"])
            entry["batches"][batch] = {"dense_ms": d * 1e3, "csr_ms": k * 1e3, "speedup": d / k,
                                       "dense_min_ms": dm * 1e3, "csr_min_ms": km * 1e3,
                                       "speedup_of_minima": dm / km, "samples": len(s["dense"])}
            rows_u.append([f"{sparsity:.0%}", batch, f"{d * 1e3:.3f}", f"{k * 1e3:.3f}", f"{d / k:.2f}x",
                           f"{dm / km:.2f}x", len(s["dense"])])
        results["sparse"][f"{sparsity}"] = entry
        print(f"  CSR {sparsity:.0%}: layers {layers}, |dense - csr| <= {diff:.2g}", flush=True)

    contention.__exit__(None, None, None)
    info = machine()
    info["contention"] = contention.result
    print(f"\nlatency: float32, inference_mode, {info['threads']} threads, torch {info['torch']}; "
          f"median ms per forward pass, contenders interleaved")
    print("\nstructured: half of every hidden layer's units removed by prune_cli.pruning.shrink")
    print(table(["model", "batch", "dense ms", "shrunk ms", "speed-up", "speed-up (minima)", "samples"], rows_s))
    print("\nunstructured MLP 784-1024-1024-10, every Linear at the sparsity, CSR export (prune_cli.measure.csr)")
    print(table(["sparsity", "batch", "dense ms", "CSR ms", "speed-up", "speed-up (minima)", "samples"], rows_u))
    print(contention.line())
    path = write_results("latency", {"machine": info, "settings": vars(args), "results": results}, tag=args.tag)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
