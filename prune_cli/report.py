"""The run's report: ``report.json`` (the interface), ``report.md`` (for people) and a rich table.

Every number is measured: sparsity is counted from the weights that go into the checkpoint, accuracy is on the
test split, timings and latencies are wall-clock.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch
from omegaconf import OmegaConf

from . import checks
from .atomic import atomic_write_text
from .masks import prunable_names, weight_sparsity

log = logging.getLogger("prune_cli")


def measure(exp) -> dict:
    """Costs of the final model: FLOPs, latency, sizes, and the physically shrunk model when structured."""
    from . import costs
    model, example_shape = exp.model, tuple(exp.data.info.input_shape)
    model.eval()
    masks = dict(exp.masks) if exp.masks else None
    out = {"flops": costs.count_flops(model, example_shape, masks)}
    measure_cfg = exp.cfg.get("measure", {})
    timed = {"masked": model, "dense": _dense_twin(exp)}   # timed side by side: fair ratios on a busy machine
    shrunk_model, shrunk_info = None, None
    if exp.strategy.structured and exp.masks:
        from .shrink import shrink
        shrunk_model, shrunk_info = shrink(model, masks, exp.example)
        shrunk_model.eval()
        shrunk_info["max_abs_diff"] = _max_output_diff(model, shrunk_model, exp.data.test)
        if not shrunk_info["max_abs_diff"] <= 1e-5:
            log.warning("shrunk model differs from the masked one by %.3g", shrunk_info["max_abs_diff"])
        shrunk_info["matches_masked"] = bool(shrunk_info["max_abs_diff"] <= 1e-5)
        timed["shrunk"] = shrunk_model
        out["flops"]["shrunk"] = costs.count_flops(shrunk_model, example_shape)["dense"]
        shrunk_state = {k: v.detach().cpu().clone() for k, v in shrunk_model.state_dict().items()}
        out["shrunk_payload"] = {"state_dict": shrunk_state, "shapes": shrunk_info["shapes"]}
    export_cfg = exp.cfg.get("export", {})
    if export_cfg.get("sparse") and not exp.strategy.structured:
        from .sparse_export import sparse_layer_names, to_sparse
        sparse_model = to_sparse(model, float(export_cfg.get("min_sparsity", 0.8)))
        layers = sparse_layer_names(sparse_model)
        out["export"] = {"sparse": {"sparse_layers": layers, "used": False}}
        if layers:
            timed["sparse"] = sparse_model
    latency = {}
    if measure_cfg.get("latency", True):
        latency = costs.measure_latency_side_by_side(timed, example_shape, exp.device,
                                                     max_time_s=float(measure_cfg.get("latency_budget_s", 0.5)))
    if "sparse" in latency:
        from .sparse_export import sparse_is_faster
        info = out["export"]["sparse"]
        info.update(dense_ms=latency["masked"], sparse_ms=latency["sparse"])
        info["used"] = sparse_is_faster(latency["masked"], latency["sparse"])
        if not info["used"]:
            latency.pop("sparse")
    out["latency"] = latency
    out["shrunk"] = shrunk_info
    out["size_bytes"] = costs.checkpoint_sizes(
        model.state_dict(), masks or {}, out.get("shrunk_payload", {}).get("state_dict"))
    out["speedup"] = _speedups(out, compressed=exp.strategy.name == "compress")
    model.train()
    return out


def _dense_twin(exp):
    """A dense model of the same architecture (full width) for latency, so speed-ups are side by side."""
    from .models import build
    spec = {"target": exp.spec["target"], "kwargs": dict(exp.spec["kwargs"])}
    spec["kwargs"].pop("width", None)
    return build(spec).to(exp.device).eval()


@torch.inference_mode()
def _max_output_diff(a, b, split) -> float:
    worst = 0.0
    for x, _ in split.batches(1024):
        worst = max(worst, float((a(x) - b(x)).abs().max()))
    return worst


def _speedups(out: dict, compressed: bool = False) -> dict:
    """How a speed-up was obtained: measured on a shrunk model, or only theoretical (dense kernels)."""
    latency = out["latency"]
    result = {"theoretical": out["flops"].get("theoretical_speedup"), "method": "none", "measured": {}}
    base = latency.get("dense")
    fastest = latency.get("shrunk") or latency.get("sparse") or latency.get("masked")
    if base and fastest:
        # A masked model runs dense kernels: its ratio is ~1 and is reported as such, not as a speed-up.
        result["method"] = ("shrunk model" if latency.get("shrunk") else
                            "sparse kernel (CSR)" if latency.get("sparse") else
                            "smaller model (compress)" if compressed else "none")
        result["measured"] = {k: base[k] / fastest[k] for k in base if fastest.get(k)}
    return result


def build_report(exp, state_dict: dict, extras: dict) -> dict:
    cfg, record = exp.cfg, exp.record
    # Counted from exactly the tensors that go into pruned.pt.
    names = exp.prunable
    layers, zeros, total = [], 0, 0
    for name in names:
        weight = state_dict[name]
        z = int((weight == 0).sum())
        zeros, total = zeros + z, total + weight.numel()
        entry = {"name": name, "shape": list(weight.shape), "sparsity": z / weight.numel()}
        layers.append(entry)
    if exp.strategy.structured:
        for entry in layers:
            rows = state_dict[entry["name"]].flatten(1)
            entry["units_kept"] = [int((rows != 0).any(dim=1).sum()), rows.shape[0]]
    achieved = zeros / total if total else 0.0
    if exp.strategy.name == "compress":
        # The weights are removed, not zeroed: count them against the dense model's.
        dense_count = record["compress"]["dense_prunable_weights"]
        zeros, total = dense_count - record["compress"]["prunable_weights"], dense_count
        achieved = zeros / total
        layers = [dict(entry, sparsity=0.0) for entry in layers]
    all_params = sum(v.numel() for k, v in state_dict.items() if _is_param(exp.model, k))
    nonzero = sum(int((v != 0).sum()) for k, v in state_dict.items() if _is_param(exp.model, k))
    classifier_prunable = exp.strategy.prune_classifier
    result = {
        "status": "completed",
        "fingerprint": exp.state.fingerprint,
        "experiment": {
            "model": cfg.model.get("name", cfg.model._target_), "dataset": cfg.dataset.name,
            "strategy": exp.strategy.name, "schedule": exp.schedule.name, "seed": int(cfg.seed),
            "device": str(exp.device), "threads": exp.threads, "run_dir": str(exp.run_dir.resolve()),
            "variant": checks.variant(cfg),
        },
        "strategy": exp.strategy.describe(),
        "schedule": exp.schedule.describe(),
        "sparsity": {"target": float(cfg.sparsity), "achieved": achieved,
                     "zeros": zeros, "prunable_weights": total,
                     "prunable": "Linear and Conv weights" + ("" if classifier_prunable else
                                                             ", classifier excluded")},
        "accuracy": dict(record["accuracy"]),
        "params": {"total": all_params, "nonzero": nonzero},
        "layers": layers,
        "rounds": record["rounds"],
        "timings": dict(record["timings"]),
        "cache": record.get("cache", {}),
        "flops": {k: v for k, v in extras["flops"].items()},
        "latency": extras["latency"],
        "size_bytes": extras["size_bytes"],
        "speedup": extras["speedup"],
        "shrunk": extras["shrunk"],
    }
    collapsed = [layer["name"] for layer in layers if layer["sparsity"] == 1.0]
    if collapsed:
        # Global ranking can empty a whole layer (layer collapse); the network is then disconnected.
        result["warnings"] = [f"{name} is 100% pruned: the network is disconnected (try strategy.scope=layer)"
                              for name in collapsed]
        for warning in result["warnings"]:
            log.warning(warning)
    if extras.get("export"):
        result["export"] = extras["export"]
    if extras["shrunk"]:
        result["params"]["shrunk"] = extras["shrunk"].get("params")
    if record.get("compress"):
        result["compress"] = record["compress"]
    if record.get("resumed_from"):
        result["resumed_from"] = record["resumed_from"]
    result["checkpoint_saves"] = {"count": exp.state.saves, "seconds": exp.state.save_seconds}
    return _plain(result)


def _is_param(model, key: str) -> bool:
    return key in dict(model.named_parameters())


def _plain(value):
    """JSON-safe: tensors to numbers, NaN to null."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write(run_dir: Path, result: dict) -> None:
    atomic_write_text(Path(run_dir) / "report.md", markdown(result))
    atomic_write_text(Path(run_dir) / "report.json", json.dumps(result, indent=2) + "\n")


def completed_report(run_dir: Path) -> dict | None:
    path = Path(run_dir) / "report.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if data.get("status") == "completed" else None


def write_status(run_dir: Path, status: str, error: str, partial: dict | None = None) -> None:
    """A failed or interrupted run still says so, unless a completed report is already there to keep."""
    path = Path(run_dir) / "report.json"
    if path.exists():
        try:
            if json.loads(path.read_text()).get("status") == "completed":
                return
        except (OSError, ValueError):
            pass
    result = {"status": status, "error": error}
    if partial:
        result.update({k: v for k, v in partial.items() if k not in ("status", "error")})
    atomic_write_text(path, json.dumps(_plain(result), indent=2) + "\n")


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def markdown(r: dict) -> str:
    e, s, a = r["experiment"], r["sparsity"], r["accuracy"]
    lines = [
        f"# Pruning report: {e['strategy']} / {e['schedule']} on {e['model']} / {e['dataset']} (seed {e['seed']})",
        "",
        f"Status: **{r['status']}**. Sparsity is the fraction of prunable weights ({s['prunable']}) that "
        f"are zero, counted from the saved weights. Accuracy is top-1 on the test split.",
        "",
        "| metric | value |", "|---|---|",
        f"| target sparsity | {_pct(s['target'])} |",
        f"| achieved sparsity | {_pct(s['achieved'])} ({s['zeros']:,} of {s['prunable_weights']:,} zero) |",
        f"| accuracy dense | {_pct(a['dense'])} |",
        f"| accuracy pruned (before fine-tuning) | {_pct(a['pruned'])} |",
        f"| accuracy fine-tuned | {_pct(a['finetuned'])} |",
        f"| parameters total / nonzero | {r['params']['total']:,} / {r['params']['nonzero']:,} |",
    ]
    flops = r.get("flops") or {}
    if flops:
        lines.append(f"| multiply-adds dense / nonzero | {flops.get('dense', 0):,} / {flops.get('nonzero', 0):,} |")
    if r.get("shrunk"):
        lines.append(f"| parameters after shrinking | {r['shrunk'].get('params', 0):,} |")
    for name, lat in (r.get("latency") or {}).items():
        cells = ", ".join(f"{k.replace('_ms', '')}: {v:.3f} ms" for k, v in lat.items())
        lines.append(f"| latency {name} | {cells} |")
    for name, size in (r.get("size_bytes") or {}).items():
        if size is not None:
            lines.append(f"| size {name} | {size:,} bytes |")
    if r.get("resumed_from"):
        lines.append(f"| resumed from | {r['resumed_from']} |")
    lines += ["", "## Layers", "", "| layer | shape | sparsity |" + (" units kept |" if any(
        "units_kept" in l for l in r["layers"]) else ""), "|---|---|---|" + ("---|" if any(
            "units_kept" in l for l in r["layers"]) else "")]
    for layer in r["layers"]:
        kept = f" {layer['units_kept'][0]} / {layer['units_kept'][1]} |" if "units_kept" in layer else ""
        lines.append(f"| {layer['name']} | {'x'.join(map(str, layer['shape']))} | {_pct(layer['sparsity'])} |{kept}")
    lines += ["", "## Rounds", "", "| round | target | achieved | acc. after pruning | acc. after fine-tuning |",
              "|---|---|---|---|---|"]
    for rd in r["rounds"]:
        lines.append(f"| {rd['round']} | {_pct(rd['target'])} | {_pct(rd['sparsity'])} | "
                     f"{_pct(rd.get('accuracy_pruned'))} | {_pct(rd.get('accuracy'))} |")
    lines += ["", "## Timings (seconds)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in r["timings"].items()]
    return "\n".join(lines) + "\n"


def console_table(r: dict, console) -> None:
    from rich.table import Table
    e, s, a = r["experiment"], r["sparsity"], r["accuracy"]
    table = Table(title=f"{e['strategy']} / {e['schedule']} on {e['model']} / {e['dataset']} (seed {e['seed']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("sparsity target / achieved", f"{_pct(s['target'])} / {_pct(s['achieved'])}")
    table.add_row("accuracy dense", _pct(a["dense"]))
    table.add_row("accuracy pruned", _pct(a["pruned"]))
    table.add_row("accuracy fine-tuned", _pct(a["finetuned"]))
    table.add_row("params total / nonzero", f"{r['params']['total']:,} / {r['params']['nonzero']:,}")
    if r.get("flops"):
        table.add_row("MACs dense / nonzero", f"{r['flops']['dense']:,} / {r['flops']['nonzero']:,}")
    if r.get("shrunk"):
        table.add_row("params after shrinking", f"{r['shrunk'].get('params', 0):,}")
    speedup = r.get("speedup") or {}
    if speedup.get("method", "none") != "none" and speedup.get("measured"):
        table.add_row(f"measured speed-up ({speedup['method']})",
                      ", ".join(f"{k.replace('_ms', '').replace('_', ' ')}: {v:.2f}x"
                                for k, v in speedup["measured"].items()))
    elif speedup:
        table.add_row("measured speed-up", "none (masked weights still run dense kernels)")
    table.add_row("cache (dense)", str(r.get("cache", {}).get("dense", "-")))
    table.add_row("total seconds", f"{r['timings'].get('total', 0):.2f}")
    console.print(table)
