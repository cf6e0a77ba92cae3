"""Reproduce the comparison tables in docs/results.md.

    python scripts/result_tables.py strategies   # every strategy, lenet300 on digits, 90% and 98%, 3 seeds
    python scripts/result_tables.py schedules    # schedules at 98% with the same total fine-tune epochs

Runs go through the Python API in this process (one dense model per seed, from the cache), under
outputs/tables/<table>/, and the summary is printed as Markdown with mean +/- std over seeds.
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

import prune_cli

SEEDS = (0, 1, 2)
COMMON = ["model=lenet300", "dataset=digits", "finetune.epochs=30", "measure.latency=false", "progress=false"]

STRATEGIES = {
    "magnitude": ["strategy=magnitude"],
    "magnitude (layer)": ["strategy=magnitude", "strategy.scope=layer"],
    "gradient": ["strategy=gradient"],
    "random": ["strategy=random"],
    "activation": ["strategy=activation"],
    "apoz": ["strategy=apoz"],
    "magnitude (structured)": ["strategy=magnitude", "strategy.granularity=structured", "strategy.scope=layer"],
    "l1": ["strategy=l1"],
    "l0": ["strategy=l0"],
    "compress": ["strategy=compress"],
    "compress (distilled)": ["strategy=compress", "strategy.distill=true"],
}

# Same total fine-tune budget (30 epochs) for every schedule.
SCHEDULES = {
    "oneshot": ["schedule=oneshot", "finetune.epochs=30"],
    "iterative (3 rounds)": ["schedule=iterative", "schedule.rounds=3", "finetune.epochs=30"],
    "gradual": ["schedule=gradual", "finetune.epochs=30"],
    "lottery (3 rounds, rewind to init)": ["schedule=lottery", "schedule.rounds=3", "finetune.epochs=30"],
    "lottery (3 rounds, rewind to epoch 1)": ["schedule=lottery", "schedule.rounds=3", "schedule.rewind_epoch=1",
                                              "finetune.epochs=30"],
}


def run_table(name: str, variants: dict, sparsities, out: Path) -> list[str]:
    rows = []
    for label, overrides in variants.items():
        for sparsity in sparsities:
            results = []
            for seed in SEEDS:
                run_dir = out / f"{label.replace(' ', '_')}/{sparsity}/seed{seed}"
                report = prune_cli.run([*COMMON, *overrides, f"sparsity={sparsity}", f"seed={seed}"], run_dir)
                results.append(report)
            acc = torch.tensor([r["accuracy"]["finetuned"] for r in results])
            dense = torch.tensor([r["accuracy"]["dense"] for r in results])
            achieved = torch.tensor([r["sparsity"]["achieved"] for r in results])
            seconds = sum(r["timings"]["total"] for r in results) / len(results)
            rows.append(f"| {label} | {100 * sparsity:.0f}% | {100 * achieved.mean():.2f}% | "
                        f"{100 * dense.mean():.2f} ± {100 * dense.std():.2f} | "
                        f"{100 * acc.mean():.2f} ± {100 * acc.std():.2f} | {seconds:.1f} |")
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("table", choices=["strategies", "schedules"])
    args = parser.parse_args()
    out = Path("outputs/tables") / args.table / time.strftime("%Y-%m-%d_%H-%M-%S")
    started = time.perf_counter()
    if args.table == "strategies":
        rows = run_table(args.table, STRATEGIES, (0.9, 0.98), out)
    else:
        rows = run_table(args.table, {k: ["strategy=magnitude", *v] for k, v in SCHEDULES.items()}, (0.98,), out)
    print()
    print(f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; seeds {SEEDS}; wall time {time.perf_counter() - started:.0f} s")
    print("| variant | target | achieved | dense acc. (%) | fine-tuned acc. (%) | seconds per run |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
