"""Shared helpers for the benchmark scripts: machine description, interleaved timing, tables, JSON output.

Timings on a shared machine are noisy, so every comparison runs its contenders interleaved (A, B, A, B, ...)
and reports medians and ratios of medians, never single numbers taken minutes apart.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"

LENET300 = {"name": "lenet300", "_target_": "prune_cli.models.MLP", "hidden": [300, 100]}
DIGITS = {"name": "digits", "test_fraction": 0.2, "split_seed": 0, "val_fraction": 0.0}


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "loadavg_at_start": load,
        "command": "python " + " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _proc_stat():
    """(busy seconds of all cores, steal seconds) from /proc/stat, or (None, None)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError, IndexError):
        return None, None
    ticks = os.sysconf("SC_CLK_TCK")
    steal = fields[7] if len(fields) > 7 else 0
    busy = sum(fields) - fields[3] - fields[4] - steal  # minus idle, iowait and steal
    return busy / ticks, steal / ticks


def _cpu_snapshot():
    busy, steal = _proc_stat()
    t = os.times()
    return busy, steal, t.user + t.system + t.children_user + t.children_system, time.perf_counter()


def others_busy(seconds: float = 2.0) -> float | None:
    """Cores kept busy by other processes over the next ``seconds`` (this process idles meanwhile)."""
    a = _cpu_snapshot()
    time.sleep(seconds)
    b = _cpu_snapshot()
    if a[0] is None:
        return None
    return max(0.0, (b[0] - a[0] - (b[2] - a[2])) / (b[3] - a[3]))


def wait_for_quiet(max_wait_s: float, threshold: float = 0.3) -> float | None:
    """Wait (at most ``max_wait_s``) until other processes use under ``threshold`` cores; returns the last
    reading. On a shared machine this keeps other people's test runs out of the numbers where possible."""
    deadline = time.perf_counter() + max_wait_s
    while True:
        busy = others_busy(2.0)
        if busy is None or busy < threshold or time.perf_counter() >= deadline:
            if busy is not None and busy >= threshold:
                print(f"note: other processes still use {busy:.2f} cores; measuring anyway", flush=True)
            return busy
        time.sleep(3.0)


class Contention:
    """How much of the machine other processes used while a benchmark ran: on a shared box the numbers
    only mean something next to this. ``others_cores`` = average cores busy with other processes,
    ``steal_cores`` = average cores the hypervisor took away."""

    def __enter__(self):
        self.start = _cpu_snapshot()
        return self

    def __exit__(self, *exc):
        end = _cpu_snapshot()
        wall = end[3] - self.start[3]
        ours = end[2] - self.start[2]
        self.result = {"wall_s": wall, "our_cpu_s": ours, "cores": os.cpu_count()}
        if end[0] is not None and self.start[0] is not None and wall > 0:
            self.result["others_cores"] = max(0.0, (end[0] - self.start[0] - ours) / wall)
            self.result["steal_cores"] = (end[1] - self.start[1]) / wall
            self.result["our_cores"] = ours / wall
        return False

    def line(self) -> str:
        r = self.result
        if "others_cores" not in r:
            return f"wall {r['wall_s']:.0f} s"
        return (f"wall {r['wall_s']:.0f} s; this process used {r['our_cores']:.2f} cores on average, other "
                f"processes {r['others_cores']:.2f} of the {r['cores']} cores (steal {r['steal_cores']:.2f})")


def digits_lenet300(seed: int = 0):
    """(dataset, model) exactly as prune_cli builds them for dataset=digits model=lenet300."""
    from omegaconf import OmegaConf
    from prune_cli.data import load_dataset
    from prune_cli.models import build_for
    data = load_dataset(OmegaConf.create(DIGITS))
    torch.manual_seed(seed)
    model, _ = build_for(dict(LENET300), data.info)
    return data, model


def trained_lenet300(epochs: int = 20, seed: int = 0):
    """(dataset, model trained densely with prune_cli's fit at its default train settings)."""
    from prune_cli.training.loop import fit
    from prune_cli.training.settings import StageSettings
    data, model = digits_lenet300(seed)
    fit(model, data.train, StageSettings(epochs=epochs, lr=1e-3, batch_size=64), stage="dense", seed=seed)
    return data, model


def interleaved(contenders: Mapping[str, Callable[[], float]], repeats: int,
                setup: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Each contender once per round, ``repeats`` rounds, the order alternating (A,B,C / C,B,A / ...):
    prune-cli's own side-by-side timer (``prune_cli.measure.latency.time_side_by_side``). Each callable
    returns the seconds it measured (so it can exclude its own setup)."""
    from prune_cli.measure.latency import time_side_by_side
    return time_side_by_side(contenders, repeats=repeats, warmup=0, min_repeats=repeats, self_timed=True,
                             setup=setup)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float]) -> float:
    """Interquartile range relative to the median: how noisy a set of timings was."""
    if len(values) < 4:
        return (max(values) - min(values)) / statistics.median(values)
    q = statistics.quantiles(values, n=4)
    return (q[2] - q[0]) / statistics.median(values)


def table(headers: Sequence[str], rows: Sequence[Sequence], floatfmt: str = "{:.3g}") -> str:
    """A Markdown table (also readable on a terminal)."""
    def fmt(v):
        if isinstance(v, float):
            return floatfmt.format(v)
        return str(v)
    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h))
              for i, h in enumerate(headers)]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in cells])


def write_results(name: str, payload: dict, tag: str = "") -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / (f"{name}_{tag}.json" if tag else f"{name}.json")
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def quiet_logs() -> None:
    """prune_cli logs cache hits etc. at INFO; the benchmarks print their own tables."""
    import logging
    logging.getLogger("prune_cli").setLevel(logging.WARNING)
    import warnings
    warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")


def add_common_args(parser) -> None:
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                        help="first wait up to S seconds for other processes to leave the CPUs idle")
    parser.add_argument("--tag", default="", help="results go to results/<name>_<tag>.json")


def begin(args) -> Contention:
    """Apply the common arguments, then start recording contention."""
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_logs()
    if args.wait_quiet > 0:
        wait_for_quiet(args.wait_quiet)
    return Contention().__enter__()
