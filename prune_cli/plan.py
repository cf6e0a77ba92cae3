"""``prune-run +dry_run=true``: the resolved plan of a run, printed without training anything.

It validates the config exactly as a run would (bad input is still one line and exit 2), builds the dense
model to count its parameters and multiply-adds, and lists every schedule round with its target and epochs.

Data: built-in sets are loaded (a second or two). A torchvision set whose files are missing is *not*
downloaded and does not fail the dry run: the plan says which files are missing and where, uses the set's
known shape and sizes for the rest, and ends with a line saying the real run would stop there (exit code 0:
the plan itself was printed). The plan itself never downloads or unpacks data, nor writes to the cache (Hydra
still writes its usual ``.hydra/`` config into the run directory).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from . import checks
from .errors import UsageError


def _plain(node) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _dataset(cfg) -> dict:
    """Shape, classes and split sizes; for torchvision sets with missing files, what is missing instead."""
    from .data import LOADERS, load_dataset
    name = str(cfg.dataset.name)
    out: dict[str, Any] = {"name": name, "missing": None}
    if name not in LOADERS:
        from . import vision_data
        source = vision_data.SOURCES.get(name)
        if source is None:
            raise UsageError(f"dataset={name}: unknown dataset; built-in: digits, synthetic, "
                             f"{', '.join(vision_data.SOURCES)}")
        root = vision_data._root(cfg.dataset)
        out["root"] = str(root)
        vision_data._check_root(source, root)
        missing = vision_data.missing_files(source, root)
        if missing:
            download = bool(cfg.dataset.get("download", True))
            out["missing"] = vision_data.missing_message(source, root, missing)
            if download:
                out["missing"] += ("; dataset.download=true, so the run would first try torchvision's download "
                                   "(needs network access)")
            out.update(input_shape=source.shape, num_classes=source.num_classes, train=source.sizes[0],
                       test=source.sizes[1], val=None, notes=[], mean=[0.5] * source.shape[0],
                       std=[0.25] * source.shape[0], download=download)
            return out
    data = load_dataset(cfg.dataset)
    out.update(input_shape=tuple(data.info.input_shape), num_classes=data.info.num_classes, train=len(data.train),
               test=len(data.test), val=len(data.val) if data.val is not None else None, notes=list(data.notes),
               mean=list(data.info.mean), std=list(data.info.std))
    return out


def _flops(model, input_shape) -> Optional[int]:
    try:
        from .costs import count_flops
    except ImportError:
        from torch.utils.flop_counter import FlopCounterMode
        import torch
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape))
        return counter.get_total_flops() // 2
    return int(count_flops(model, input_shape)["dense"])


def _model(cfg, data: dict, strategy) -> dict:
    from types import SimpleNamespace
    from .masks import prunable_names, weight_sparsity
    from .models import build_for
    info = SimpleNamespace(name=data["name"], input_shape=tuple(data["input_shape"]),
                           num_classes=data["num_classes"], mean=data["mean"], std=data["std"])
    model_cfg = _plain(cfg.model)
    # Pretrained weights are an initialisation: counting needs only the architecture (and no download).
    model, spec = build_for({k: v for k, v in model_cfg.items() if k != "pretrained"}, info)
    prunable = prunable_names(model, include_classifier=getattr(strategy, "prune_classifier", True))
    out = {"name": model_cfg.get("name", spec["target"]), "target": spec["target"],
           "options": {k: v for k, v in model_cfg.items() if k not in ("_target_", "name")},
           "params": sum(p.numel() for p in model.parameters()),
           "prunable_weights": weight_sparsity(model, prunable)[2], "prunable_layers": len(prunable),
           "macs": _flops(model, info.input_shape)}
    if getattr(strategy, "structured", False):
        import torch
        from .structure import check_reachable
        check_reachable(model, torch.zeros(1, *info.input_shape), prunable, float(cfg.sparsity), strategy.name,
                        out["name"])
    if getattr(strategy, "name", None) == "compress":
        out["compress"] = _compress_width(cfg, model_cfg, info, strategy, out["prunable_weights"])
    return out


def _compress_width(cfg, model_cfg, info, strategy, dense_count) -> dict:
    from .masks import prunable_names, weight_sparsity
    from .models import build, make_spec
    from .strategies.compress import find_width

    def count(width: float) -> int:
        candidate = build(make_spec(model_cfg, info, width))
        return weight_sparsity(candidate, prunable_names(candidate, strategy.prune_classifier))[2]

    try:
        width = find_width(count, 1.0 - float(cfg.sparsity))
    except ValueError as err:
        from .errors import UsageError
        raise UsageError(f"sparsity={cfg.sparsity}: strategy=compress cannot reach it: {err}") from None
    return {"width": width, "prunable_weights": count(width), "dense_prunable_weights": dense_count}


def _rounds(cfg, strategy, schedule, data: dict) -> dict:
    sparsity = float(cfg.sparsity)
    finetune = cfg.finetune
    if getattr(strategy, "name", None) == "compress":  # the pipeline ignores the schedule for compress
        return {"kind": "compress", "epochs": int(cfg.train.epochs) + int(finetune.epochs)}
    if getattr(schedule, "prunes_while_training", False):
        batches = -(-int(data["train"]) // int(finetune.batch_size))
        total = int(finetune.epochs) * batches
        steps = schedule.pruning_steps(total)
        return {"kind": "during fine-tuning", "steps": total, "prunes": len(steps),
                "first": (steps[0], schedule.sparsity_at(steps[0], sparsity, total)),
                "last": (steps[-1], schedule.sparsity_at(steps[-1], sparsity, total))}
    targets = schedule.targets(sparsity)
    epochs = schedule.epochs_per_round(int(finetune.epochs), len(targets))
    return {"kind": "rounds", "rounds": [{"round": i, "target": t, "finetune_epochs": e}
                                         for i, (t, e) in enumerate(zip(targets, epochs), start=1)],
            "rewind": bool(getattr(schedule, "rewind", False))}


def _dense_cache(cfg, schedule) -> str:
    from .cache import dense_key
    if not cfg.cache.enabled:
        return "cache disabled: the dense model would be trained"
    key = dense_key({"model": _plain(cfg.model), "dataset": _plain(cfg.dataset), "train": _plain(cfg.train),
                     "seed": int(cfg.seed), "rewind_epoch": getattr(schedule, "rewind_epoch", 0)})
    path = Path(str(cfg.cache.dir)).expanduser().resolve() / f"dense-{key}.pt"
    return f"cached ({path.name}): would be reused" if path.exists() else "not cached: would be trained"


def _stage(node) -> str:
    text = f"{node.epochs} epochs, {node.optimizer} lr {node.lr:g}, batch {node.batch_size}"
    if node.optimizer == "sgd" and node.get("momentum", 0):
        text += f", momentum {node.momentum:g}"
    if node.get("weight_decay", 0):
        text += f", weight decay {node.weight_decay:g}"
    return text


def make_plan(cfg: DictConfig) -> dict:
    """Everything the plan shows, as plain data (tests read this; ``print_plan`` renders it)."""
    checks.validate(cfg)
    device = checks.resolve_device(cfg.device)
    strategy = checks.instantiate(cfg.strategy, "strategy")
    schedule = checks.instantiate(cfg.schedule, "schedule")
    checks.validate_plan(cfg, strategy, schedule)
    data = _dataset(cfg)
    plan = {"device": str(device), "seed": int(cfg.seed), "sparsity": float(cfg.sparsity), "dataset": data,
            "model": _model(cfg, data, strategy),
            "strategy": strategy.describe() if hasattr(strategy, "describe") else {"name": strategy.name},
            "schedule": schedule.describe() if hasattr(schedule, "describe") else {"name": schedule.name},
            "rounds": _rounds(cfg, strategy, schedule, data), "train": _stage(cfg.train),
            "finetune": _stage(cfg.finetune), "dense": _dense_cache(cfg, schedule),
            "reference": _plain(cfg.get("reference"))}
    return plan


def _number(n: Optional[int]) -> str:
    return "n/a" if n is None else f"{n:,}"


def print_plan(cfg: DictConfig, console=None) -> dict:
    """Print the plan with rich; returns it as plain data."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    plan = make_plan(cfg)
    console = console or Console()
    d, m, r = plan["dataset"], plan["model"], plan["rounds"]
    table = Table(title="prune-run plan (dry run: nothing is trained)", show_header=False,
                  title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    options = " ".join(f"{k}={v}" for k, v in m["options"].items())
    table.add_row("model", escape(f"{m['name']} ({m['target']}) {options}".strip()))
    table.add_row("dense size", f"{_number(m['params'])} params, {_number(m['prunable_weights'])} prunable weights "
                  f"in {m['prunable_layers']} layers, {_number(m['macs'])} MACs per image")
    shape = "x".join(str(s) for s in d["input_shape"])
    sizes = f"train {d['train']:,}" + (f" / val {d['val']:,}" if d.get("val") else "") + f" / test {d['test']:,}"
    table.add_row("dataset", escape(f"{d['name']}: {shape}, {d['num_classes']} classes, {sizes}"
                                    + (" (standard sizes)" if d["missing"] else "")))
    if d.get("root"):
        table.add_row("data files", "[red]missing[/] (see below)" if d["missing"]
                      else escape(f"present under {d['root']}"))
    for note in d.get("notes") or []:
        table.add_row("", escape(note))
    strategy = plan["strategy"]
    table.add_row("strategy", escape(" ".join(f"{k}={v}" for k, v in strategy.items())))
    table.add_row("schedule", escape(" ".join(f"{k}={v}" for k, v in plan["schedule"].items())))
    table.add_row("sparsity", f"{plan['sparsity']:g} of prunable weights zero at the end")
    table.add_row("train (dense)", f"{plan['train']}; {plan['dense']}")
    if r["kind"] == "rounds":
        table.add_row("fine-tune", plan["finetune"] + " (total over rounds)")
        for item in r["rounds"]:
            what = "rewind, retrain" if r["rewind"] else "fine-tune"
            table.add_row(f"round {item['round']}", f"prune to {item['target']:.4f}, {what} "
                                                    f"{item['finetune_epochs']} epochs")
    elif r["kind"] == "during fine-tuning":
        table.add_row("fine-tune", plan["finetune"])
        table.add_row("pruning", f"{r['prunes']} prunes during {r['steps']:,} fine-tune steps: step {r['first'][0]} "
                                 f"to {r['first'][1]:.4f} ... step {r['last'][0]} to {r['last'][1]:.4f}")
    else:
        c = m["compress"]
        table.add_row("compress", f"train a width-{c['width']:.4f} model ({_number(c['prunable_weights'])} of "
                                  f"{_number(c['dense_prunable_weights'])} prunable weights) for {r['epochs']} epochs")
    table.add_row("seed / device", f"{plan['seed']} / {plan['device']}")
    if plan["reference"]:
        ref = plan["reference"]
        table.add_row("compare with", escape("; ".join(f"{k}: {v}" for k, v in ref.items())))
    console.print(table)
    if d["missing"]:
        console.print("[bold red]The run would stop here:[/] " + escape(d["missing"]))
    return plan
