"""The search itself: per strategy, bisection on a log scale of the weights remaining (1 - sparsity).

Accuracy falls as sparsity grows; the search keeps a sparsity known to pass (validation drop within the
budget) and one known to fail, and probes the geometric mean of their remaining fractions until the two are
within ``search.tolerance`` of each other (in remaining fraction). It assumes accuracy falls monotonically
with sparsity; probes that contradict it are all listed in ``search.json``.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from prune_cli.errors import UsageError

log = logging.getLogger("prune_cli.search")


@dataclass
class Settings:
    max_drop: float = 0.01        # largest allowed validation accuracy drop from dense (a fraction: 0.01 = 1 point)
    tolerance: float = 0.005      # stop when the pass/fail remaining fractions are this close
    min_sparsity: float = 0.5     # the lowest sparsity probed (if it fails, nothing is chosen)
    max_sparsity: float = 0.995   # the highest
    max_probes: int = 12          # per strategy
    directory: Path = Path(".")


FIELDS = {"max_drop": (float, 0.0, 1.0), "tolerance": (float, 1e-6, 1.0), "min_sparsity": (float, 0.0, 0.999999),
          "max_sparsity": (float, 0.0, 0.999999), "max_probes": (int, 2, 1000)}


def parse_args(args: list[str]) -> tuple[Settings, list[str], list[str]]:
    """(search settings, prune-run overrides, strategies). ``strategy=a,b`` is a list of strategies here."""
    settings, overrides, strategies = Settings(), [], ["magnitude"]
    directory = None
    for arg in args:
        key, eq, value = arg.partition("=")
        if not eq:
            raise UsageError(f"{arg}: expected key=value (prune-run overrides, or search.* settings)")
        if key == "search.dir":
            directory = Path(value).expanduser()
        elif key.startswith("search."):
            name = key[len("search."):]
            if name not in FIELDS:
                raise UsageError(f"{key}={value}: unknown search setting; there are search.dir, "
                                 + ", ".join(f"search.{k}" for k in FIELDS))
            kind, low, high = FIELDS[name]
            try:
                number = kind(value)
            except ValueError:
                raise UsageError(f"{key}={value}: must be a {kind.__name__} in [{low}, {high}]") from None
            if not low <= number <= high:
                raise UsageError(f"{key}={value}: must be in [{low}, {high}]")
            setattr(settings, name, number)
        elif key == "strategy":
            strategies = [s for s in value.split(",") if s]
        elif key == "sparsity":
            raise UsageError(f"{arg}: prune-search chooses the sparsity; bound it with search.min_sparsity and "
                             f"search.max_sparsity")
        elif key.startswith(("-m", "hydra.")):
            raise UsageError(f"{arg}: prune-search runs its probes itself (use search.dir for the directory)")
        else:
            overrides.append(arg)
    if settings.min_sparsity >= settings.max_sparsity:
        raise UsageError(f"search.min_sparsity={settings.min_sparsity}: must be below search.max_sparsity="
                         f"{settings.max_sparsity}")
    if not any(o.startswith(("dataset.val_fraction=", "+dataset.val_fraction=")) for o in overrides):
        overrides.append("dataset.val_fraction=0.1")  # every choice is made on validation data
    settings.directory = directory or Path("outputs/searches") / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{os.getpid()}"
    return settings, overrides, strategies


def _probe_dir(settings: Settings, strategy: str, sparsity: float) -> Path:
    return settings.directory / strategy / f"sparsity_{sparsity:.6f}"


def probe(settings: Settings, overrides: list[str], strategy: str, sparsity: float, counter: list) -> dict:
    import prune_cli
    run_dir = _probe_dir(settings, strategy, sparsity)
    counter[0] += 1
    report = prune_cli.run([*overrides, f"strategy={strategy}", f"sparsity={sparsity:.6f}", "progress=false"],
                           run_dir)
    val = report.get("val_accuracy")
    if not val or val.get("finetuned") is None or val.get("dense") is None:
        raise UsageError("prune-search needs a validation split: dataset.val_fraction must be above 0 (it "
                         "chooses on validation data, never on test)")
    entry = {"sparsity": round(sparsity, 6), "val_accuracy": val["finetuned"], "val_dense": val["dense"],
             "val_drop": val["dense"] - val["finetuned"], "run_dir": str(run_dir)}
    within = entry["val_drop"] <= settings.max_drop + 1e-12
    log.info("probe %d: %s at sparsity %.4f: validation %.2f%% (drop %.2f points, %s budget)", counter[0], strategy,
             sparsity, 100 * entry["val_accuracy"], 100 * entry["val_drop"], "within" if within else "over")
    entry["within"] = within
    entry["_report"] = report
    return entry


def search_strategy(settings: Settings, overrides: list[str], strategy: str, counter: list) -> dict:
    probes = []

    def run(sparsity):
        entry = probe(settings, overrides, strategy, sparsity, counter)
        probes.append(entry)
        return entry

    low = run(settings.min_sparsity)
    chosen = None
    if low["within"]:
        high = run(settings.max_sparsity)
        if high["within"]:
            chosen = high
        else:
            passing, failing = low, high
            while (1 - passing["sparsity"]) - (1 - failing["sparsity"]) > settings.tolerance \
                    and len(probes) < settings.max_probes:
                remaining = math.sqrt((1 - passing["sparsity"]) * (1 - failing["sparsity"]))
                middle = run(1 - remaining)
                if middle["within"]:
                    passing = middle
                else:
                    failing = middle
            chosen = passing
    result = {"probes": [{k: v for k, v in p.items() if not k.startswith("_")} for p in probes], "chosen": None}
    if chosen is not None:
        report = chosen["_report"]
        result["chosen"] = {"sparsity": chosen["sparsity"], "run_dir": chosen["run_dir"], "val_drop": chosen["val_drop"],
                            "val_accuracy": chosen["val_accuracy"], "test_accuracy": report["accuracy"]["finetuned"],
                            "test_dense": report["accuracy"]["dense"]}
        above = [p for p in probes if p["sparsity"] > chosen["sparsity"] and not p["within"]]
        if above:
            result["chosen"]["next_failing"] = min(p["sparsity"] for p in above)
    return result


def search(settings: Settings, overrides: list[str], strategies: list[str]) -> dict:
    settings.directory.mkdir(parents=True, exist_ok=True)
    counter = [0]
    results = {}
    for strategy in strategies:
        results[strategy] = search_strategy(settings, overrides, strategy, counter)
        chosen = results[strategy]["chosen"]
        log.info("%s: %s", strategy, f"highest sparsity within budget {chosen['sparsity']:.4f}" if chosen
                 else "no sparsity within budget")
    candidates = [(r["chosen"]["sparsity"], -r["chosen"]["val_drop"], name) for name, r in results.items()
                  if r["chosen"]]
    best = None
    if candidates:  # the highest sparsity within budget; ties go to the smaller validation drop
        sparsity, _, name = max(candidates)
        best = {"strategy": name, **{k: results[name]["chosen"][k] for k in ("sparsity", "val_drop",
                                                                              "test_accuracy", "run_dir")}}
    return {"max_drop": settings.max_drop, "tolerance": settings.tolerance,
            "range": [settings.min_sparsity, settings.max_sparsity], "overrides": overrides,
            "strategies": results, "best": best, "probes_run": counter[0]}
