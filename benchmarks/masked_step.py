"""Masked fine-tuning step rate: prune_cli (in-place re-masking after each optimizer step) vs plain training
(no masks) vs torch.nn.utils.prune (forward-pre-hooks computing weight_orig * weight_mask every forward).

All three run the same loop, prune_cli.training.loop.fit, with the same batches, Adam, batch 64 and the same number
of steps; only the masking differs. The mask is the same for both masked contenders: the one
torch.nn.utils.prune.global_unstructured(L1Unstructured, amount=0.9) picks, copied into prune_cli's Masks.
Two models: lenet300 on digits (64-300-100-10), trained densely for 20 epochs first, and a wide MLP
784-1024-1024-10 on synthetic 1x28x28 data, trained densely for 1 epoch first (pruning untrained weights by
global magnitude can cut a whole layer, a degenerate case that is not what fine-tuning sees).

    python benchmarks/masked_step.py [--repeats 9] [--amount 0.9]
"""
from __future__ import annotations

import argparse
import copy
import time

import torch
from omegaconf import OmegaConf
from torch import nn

from _common import (add_common_args, begin, interleaved, machine, median, spread, table, trained_lenet300,
                     write_results)


def wide_mlp_setup(train_size: int):
    from prune_cli.data import load_dataset
    from prune_cli.models import build_for
    data = load_dataset(OmegaConf.create({"name": "synthetic", "shape": [1, 28, 28], "num_classes": 10,
                                          "train_size": train_size, "test_size": 64, "noise": 0.3,
                                          "split_seed": 0, "val_fraction": 0.0}))
    from prune_cli.training.loop import fit
    from prune_cli.training.settings import StageSettings
    torch.manual_seed(0)
    model, _ = build_for({"name": "mlp_wide", "_target_": "prune_cli.models.MLP", "hidden": [1024, 1024]},
                         data.info)
    fit(model, data.train, StageSettings(epochs=1, lr=1e-3, batch_size=64), stage="dense", seed=0)
    return data, model


def hooked_copy(model: nn.Module, amount: float):
    """A copy pruned with torch.nn.utils.prune (global L1, every Linear weight) and the mask it chose."""
    import torch.nn.utils.prune as prune
    hooked = copy.deepcopy(model)
    linears = [(name, m) for name, m in hooked.named_modules() if isinstance(m, nn.Linear)]
    prune.global_unstructured([(m, "weight") for _, m in linears], pruning_method=prune.L1Unstructured,
                              amount=amount)
    masks = {f"{name}.weight": m.weight_mask.detach().clone() for name, m in linears}
    return hooked, masks


def bench_model(label, data, model, epochs, repeats, amount):
    from prune_cli.pruning.masks import Masks
    from prune_cli.training.loop import fit
    from prune_cli.training.settings import StageSettings

    settings = StageSettings(epochs=epochs, lr=1e-3, batch_size=64, optimizer="adam")
    steps = epochs * data.train.num_batches(64)
    hooked, mask_dict = hooked_copy(model, amount)
    masks = Masks(mask_dict)
    masked = copy.deepcopy(model)
    masks.apply_(masked)
    plain = copy.deepcopy(model)
    starts = {"plain": copy.deepcopy(plain.state_dict()), "prune_cli": copy.deepcopy(masked.state_dict()),
              "torch_prune": copy.deepcopy(hooked.state_dict())}
    models = {"plain": plain, "prune_cli": masked, "torch_prune": hooked}
    kwargs = {"plain": {}, "prune_cli": {"masks": masks}, "torch_prune": {}}

    def contender(name):
        def go():
            models[name].load_state_dict(starts[name])  # every trial starts from the same weights
            start = time.perf_counter()
            fit(models[name], data.train, settings, stage="bench", seed=0, **kwargs[name])
            return time.perf_counter() - start
        return go

    contenders = {name: contender(name) for name in models}
    for go in contenders.values():  # warm-up (lazy imports, allocator)
        go()
    times = interleaved(contenders, repeats)

    # The masked contenders must really hold the pruned weights at zero.
    zeros_ok = all(bool((dict(masked.named_parameters())[n][m == 0] == 0).all()) for n, m in masks.items())
    sparsity = float(sum(int((m == 0).sum()) for m in masks.values()) / sum(m.numel() for m in masks.values()))
    result = {"steps_per_trial": steps, "mask_sparsity": sparsity, "pruned_weights_stay_zero": zeros_ok,
              "contenders": {}}
    for name, ts in times.items():
        result["contenders"][name] = {"median_s": median(ts), "steps_per_s": steps / median(ts),
                                      "ms_per_step": median(ts) / steps * 1e3, "iqr_rel": spread(ts),
                                      "times_s": ts}
    paired = lambda a, b: median([tb / ta for ta, tb in zip(times[a], times[b])])  # noqa: E731
    result["ratios"] = {
        # step rate relative to plain training (1.0 = free masking)
        "prune_cli_vs_plain": paired("prune_cli", "plain"),
        "torch_prune_vs_plain": paired("torch_prune", "plain"),
        # > 1 means prune_cli's masked step is faster than torch.nn.utils.prune's
        "prune_cli_vs_torch_prune": paired("prune_cli", "torch_prune"),
    }
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--amount", type=float, default=0.9, help="global L1 sparsity")
    add_common_args(parser)
    args = parser.parse_args()
    contention = begin(args)

    results = {}
    data, model = trained_lenet300(20, 0)
    results["lenet300 (digits)"] = bench_model("lenet300", data, model, epochs=4, repeats=args.repeats,
                                               amount=args.amount)
    data, model = wide_mlp_setup(train_size=64 * 40)
    results["784-1024-1024-10 (synthetic)"] = bench_model("wide", data, model, epochs=1, repeats=args.repeats,
                                                          amount=args.amount)

    contention.__exit__(None, None, None)
    info = machine()
    info["contention"] = contention.result
    print(f"masked fine-tuning step: fit() with batch 64, Adam, {args.repeats} interleaved trials, "
          f"{info['threads']} threads, torch {info['torch']}, mask = global L1 at {args.amount:.0%}")
    rows = []
    for label, r in results.items():
        c, q = r["contenders"], r["ratios"]
        rows.append([label, r["steps_per_trial"],
                     f"{c['plain']['steps_per_s']:.0f}", f"{c['prune_cli']['steps_per_s']:.0f}",
                     f"{c['torch_prune']['steps_per_s']:.0f}",
                     f"{q['prune_cli_vs_plain']:.3f}", f"{q['torch_prune_vs_plain']:.3f}",
                     f"{q['prune_cli_vs_torch_prune']:.3f}"])
    print(table(["model", "steps/trial", "plain steps/s", "prune_cli steps/s", "torch prune steps/s",
                 "prune_cli / plain", "torch prune / plain", "prune_cli / torch prune"], rows))
    for label, r in results.items():
        print(f"{label}: mask sparsity {r['mask_sparsity']:.3f}, pruned weights stay zero: "
              f"{r['pruned_weights_stay_zero']}, IQR " +
              ", ".join(f"{k} {v['iqr_rel'] * 100:.0f}%" for k, v in r["contenders"].items()))
    print(contention.line())
    path = write_results("masked_step", {"machine": info, "settings": vars(args), "results": results}, tag=args.tag)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
