"""Compare pruning strategies over several seeds, in one Python process, with the Python API.

    python examples/compare_strategies.py
    python examples/compare_strategies.py --strategies magnitude,gradient --sparsities 0.5,0.9,0.95 --seeds 0,1,2
    python examples/compare_strategies.py --set model=lenet300 --set train.epochs=30

Each run is ``prune_cli.run(overrides, run_dir)`` - the same config and overrides as ``prune-run`` - so there is no
per-run process start-up, and each seed's dense model is trained once and then reused from the dense cache by
every strategy and sparsity. ``prune_cli.compare`` then summarises the reports (mean ± std over seeds) and writes
compare.csv, compare.md and compare.png.

Re-running with the same --out skips the runs that already completed and resumes unfinished ones.
The defaults (digits, the small MLP, 3 strategies x 1 sparsity x 3 seeds: 9 runs, 3 dense trainings) take
10-20 s on one CPU core.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import prune_cli
from prune_cli.errors import RunFailed, UsageError


def main() -> None:
    args = parse_args()
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    jobs = [(strategy, sparsity, seed) for strategy in args.strategies for sparsity in args.sparsities
            for seed in args.seeds]
    started = time.perf_counter()
    run_dirs = []
    for index, (strategy, sparsity, seed) in enumerate(jobs, start=1):
        run_dir = out / "runs" / f"{strategy}_sparsity={sparsity}_seed={seed}"
        run_dirs.append(run_dir)
        overrides = [f"strategy={strategy}", f"sparsity={sparsity}", f"seed={seed}", *args.set]
        label = f"[{index}/{len(jobs)}] {strategy:<10} sparsity={sparsity:<5} seed={seed}"
        try:
            report = prune_cli.run(overrides=overrides, run_dir=run_dir)
        except UsageError as err:  # bad input (an unknown strategy, sparsity=1.5, ...): one line, no traceback
            raise SystemExit(f"compare_strategies: {' '.join(overrides)}: {err}") from None
        except RunFailed as err:  # e.g. a non-finite loss: the other runs still say something
            print(f"{label}: failed: {err}", flush=True)
            continue
        print(f"{label}: fine-tuned accuracy {100 * report['accuracy']['finetuned']:.2f}%  "
              f"(dense model {report.get('cache', {}).get('dense', 'n/a')})", flush=True)
    # This invocation's runs only (not older ones in --out); a failed run has no report to compare.
    finished = [d for d in run_dirs if (d / "report.json").exists()]
    if not finished:
        raise SystemExit("compare_strategies: no run completed; nothing to compare")
    rows = prune_cli.compare(finished, out_dir=out)
    print()
    from prune_cli.comparison import print_table  # the same table prune-compare prints
    print_table(rows)
    print(f"{len(jobs)} runs in {time.perf_counter() - started:.0f} s; "
          f"wrote compare.csv, compare.md, compare.png to {out}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategies", type=_words, default=["magnitude", "gradient", "random"],
                        help="comma-separated strategy names (conf/strategy/*.yaml)")
    parser.add_argument("--sparsities", type=_numbers(float), default=[0.9],
                        help="comma-separated, each in [0, 1)")
    parser.add_argument("--seeds", type=_numbers(int), default=[0, 1, 2], help="comma-separated integers")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any other prune-run override, e.g. --set train.epochs=10 (repeatable)")
    parser.add_argument("--out", default="outputs/examples/compare_strategies",
                        help="where the runs and the comparison go")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: fastest for small models such as the default MLP, "
                             "several times faster than many threads on a busy machine; 0 = torch's default)")
    return parser.parse_args()


def _words(text: str) -> list[str]:
    return [word.strip() for word in text.split(",") if word.strip()]


def _numbers(kind):
    def parse(text: str):
        try:
            return [kind(word) for word in _words(text)]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}") from None
    return parse


if __name__ == "__main__":
    main()
