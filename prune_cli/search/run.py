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
    max_sparsity: float = 0.995   # the highest sparsity probed
    max_probes: int = 12          # probes per strategy, at most
    screen_epochs: int = 2        # strategy=auto: fine-tune epochs of each screening run
    screen_sparsity: float = 0.9  # strategy=auto: where the families are screened
    keep: int = 2                 # strategy=auto: how many of the best screened strategies are searched
    directory: Path = Path(".")


FIELDS = {"max_drop": (float, 0.0, 1.0), "tolerance": (float, 1e-6, 1.0), "min_sparsity": (float, 0.0, 0.999999),
          "max_sparsity": (float, 0.0, 0.999999), "max_probes": (int, 2, 1000), "screen_epochs": (int, 0, 10000),
          "screen_sparsity": (float, 0.0, 0.999999), "keep": (int, 1, 100)}
# strategy=auto screens one strategy of every built-in family (and the smaller-model baseline).
SCREENED = ("magnitude", "gradient", "random", "activation", "apoz", "l1", "l0", "wanda", "sparsegpt", "compress")


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
        within = [p["sparsity"] for p in probes if p["within"]]
        log.info("%s: %d of at most %d probes; best so far %s", strategy, len(probes), settings.max_probes,
                 f"sparsity {max(within):.4f}" if within else "none within budget")
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


def screen(settings: Settings, overrides: list[str], counter: list) -> tuple[list[dict], list[str]]:
    """strategy=auto: every family at ``screen_sparsity`` with ``screen_epochs`` of fine-tuning, ranked by
    validation accuracy; the best ``keep`` go on to the full search."""
    import prune_cli
    rows = []
    for strategy in SCREENED:
        run_dir = settings.directory / "screen" / strategy
        try:
            report = prune_cli.run([*overrides, f"strategy={strategy}", f"sparsity={settings.screen_sparsity:.6f}",
                                    f"finetune.epochs={settings.screen_epochs}", "progress=false"], run_dir)
        except UsageError as err:  # e.g. a structured strategy that cannot reach the screening sparsity
            rows.append({"strategy": strategy, "refused": str(err), "run_dir": str(run_dir)})
            log.info("screen: %s refused: %s", strategy, err)
            continue
        counter[0] += 1
        val = report.get("val_accuracy") or {}
        if val.get("finetuned") is None:
            raise UsageError("prune-search needs a validation split: dataset.val_fraction must be above 0")
        rows.append({"strategy": strategy, "val_accuracy": val["finetuned"], "val_drop": val["dense"] - val["finetuned"],
                     "budget_epochs": report["budget"]["total_epochs"], "run_dir": str(run_dir)})
        log.info("screen: %s at sparsity %.4f: validation %.2f%%", strategy, settings.screen_sparsity,
                 100 * val["finetuned"])
    ranked = sorted((r for r in rows if "val_accuracy" in r), key=lambda r: -r["val_accuracy"])
    kept = [r["strategy"] for r in ranked[:settings.keep]]
    for r in rows:
        r["kept"] = r["strategy"] in kept
    if not kept:
        raise UsageError(f"search.screen_sparsity={settings.screen_sparsity}: every strategy was refused there")
    return rows, kept


def check_before_probing(settings: Settings, overrides: list[str], strategies: list[str]) -> None:
    """Every strategy and value checked before the first probe (and before the search directory is made): a
    name that is an option of conf/strategy (never a path), a config that composes and plans, and a
    validation split to choose on."""
    import re
    from prune_cli.app.dry_run import make_plan
    from prune_cli.config import compose_config
    names = [s for s in strategies if s != "auto"] if strategies != ["auto"] else SCREENED
    for name in names:
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]*", name):
            raise UsageError(f"strategy={name}: not a strategy name (an option of conf/strategy, e.g. magnitude); "
                             f"names never become paths outside the search directory")
        cfg = compose_config([*overrides, f"strategy={name}", f"sparsity={settings.min_sparsity:.6f}"])
        if float(cfg.dataset.get("val_fraction") or 0.0) <= 0.0:
            raise UsageError(f"dataset.val_fraction={cfg.dataset.get('val_fraction')}: prune-search needs a "
                             f"validation split to choose on; use a fraction above 0 (default 0.1)")
        make_plan(cfg)


def search(settings: Settings, overrides: list[str], strategies: list[str]) -> dict:
    check_before_probing(settings, overrides, strategies)
    settings.directory.mkdir(parents=True, exist_ok=True)
    counter = [0]
    results = {}
    screening = None
    if strategies == ["auto"]:
        screening, strategies = screen(settings, overrides, counter)
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
    out = {"max_drop": settings.max_drop, "tolerance": settings.tolerance,
           "range": [settings.min_sparsity, settings.max_sparsity], "overrides": overrides,
           "strategies": results, "best": best, "probes_run": counter[0]}
    if screening is not None:
        out["screening"] = {"sparsity": settings.screen_sparsity, "finetune_epochs": settings.screen_epochs,
                            "keep": settings.keep, "strategies": screening,
                            "why": f"kept the {len(strategies)} with the highest validation accuracy at sparsity "
                                   f"{settings.screen_sparsity} after {settings.screen_epochs} fine-tune epochs "
                                   f"({', '.join(strategies)}); each was then searched fully, and the best is "
                                   f"the one reaching the highest sparsity within the budget"}
    return out
