"""``report.json``'s content, built from the run record, the saved weights and the final measurements.

Every number is measured: sparsity is counted from exactly the tensors that go into ``pruned.pt``, accuracy
is on the test split (and the validation split, when there is one), timings and latencies are wall-clock.
"""
from __future__ import annotations

import logging
from typing import Iterable, Mapping

from prune_cli.pruning.sparsity import zero_count
from prune_cli.report.jsonable import jsonable

log = logging.getLogger("prune_cli")


def _layers(state_dict: Mapping, prunable: Iterable[str], structured: bool,
            ignored: Iterable[str] = ()) -> list[dict]:
    """One entry per prunable weight, and per weight ``strategy.ignore`` left dense (``"ignored": true``; not
    counted in the run's sparsity), in the model's order."""
    layers = []
    ignored = set(ignored)
    for name in [n for n in state_dict if n in ignored or n in set(prunable)]:
        weight = state_dict[name]
        entry = {"name": name, "shape": list(weight.shape), "sparsity": zero_count(weight) / weight.numel()}
        if name in ignored:
            entry["ignored"] = True
        elif structured:
            rows = weight.flatten(1)
            entry["units_kept"] = [int((rows != 0).any(dim=1).sum()), rows.shape[0]]
        layers.append(entry)
    return layers


def compression(result: dict, measured: dict) -> list[dict]:
    """What each step bought, one row per model: dense, pruned (masked), shrunk (structured), quantized:
    test and validation accuracy, non-zero parameters, bytes (dense encoding, sparse encoding, int8) and the
    latency they were timed at side by side."""
    accuracy, val = result["accuracy"], result.get("val_accuracy") or {}
    latency, sizes = result["latency"] or {}, result["size_bytes"]

    def row(model, acc, val_acc, nonzero, dense=None, sparse=None, quantized=None, timed=None):
        return {"model": model, "accuracy": acc, "val_accuracy": val_acc, "params_nonzero": nonzero,
                "bytes": {"dense": dense, "sparse": sparse, "quantized": quantized}, "latency_ms": timed}

    rows = [row("dense", accuracy.get("dense"), val.get("dense"), measured["dense_model"]["params"],
                dense=measured["dense_model"]["bytes"], timed=latency.get("dense")),
            row("pruned", accuracy.get("finetuned"), val.get("finetuned"), result["params"]["nonzero"],
                dense=sizes.get("dense"), sparse=sizes.get("sparse"), timed=latency.get("masked"))]
    shrunk = result.get("shrunk")
    if shrunk:
        rows.append(row("shrunk", accuracy.get("finetuned") if shrunk.get("matches_masked") else None,
                        val.get("finetuned") if shrunk.get("matches_masked") else None, shrunk.get("params"),
                        dense=sizes.get("shrunk"), timed=latency.get("shrunk")))
    quantized = result.get("quantized")
    if quantized:
        rows.append(row(f"quantized ({quantized['method']})", quantized["accuracy"], quantized.get("val_accuracy"),
                        quantized["params_nonzero"], quantized=quantized["bytes"], timed=quantized.get("latency")))
    return rows


def build_report(record, *, state_dict: Mapping, prunable: list[str], parameters: set[str], measured: dict,
                 target: float, run: dict, ignored: Iterable[str] = ()) -> dict:
    """``run``: fingerprint, variant, device, threads, run_dir, checkpoint_saves of the process that ran it."""
    layers = _layers(state_dict, prunable, record.structured, ignored)
    total = sum(state_dict[n].numel() for n in prunable)
    zeros = sum(zero_count(state_dict[n]) for n in prunable)
    if record.compress is not None:
        # A smaller model's weights are removed, not zeroed: count them against the dense model's.
        total = record.compress["dense_prunable_weights"]
        zeros = total - record.compress["prunable_weights"]
        layers = [dict(entry, sparsity=0.0) for entry in layers]
    params = [state_dict[k] for k in state_dict if k in parameters]
    result = {
        "status": "completed",
        "fingerprint": run["fingerprint"],
        "experiment": {**record.experiment, "device": run["device"], "threads": run["threads"],
                       "gpu_memory_fraction": run.get("gpu_memory_fraction"), "run_dir": run["run_dir"], "variant": run["variant"]},
        "strategy": record.strategy,
        "schedule": record.schedule,
        "sparsity": {"target": target, "achieved": zeros / total if total else 0.0, "zeros": zeros,
                     "prunable_weights": total,
                     "prunable": "Linear and Conv weights" + ("" if record.prune_classifier
                                                             else ", classifier excluded")
                                 + (f", {len(set(ignored))} ignored (strategy.ignore)" if ignored else "")},
        "accuracy": {**record.accuracy, "pruned_at": record.pruned_at},
        "params": {"total": sum(p.numel() for p in params),
                   "nonzero": sum(p.numel() - zero_count(p) for p in params)},
        "layers": layers,
        "rounds": [r.as_dict() for r in record.rounds],
        "timings": dict(record.timings),
        # Training after the dense stage, per phase: what a comparison of methods must hold equal (or show).
        "budget": {"epochs": dict(record.budget), "total_epochs": sum(record.budget.values())},
        # One entry per epoch of every training phase (the dense stage's marked "cached" when it was reused).
        "history": [dict(entry) for entry in record.history],
        "cache": dict(record.cache),
        "flops": dict(measured["flops"]),
        "latency": measured["latency"],
        "latency_cuda_graph": measured.get("latency_cuda_graph") or {},
        "size_bytes": measured["size_bytes"],
        "speedup": measured["speedup"],
        "shrunk": measured["shrunk"],
    }
    if record.val_accuracy is not None:
        result["val_accuracy"] = dict(record.val_accuracy)
    if record.finetuned_on:
        result["finetuned_on"] = [dict(entry) for entry in record.finetuned_on]
    if record.distillation is not None:
        result["distillation"] = dict(record.distillation)
    if "quantized" in measured:
        result["quantized"] = dict(measured["quantized"], bytes=measured["quantized_bytes"])
    result["compression"] = compression(result, measured)
    collapsed = [layer["name"] for layer in layers if layer["sparsity"] == 1.0]
    if collapsed:
        # Global ranking can empty a whole layer (layer collapse); the network is then disconnected.
        result["warnings"] = [f"{name} is 100% pruned: the network is disconnected (try strategy.scope=layer)"
                              for name in collapsed]
        for warning in result["warnings"]:
            log.warning(warning)
    if measured.get("export"):
        result["export"] = measured["export"]
    if measured.get("semi_structured"):
        result["semi_structured"] = measured["semi_structured"]
    if measured["shrunk"]:
        result["params"]["shrunk"] = measured["shrunk"].get("params")
    if record.compress is not None:
        result["compress"] = record.compress
    if record.resumed_from:
        result["resumed_from"] = record.resumed_from
    result["checkpoint_saves"] = run["checkpoint_saves"]
    return jsonable(result)
