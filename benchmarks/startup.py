"""Start-up: the wall time of the default run against a bare ``import torch`` process, side by side.

Contenders, interleaved (A, B, C / C, B, A / ...), each a fresh process:
- ``bare``: ``python -c "import torch, torch.nn"``, the floor any PyTorch tool pays;
- ``run``: ``prune-run strategy=magnitude sparsity=0.9 measure.latency=false`` with the dense model already in
  the cache (its stages take ~0.3 s: what remains is start-up and shutdown);
- ``help``: ``prune-run --help`` (no torch at all).
Also the time until the run's first line of output.

    python benchmarks/startup.py [--repeats 5] [--tag NAME]
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import add_common_args, begin, interleaved, machine, median, table, write_results


def timed(command, cwd, first_line: list | None = None):
    def call() -> float:
        start = time.perf_counter()
        proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = proc.stdout.readline()
        if first_line is not None and line:
            first_line.append(time.perf_counter() - start)
        proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"{command} exited {proc.returncode}")
        return time.perf_counter() - start
    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    add_common_args(parser)
    args = parser.parse_args()
    contention = begin(args)
    work = Path(tempfile.mkdtemp(prefix="startup-"))
    prune_run = shutil.which("prune-run") or "prune-run"
    run = [prune_run, "strategy=magnitude", "sparsity=0.9", "measure.latency=false", f"cache.dir={work / 'cache'}"]
    counter = iter(range(10 ** 6))
    subprocess.run([*run, f"hydra.run.dir={work / 'warm'}"], check=True, capture_output=True)  # fill the cache
    first: list = []

    def the_run() -> float:
        return timed([*run, f"hydra.run.dir={work / f'r{next(counter)}'}"], work, first)()

    times = interleaved({"bare": timed([sys.executable, "-c", "import torch, torch.nn"], work),
                         "run": the_run, "help": timed([prune_run, "--help"], work)}, repeats=args.repeats)
    shutil.rmtree(work, ignore_errors=True)
    bare, full, helped = median(times["bare"]), median(times["run"]), median(times["help"])
    rows = [["bare import torch", bare, 1.0], ["prune-run (cached dense)", full, full / bare],
            ["prune-run --help", helped, helped / bare]]
    print(table(["process", "median s", "x bare"], rows))
    print(f"first output line of the run after {median(first):.2f} s (median)")
    contention.__exit__(None, None, None)
    print(contention.line())
    path = write_results("startup", {"machine": machine(), "contention": contention.result, "seconds": times,
                                     "ratio_run_to_bare": full / bare, "first_line_s": first}, args.tag)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
