"""Accuracy and wall time side by side with torch.nn.utils.prune and Torch-Pruning, from the same dense weights.

digits, lenet300 (64-300-100-10), dense training by prune_cli (20 epochs, Adam 1e-3, batch 64; taken from its
dense cache so every tool starts from the identical trained weights), then for each seed:

- unstructured 90%: prune_cli (``strategy=magnitude``, global) vs torch.nn.utils.prune.global_unstructured
  (L1Unstructured, amount 0.9, every Linear weight), fine-tuned with the hooks in place;
- structured ~50% of the prunable weights: prune_cli (``strategy=magnitude strategy.granularity=structured``,
  L1 norm of each unit, global ranking) vs Torch-Pruning's MagnitudePruner with MagnitudeImportance(p=1),
  classifier ignored, its per-layer pruning_ratio solved so the prunable weights removed match prune_cli's,
  fine-tuning the physically smaller model.

Fine-tuning is the same for everyone: 10 epochs, Adam lr 1e-3, batch 64 (prune_cli's defaults; the peers use a
plain randperm loop). Accuracy is on the 360-image test split. Wall time is everything after the dense model
exists: prune + fine-tune + evaluate (for prune_cli also its report, checkpoint and latency measurements: the
"prune_cli run" column is the whole ``prune_cli.run`` call, "stages" its own timings.total).

    python benchmarks/peers.py [--seeds 0 1 2] [--finetune-epochs 10]
"""
from __future__ import annotations

import argparse
import copy
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from _common import DIGITS, LENET300, add_common_args, begin, machine, table, write_results

COMMON = ["model=lenet300", "dataset=digits", "progress=false"]


def finetune(model, train, epochs, seed, batch_size=64, lr=1e-3):
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    g = torch.Generator().manual_seed(seed)
    n = len(train.y)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for start in range(0, n, batch_size):
            idx = perm[start:start + batch_size]
            loss = F.cross_entropy(model(train.x[idx]), train.y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


@torch.inference_mode()
def accuracy(model, split):
    was = model.training
    model.eval()
    acc = float((model(split.x).argmax(1) == split.y).float().mean())
    model.train(was)
    return acc


def linear_weight_count(model):
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


def linear_weight_zeros(model):
    return sum(int((m.weight == 0).sum()) for m in model.modules() if isinstance(m, nn.Linear))


def torch_prune_run(dense, data, amount, epochs, seed):
    import torch.nn.utils.prune as prune
    start = time.perf_counter()
    model = copy.deepcopy(dense)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    prune.global_unstructured([(m, "weight") for m in linears], pruning_method=prune.L1Unstructured,
                              amount=amount)
    pruned_acc = accuracy(model, data.test)
    finetune(model, data.train, epochs, seed)
    for m in linears:
        prune.remove(m, "weight")  # make it permanent: weight = weight_orig * mask
    acc = accuracy(model, data.test)
    seconds = time.perf_counter() - start
    return {"accuracy_pruned": pruned_acc, "accuracy": acc, "seconds": seconds,
            "sparsity": linear_weight_zeros(model) / linear_weight_count(model), "threads": torch.get_num_threads()}


def tp_prune(model, data, ratio):
    import torch_pruning as tp
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    pruner = tp.pruner.MagnitudePruner(model, data.train.x[:1], importance=tp.importance.MagnitudeImportance(p=1),
                                       pruning_ratio=ratio, ignored_layers=[classifier])
    pruner.step()
    return model


def tp_ratio_for(dense, data, target_removed):
    """Torch-Pruning's per-layer pruning_ratio whose result removes closest to ``target_removed`` of the
    Linear weights (bisection; the weight count falls monotonically with the ratio)."""
    total = linear_weight_count(dense)
    low, high = 0.0, 0.95
    best = None
    for _ in range(14):
        mid = (low + high) / 2
        removed = 1 - linear_weight_count(tp_prune(copy.deepcopy(dense), data, mid)) / total
        if best is None or abs(removed - target_removed) < abs(best[1] - target_removed):
            best = (mid, removed)
        if removed < target_removed:
            low = mid
        else:
            high = mid
    return best


def tp_run(dense, data, ratio, epochs, seed):
    start = time.perf_counter()
    model = tp_prune(copy.deepcopy(dense), data, ratio)
    pruned_acc = accuracy(model, data.test)
    finetune(model, data.train, epochs, seed)
    acc = accuracy(model, data.test)
    seconds = time.perf_counter() - start
    units = [m.out_features for m in model.modules() if isinstance(m, nn.Linear)]
    return {"accuracy_pruned": pruned_acc, "accuracy": acc, "seconds": seconds,
            "sparsity": 1 - linear_weight_count(model) / linear_weight_count(dense), "units": units,
            "threads": torch.get_num_threads()}


def prune_cli_run(overrides, run_dir):
    import prune_cli
    start = time.perf_counter()
    report = prune_cli.run(overrides, str(run_dir))
    wall = time.perf_counter() - start
    assert report["status"] == "completed", report
    assert report["cache"]["dense"] == "reused", report["cache"]
    out = {"accuracy_pruned": report["accuracy"]["pruned"], "accuracy": report["accuracy"]["finetuned"],
           "seconds": wall, "stage_seconds": report["timings"]["total"],
           "sparsity": report["sparsity"]["achieved"], "dense_accuracy": report["accuracy"]["dense"],
           "cache_key": report["cache"]["key"],
           # prune_cli sets the process's torch threads itself (threads=auto: 1 for small models)
           "threads": report["experiment"].get("threads") or torch.get_num_threads()}
    if report.get("shrunk"):
        out["units"] = [kept for kept, _ in report["shrunk"]["units_kept"].values()]
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument("--unstructured", type=float, default=0.9)
    parser.add_argument("--structured", type=float, default=0.5)
    add_common_args(parser)
    args = parser.parse_args()
    contention = begin(args)
    import prune_cli
    from prune_cli.storage.cache import DenseCache
    from prune_cli.data import load_dataset
    from prune_cli.models import build_for
    from omegaconf import OmegaConf

    work = Path(tempfile.mkdtemp(prefix="prune_cli_peers_"))
    cache_dir = work / "cache"
    common = COMMON + [f"cache.dir={cache_dir}", f"finetune.epochs={args.finetune_epochs}"]
    from prune_cli.config import compose_config
    if args.threads and "threads" in compose_config(COMMON):
        common.append(f"threads={args.threads}")
    data = load_dataset(OmegaConf.create(DIGITS))
    started = time.perf_counter()
    rows = {}
    dense_info = {}
    for seed in args.seeds:
        # Dense model once, by prune_cli (the cache keeps it); everyone starts from these weights.
        t = time.perf_counter()
        warm = prune_cli.run(common + [f"seed={seed}", "sparsity=0.0", "finetune.epochs=0",
                                       "measure.latency=false"], str(work / f"dense_{seed}"))
        dense_seconds = time.perf_counter() - t
        entry = DenseCache(str(cache_dir)).load(warm["cache"]["key"])
        dense, _ = build_for(dict(LENET300), data.info)
        dense.load_state_dict(entry["trained"])
        dense_info[seed] = {"accuracy": warm["accuracy"]["dense"], "seconds": dense_seconds}

        runs = {}
        runs["prune_cli magnitude (unstructured)"] = prune_cli_run(
            common + [f"seed={seed}", "strategy=magnitude", f"sparsity={args.unstructured}"],
            work / f"u_{seed}")
        # Everyone at the thread count prune_cli chose for this model.
        torch.set_num_threads(runs["prune_cli magnitude (unstructured)"]["threads"])
        runs["torch.nn.utils.prune global L1"] = torch_prune_run(dense, data, args.unstructured,
                                                                 args.finetune_epochs, seed)
        runs["prune_cli magnitude (structured)"] = prune_cli_run(
            common + [f"seed={seed}", "strategy=magnitude", "strategy.granularity=structured",
                      f"sparsity={args.structured}"], work / f"s_{seed}")
        torch.set_num_threads(runs["prune_cli magnitude (structured)"]["threads"])
        ratio, removed = tp_ratio_for(dense, data, runs["prune_cli magnitude (structured)"]["sparsity"])
        runs["Torch-Pruning MagnitudePruner p=1"] = tp_run(dense, data, ratio, args.finetune_epochs, seed)
        runs["Torch-Pruning MagnitudePruner p=1"]["pruning_ratio"] = ratio
        for name, r in runs.items():
            r["dense_accuracy"] = dense_info[seed]["accuracy"]
            rows.setdefault(name, []).append(dict(r, seed=seed))
        print(f"seed {seed}: dense {dense_info[seed]['accuracy']:.4f} ({dense_seconds:.1f} s); " +
              "; ".join(f"{k}: {v['accuracy']:.4f} in {v['seconds']:.1f} s" for k, v in runs.items()), flush=True)
    total = time.perf_counter() - started

    def ms(values, scale=100, fmt="{:.2f}"):
        mean = statistics.mean(values) * scale
        sd = statistics.stdev(values) * scale if len(values) > 1 else 0.0
        return (fmt + " ± " + fmt).format(mean, sd)

    contention.__exit__(None, None, None)
    info = machine()
    info["contention"] = contention.result
    used = sorted({r.get("threads") for rs in rows.values() for r in rs if r.get("threads")})
    info["threads"] = used[0] if len(used) == 1 else used
    print(f"\npeers: digits/lenet300, seeds {args.seeds}, fine-tune {args.finetune_epochs} epochs, "
          f"{info['threads']} thread(s) for every method (prune_cli's choice), torch {info['torch']}; "
          f"mean ± std over seeds")
    headers = ["method", "sparsity (%)", "units kept", "dense acc (%)", "pruned acc (%)", "fine-tuned acc (%)",
               "wall s (after dense)", "prune_cli stages s"]
    out_rows, summary = [], {}
    for name, rs in rows.items():
        units = sorted({"-".join(map(str, r["units"])) for r in rs if r.get("units")})
        summary[name] = {
            "sparsity_mean": statistics.mean(r["sparsity"] for r in rs),
            "accuracy_mean": statistics.mean(r["accuracy"] for r in rs),
            "accuracy_std": statistics.stdev([r["accuracy"] for r in rs]) if len(rs) > 1 else 0.0,
            "accuracy_pruned_mean": statistics.mean(r["accuracy_pruned"] for r in rs),
            "seconds_mean": statistics.mean(r["seconds"] for r in rs),
            "seconds_median": statistics.median(r["seconds"] for r in rs),
        }
        out_rows.append([name, ms([r["sparsity"] for r in rs]), ", ".join(units),
                         ms([r["dense_accuracy"] for r in rs]), ms([r["accuracy_pruned"] for r in rs]),
                         ms([r["accuracy"] for r in rs]), ms([r["seconds"] for r in rs], 1),
                         ms([r["stage_seconds"] for r in rs], 1) if "stage_seconds" in rs[0] else ""])
    print(table(headers, out_rows))
    print("dense training by prune_cli (per seed, includes the 1st-run imports): "
          + ", ".join(f"{v['seconds']:.1f} s" for v in dense_info.values()) + f"; total {total:.0f} s")
    print(contention.line())
    path = write_results("peers", {"machine": info, "settings": vars(args), "dense": dense_info,
                                   "runs": rows, "summary": summary, "total_seconds": total}, tag=args.tag)
    print(f"wrote {path}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
