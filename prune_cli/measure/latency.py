"""Wall-clock latency: the one interleaved timer, used by every report and every benchmark.

Models are timed in alternation (A, B, C, A, B, C, ...), CUDA-synchronised around each pass: on a shared
machine the load changes from second to second, and alternating puts every model under the same conditions,
so their ratios (the speed-ups in the report) stay fair even when the absolute times drift.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from typing import Callable, Mapping, Optional, Sequence

import torch
from torch import nn

from prune_cli.measure.inputs import example_input
from prune_cli.measure.timing import synchronize
from prune_cli.training.evaluate import eval_mode


def time_side_by_side(calls: Mapping[str, Callable[[], object]], device="cpu", *, repeats: int = 30,
                      warmup: int = 3, max_time_s: float = float("inf"), min_repeats: int = 3, per_turn: int = 1,
                      self_timed: bool = False, setup: Optional[Callable[[], None]] = None
                      ) -> dict[str, list[float]]:
    """Seconds of each call, one sample per call per turn, the calls interleaved.

    Every round gives each call a turn, the order reversed every other round (A B C, C B A, ...) so that no
    call always runs right after the same neighbour. A turn times ``per_turn`` calls one by one (short
    calls, e.g. batch-1 forward passes, need many samples). After ``min_repeats`` rounds, timing stops
    once ``max_time_s`` is spent. ``self_timed``: each call returns the seconds it measured itself (so it
    can leave its own setup out); ``setup`` runs untimed before every turn. Benchmarks time whole training
    runs with it, reports time forward passes.
    """
    names = list(calls)
    for name in names:
        for _ in range(max(0, warmup)):
            calls[name]()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    deadline = time.perf_counter() + max_time_s
    for index in range(max(min_repeats, repeats)):
        for name in (names if index % 2 == 0 else names[::-1]):
            if setup is not None:
                setup()
            for _ in range(per_turn):
                if self_timed:
                    times[name].append(float(calls[name]()))
                    continue
                synchronize(device)
                start = time.perf_counter()
                calls[name]()
                synchronize(device)
                times[name].append(time.perf_counter() - start)
        if index + 1 >= min_repeats and time.perf_counter() > deadline:
            break
    return times


class GraphReplay:
    """A model's forward pass at one batch size captured as a CUDA graph (``torch.cuda.graph``) and replayed:
    what a deployment that removes Python and launch overhead sees. Small networks are launch-bound on a
    modern GPU, so their eager timings hide what a shrunk model saves."""

    def __init__(self, model: nn.Module, x: torch.Tensor):
        self.x = x.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up on a side stream, as capture requires
            for _ in range(3):
                model(self.x)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        current = torch.cuda.current_stream()
        try:
            with torch.cuda.graph(self.graph):
                self.out = model(self.x)
        finally:
            # A capture that fails ends before torch.cuda.graph gives back the stream it captured on.
            torch.cuda.set_stream(current)

    def __call__(self):
        self.graph.replay()
        return self.out


@torch.inference_mode()
def measure_graph_latency(models: Mapping[str, nn.Module], input_shape: Sequence[int], device,
                          batch_sizes: Sequence[int] = (1, 256), warmup: int = 3, repeats: int = 30,
                          max_time_s: float = 0.5) -> dict[str, dict[str, float]]:
    """``measure_latency`` with each forward pass replayed as a captured CUDA graph (CUDA only; a model whose
    forward cannot be captured, e.g. a sparse kernel that synchronises, is left out, with a warning)."""
    results: dict[str, dict[str, float]] = {}
    if torch.device(device).type != "cuda":
        return results
    with contextlib.ExitStack() as stack:
        for model in models.values():
            stack.enter_context(eval_mode(model))
        for batch_size in batch_sizes:
            calls = {}
            for name, model in models.items():
                try:
                    calls[name] = GraphReplay(model, example_input(model, input_shape, batch_size, device))
                except RuntimeError as err:  # not capturable (host syncs, CPU work, unsupported kernels)
                    import logging
                    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                    logging.getLogger(__name__).warning("the %s model at batch %d cannot be captured as a CUDA "
                                                        "graph, so it is timed eagerly only: %s", name,
                                                        batch_size, first)
                    continue
            times = time_side_by_side(calls, device, repeats=repeats, warmup=warmup, max_time_s=max_time_s)
            for name in calls:
                results.setdefault(name, {})[f"batch_{batch_size}_ms"] = statistics.median(times[name]) * 1e3
    return results


@torch.inference_mode()
def measure_latency(models: Mapping[str, nn.Module], input_shape: Sequence[int], device,
                    batch_sizes: Sequence[int] = (1, 256), warmup: int = 3, repeats: int = 30,
                    max_time_s: float = 0.5) -> dict[str, dict[str, float]]:
    """Median ms per forward pass, ``{model name: {"batch_1_ms": .., "batch_256_ms": ..}}``.

    The models must already be on ``device``; ``input_shape`` is one example's shape. ``max_time_s`` bounds
    each batch size's timing for all models together (at least 3 passes each), so a large model costs
    seconds, not minutes, and a small one still gets ``repeats`` samples.
    """
    results: dict[str, dict[str, float]] = {name: {} for name in models}
    with contextlib.ExitStack() as stack:
        for model in models.values():
            stack.enter_context(eval_mode(model))
        for batch_size in batch_sizes:
            inputs = {name: example_input(m, input_shape, batch_size, device) for name, m in models.items()}
            calls = {name: (lambda m=m, x=inputs[name]: m(x)) for name, m in models.items()}
            times = time_side_by_side(calls, device, repeats=repeats, warmup=warmup, max_time_s=max_time_s)
            for name in models:
                results[name][f"batch_{batch_size}_ms"] = statistics.median(times[name]) * 1e3
    return results
