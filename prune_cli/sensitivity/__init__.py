"""``prune-sensitivity``: how much each prunable layer can lose alone, and per-layer rates derived from it.

    prune-sensitivity model=lenet300 sensitivity.sparsities=[0.5,0.7,0.9,0.95]
    prune-run model=lenet300 sparsity=0.9 strategy.layer_sparsity=from_sensitivity:DIR/sensitivity.json

Each layer is pruned alone (``strategy.layer_sparsity={layer: s}``, every other layer dense) to every
sparsity of ``sensitivity.sparsities``, with ``sensitivity.finetune_epochs`` of fine-tuning (0: none), and
its validation accuracy recorded; every probe is an ordinary run directory sharing the dense cache. The
curves go to ``sensitivity.json`` (``{"layers": {layer: {sparsity: val_accuracy}}, ...}``), ``sensitivity.md``
and ``sensitivity.png``. ``from_sensitivity:PATH`` (``pruning/allocation.py``) gives each layer the highest sparsity whose drop stays under
one common threshold, the threshold set so that the total is the run's target (``allocate``).
"""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from prune_cli.errors import UsageError

log = logging.getLogger("prune_cli.sensitivity")


def parse_args(args: list[str]) -> tuple[dict, list[str]]:
    settings = {"sparsities": [0.5, 0.7, 0.9, 0.95], "finetune_epochs": 0, "dir": None}
    overrides = []
    for arg in args:
        key, eq, value = arg.partition("=")
        if not eq:
            raise UsageError(f"{arg}: expected key=value (prune-run overrides, or sensitivity.* settings)")
        if key == "sensitivity.sparsities":
            try:
                values = [float(v) for v in value.strip("[]").split(",") if v.strip()]
            except ValueError:
                values = []
            if not values or not all(0 < v < 1 for v in values):
                raise UsageError(f"{arg}: must be a list of fractions in (0, 1), e.g. [0.5,0.9]")
            settings["sparsities"] = sorted(set(values))
        elif key == "sensitivity.finetune_epochs":
            if not value.isdigit():
                raise UsageError(f"{arg}: must be a non-negative integer")
            settings["finetune_epochs"] = int(value)
        elif key == "sensitivity.dir":
            settings["dir"] = Path(value).expanduser()
        elif key.startswith("sensitivity."):
            raise UsageError(f"{arg}: unknown setting; there are sensitivity.sparsities, sensitivity.finetune_epochs, "
                             f"sensitivity.dir")
        elif key in ("sparsity", "strategy.layer_sparsity") or key.startswith(("hydra.", "-m")):
            raise UsageError(f"{arg}: prune-sensitivity sets it for every probe itself")
        else:
            overrides.append(arg)
    if not any(o.startswith("dataset.val_fraction=") for o in overrides):
        overrides.append("dataset.val_fraction=0.1")  # the curves are measured on validation data
    settings["dir"] = settings["dir"] or Path("outputs/sensitivity") / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{os.getpid()}"
    return settings, overrides


def analyse(settings: dict, overrides: list[str]) -> dict:
    import prune_cli
    from prune_cli.config import compose_config, instantiate
    from prune_cli.data import load_dataset
    from prune_cli.models import build_for
    from prune_cli.config import plain
    from prune_cli.pruning.masks import prunable_for
    cfg = compose_config(overrides)
    model, _ = build_for(plain(cfg.model), load_dataset(cfg.dataset).info)
    names, _ = prunable_for(model, instantiate(cfg.strategy, "strategy"))
    params = dict(model.named_parameters())
    sizes = {n: params[n].numel() for n in names}
    total = sum(sizes.values())
    curves, dense = {}, None
    for name in names:
        curves[name] = {}
        for s in settings["sparsities"]:
            target = round(s * sizes[name]) / total  # only this layer's zeros: round(s * n_layer) of them
            run_dir = Path(settings["dir"]) / name / f"sparsity_{s:.4f}"
            report = prune_cli.run([*overrides, f"sparsity={target!r}", f"strategy.layer_sparsity={{{name}: {s}}}",
                                    f"finetune.epochs={settings['finetune_epochs']}", "progress=false"], run_dir)
            val = report.get("val_accuracy") or {}
            if val.get("finetuned") is None:
                raise UsageError("prune-sensitivity needs a validation split: dataset.val_fraction must be above 0")
            dense = val["dense"]
            curves[name][f"{s:g}"] = val["finetuned"]
            log.info("%s at %.2f: validation %.2f%% (dense %.2f%%)", name, s, 100 * val["finetuned"], 100 * dense)
    return {"dense_val_accuracy": dense, "finetune_epochs": settings["finetune_epochs"], "sizes": sizes,
            "layers": curves, "overrides": overrides}


def main(argv: Sequence[str] | None = None) -> int:
    from prune_cli.sensitivity.output import write_outputs
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("prune_cli").setLevel(logging.WARNING)
    log.setLevel(logging.INFO)
    args = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(args):
        from prune_cli.app.help_text import render
        print(render(__doc__, [("sensitivity.sparsities", "[0.5, 0.7, 0.9, 0.95]", "the sparsities probed per layer"),
                               ("sensitivity.finetune_epochs", "0", "fine-tuning of each probe"),
                               ("sensitivity.dir", "outputs/sensitivity/<time>_<pid>", "where the probes and "
                                                                                        "sensitivity.json go")],
                     "Every other key=value is a prune-run override (model=, dataset=, strategy=, ...)."))
        return 0
    try:
        settings, overrides = parse_args(args)
        Path(settings["dir"]).mkdir(parents=True, exist_ok=True)
        result = analyse(settings, overrides)
        write_outputs(result, Path(settings["dir"]))
    except UsageError as err:
        print(f"prune-sensitivity: {err}", file=sys.stderr)
        return 2
    print(f"prune-sensitivity: curves for {len(result['layers'])} layers in {settings['dir']}/sensitivity.json; "
          f"use them with strategy.layer_sparsity=from_sensitivity:{settings['dir']}/sensitivity.json")
    return 0
