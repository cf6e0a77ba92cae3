"""Small jobs filling one GPU: a sweep of LeNet-sized jobs run serially against the joblib launcher's workers
sharing the device (issue target: 32 jobs, n_jobs=8, at least 4x faster than serial).

Both sweeps are ``prune-run -m`` commands (the user's path), on the same 32 jobs (magnitude, gradient x
sparsities 0.5, 0.7, 0.9, 0.95 x seeds 0-3, LeNet-300-100 on digits), each with a fresh dense cache, run
``--repeats`` times alternating which goes first. Wall time of each sweep and the serial / parallel ratio.

    python benchmarks/gpu_sweep.py                      # device=cuda, n_jobs=8
    python benchmarks/gpu_sweep.py --device cpu --n-jobs 2 --jobs 4 --repeats 1   # a smoke run on the CPU
"""
from __future__ import annotations

import argparse
import itertools
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, machine, write_results

STRATEGIES = ["magnitude", "gradient"]
SPARSITIES = [0.5, 0.7, 0.9, 0.95]
SEEDS = [0, 1, 2, 3]


def axes(jobs: int) -> tuple[list, list, list]:
    """The strategies, sparsities and seeds of the first ``jobs`` combinations. One command line per sweep:
    Hydra's sweeper takes their product, which is exactly ``jobs`` only for some counts (1-4, 8, 12, 16, 32)."""
    combos = list(itertools.product(STRATEGIES, SPARSITIES, SEEDS))[:jobs]
    values = [sorted({c[i] for c in combos}) for i in range(3)]
    return values[0], values[1], values[2]


def allowed_job_counts() -> list[int]:
    return sorted({n for n in range(1, len(STRATEGIES) * len(SPARSITIES) * len(SEEDS) + 1)
                   if len(axes(n)[0]) * len(axes(n)[1]) * len(axes(n)[2]) == n})


def sweep(work: Path, device: str, jobs: int, n_jobs: int, extra: list[str]) -> float:
    """One ``prune-run -m`` over the first ``jobs`` combinations; its wall time (a fresh cache each time)."""
    strategies, sparsities, seeds = axes(jobs)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    command = [sys.executable, "-m", "prune_cli.app.cli", "-m", "model=lenet300", "dataset=digits",
               f"device={device}", "progress=false", "measure.latency=false", f"hydra.sweep.dir={work / 'sweep'}",
               f"strategy={','.join(strategies)}", f"sparsity={','.join(map(str, sparsities))}",
               f"seed={','.join(map(str, seeds))}", *extra]
    if n_jobs > 1:
        command += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={n_jobs}"]
    env = {"PRUNE_CLI_CACHE": str(work / "cache")}
    import os
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--jobs", type=int, default=32)
    parser.add_argument("--n-jobs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--extra", nargs="*", default=[])
    parser.add_argument("--tag", default="", help="results go to results/gpu_sweep_<tag>.json")
    args = parser.parse_args()
    if args.jobs not in allowed_job_counts():
        parser.error(f"--jobs {args.jobs}: a sweep's product of strategies, sparsities and seeds gives one of "
                     f"{', '.join(map(str, allowed_job_counts()))}")
    walls = {"serial": [], f"n_jobs={args.n_jobs}": []}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            order = [1, args.n_jobs] if repeat % 2 == 0 else [args.n_jobs, 1]
            for n_jobs in order:
                name = "serial" if n_jobs == 1 else f"n_jobs={n_jobs}"
                wall = sweep(Path(tmp) / ("serial" if n_jobs == 1 else "parallel"), args.device, args.jobs, n_jobs,
                             args.extra)
                walls[name].append(wall)
                print(f"{name}: {wall:.1f} s", flush=True)
    medians = {name: statistics.median(values) for name, values in walls.items()}
    ratio = medians["serial"] / medians[f"n_jobs={args.n_jobs}"]
    print(f"serial / n_jobs={args.n_jobs}: {ratio:.2f}x ({args.jobs} jobs, device={args.device})")
    write_results("gpu_sweep", {"machine": machine(), "args": vars(args), "walls": walls, "medians": medians,
                                "speedup": ratio}, args.tag)


if __name__ == "__main__":
    main()
