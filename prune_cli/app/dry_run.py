"""``prune-run +dry_run=true``: the resolved plan of a run, printed without training anything.

It validates the config exactly as a run would (bad input is still one line and exit 2), builds the dense
model to count its parameters and multiply-adds, and lists every schedule round with its target and epochs.

Data: built-in sets are loaded (a second or two). A torchvision set whose files are missing is *not*
downloaded and does not fail the dry run: the plan says which files are missing and where, uses the set's
known shape and sizes for the rest, and ends with a line saying the real run would stop there (exit code 0:
the plan itself was printed). The plan itself never downloads or unpacks data, nor writes to the cache; a
single dry run is printed before Hydra starts (``app/guard.py``), so it leaves no run directory behind.
"""
from __future__ import annotations

from typing import Any, Optional

from omegaconf import DictConfig

from prune_cli.config import instantiate, plain, resolve_device
from prune_cli.pipeline.facts import DataFacts
from prune_cli.pipeline.settings import RunSettings
from prune_cli.validate import validate


def _dataset(cfg) -> tuple[dict, DataFacts]:
    """Shape, classes and split sizes; for torchvision sets with missing files, what is missing instead."""
    from prune_cli.data import load_dataset
    from prune_cli.data import files
    from prune_cli.data.splits import DataInfo, split_sizes
    name = str(cfg.dataset.name)
    out: dict[str, Any] = {"name": name, "missing": None}
    source = files.SOURCES.get(name)
    if source is not None:
        root = files.data_root(cfg.dataset)
        out["root"] = str(root)
        files.check_root(source, root)
        missing = files.missing_files(source, root)
        if missing:
            download = bool(cfg.dataset.get("download", True))
            out["missing"] = files.missing_message(source, root, missing)
            if download:
                out["missing"] += ("; dataset.download=true, so the run would first try torchvision's download "
                                   "(needs network access)")
            info = DataInfo(name, source.shape, source.num_classes, (0.5,) * source.shape[0],
                            (0.25,) * source.shape[0])
            # The standard sizes, with the validation split carved out of train as the run would.
            train, val = split_sizes(source.sizes[0], float(cfg.dataset.get("val_fraction") or 0.0))
            out.update(input_shape=source.shape, num_classes=source.num_classes, train=train,
                       test=source.sizes[1], val=val or None, notes=[], download=download)
            return out, DataFacts(info, train, source.sizes[1], val or None)
    from prune_cli.pipeline.memory import check_data_fits
    check_data_fits(cfg.dataset)
    data = load_dataset(cfg.dataset)
    facts = DataFacts.of(data)
    out.update(input_shape=tuple(data.info.input_shape), num_classes=data.info.num_classes, train=facts.train_size,
               test=facts.test_size, val=facts.val_size, notes=list(data.notes))
    return out, facts


def _model(cfg, facts: DataFacts, strategy, schedule, device) -> dict:
    import torch

    from prune_cli.measure.flops import count_flops
    from prune_cli.models import build_for
    from prune_cli.pipeline.prunable import prunable_of
    from prune_cli.pruning.sparsity import model_sparsity
    from prune_cli.pipeline.memory import check_model_fits
    model_cfg = plain(cfg.model)
    check_model_fits(model_cfg, facts.info, device)
    # Pretrained weights are an initialisation: counting needs only the architecture (and no download).
    model, spec = build_for({k: v for k, v in model_cfg.items() if k != "pretrained"}, facts.info)
    input_shape = tuple(facts.info.input_shape)
    name = model_cfg.get("name", model_cfg.get("_target_"))
    allowed = prunable_of(model, torch.zeros(1, *input_shape), strategy, schedule, float(cfg.sparsity), name)
    prunable = allowed.names
    out = {"name": name, "target": spec["target"],
           "options": {k: v for k, v in model_cfg.items() if k not in ("_target_", "name")},
           "params": sum(p.numel() for p in model.parameters()),
           "prunable_weights": model_sparsity(model, prunable)[2], "prunable_layers": len(prunable),
           "macs": int(count_flops(model, input_shape)["dense"])}
    if allowed.ignored:
        out["ignored"] = allowed.ignored
    if cfg.get("weights"):  # the same fit check as the run's, before anything is trained
        from prune_cli.storage.weights import read_weights
        read_weights(cfg.weights, model, name)
    return out


def _dense_cache(cfg, schedule, device) -> str:
    from prune_cli.pipeline.dense import check_weights, dense_key, run_cache
    check_weights(cfg, schedule)
    if cfg.get("weights"):
        from prune_cli.storage.weights import weights_path
        return f"loaded from {weights_path(cfg.weights)}: not trained"
    if not cfg.cache.enabled:
        return "cache disabled: the dense model would be trained"
    path = run_cache(cfg).path(dense_key(cfg, schedule, device.type))
    return f"cached ({path.name}): would be reused" if path.exists() else "not cached: would be trained"


def _stage(node) -> str:
    text = f"{node.epochs} epochs, {node.optimizer} lr {node.lr:g}, batch {node.batch_size}"
    if node.optimizer == "sgd" and node.get("momentum", 0):
        text += f", momentum {node.momentum:g}"
    if node.get("weight_decay", 0):
        text += f", weight decay {node.weight_decay:g}"
    return text


def make_plan(cfg: DictConfig) -> dict:
    """Everything the plan shows, as plain data (tests read this; ``print_plan`` renders it). It checks and
    computes with the functions the run uses: validation, the loop's own plan, the dense cache key."""
    from prune_cli.pipeline.loops import loop_for
    validate(cfg)
    device = resolve_device(cfg.device)
    import prune_cli.distributed as distributed
    distributed.check(cfg, device)  # under torchrun: what a run across processes cannot do
    strategy = instantiate(cfg.strategy, "strategy")
    schedule = instantiate(cfg.schedule, "schedule")
    schedule.check_budget(int(cfg.train.epochs), int(cfg.finetune.epochs))
    loop = loop_for(strategy, schedule)
    data, facts = _dataset(cfg)
    plan = {"device": str(device), "seed": int(cfg.seed), "sparsity": float(cfg.sparsity), "dataset": data,
            "model": _model(cfg, facts, strategy, schedule, device), "strategy": strategy.describe(),
            "schedule": schedule.describe(), "loop": loop.plan(RunSettings.from_cfg(cfg), strategy, schedule, facts),
            "train": _stage(cfg.train), "finetune": _stage(cfg.finetune), "dense": _dense_cache(cfg, schedule, device),
            "reference": plain(cfg.get("reference"))}
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
    d, m, r = plan["dataset"], plan["model"], plan["loop"]
    table = Table(title="prune-run plan (dry run: nothing is trained)", show_header=False,
                  title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    options = " ".join(f"{k}={v}" for k, v in m["options"].items())
    table.add_row("model", escape(f"{m['name']} ({m['target']}) {options}".strip()))
    table.add_row("dense size", f"{_number(m['params'])} params, {_number(m['prunable_weights'])} prunable weights "
                  f"in {m['prunable_layers']} layers, {_number(m['macs'])} MACs per image")
    if m.get("ignored"):
        table.add_row("left dense", escape(", ".join(m["ignored"]) + " (strategy.ignore)"))
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
    table.add_row("train (dense)", plan["dense"] if plan["dense"].startswith("loaded") else
                  f"{plan['train']}; {plan['dense']}")
    if r["kind"] == "rounds":
        table.add_row("fine-tune", plan["finetune"] + " (total over rounds)")
        for item in r["rounds"]:
            what = "rewind, retrain" if r["rewind"] else "fine-tune"
            table.add_row(f"round {item['round']}", f"prune to {item['target']:.4f}, {what} "
                                                    f"{item['finetune_epochs']} epochs")
    elif r["kind"] == "gradual":
        first, last = r["prunes"][0], r["prunes"][-1]
        table.add_row("fine-tune", plan["finetune"])
        table.add_row("pruning", f"{len(r['prunes'])} prunes during {r['steps']:,} fine-tune steps: step "
                                 f"{first['step']} to {first['target']:.4f} ... step {last['step']} to "
                                 f"{last['target']:.4f}")
    else:
        table.add_row("compress", f"train a width-{r['width']:.4f} model ({_number(r['prunable_weights'])} of "
                                  f"{_number(r['dense_prunable_weights'])} prunable weights) for {r['epochs']} epochs")
    table.add_row("seed / device", f"{plan['seed']} / {plan['device']}")
    if plan["reference"]:
        ref = plan["reference"]
        table.add_row("compare with", escape("; ".join(f"{k}: {v}" for k, v in ref.items())))
    console.print(table)
    if d["missing"]:
        console.print("[bold red]The run would stop here:[/] " + escape(d["missing"]))
    return plan
