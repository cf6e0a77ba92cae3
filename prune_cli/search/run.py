"""The search itself: per strategy, bisection on a log scale of the weights remaining (1 - sparsity).

Accuracy falls as sparsity grows; the search keeps a sparsity known to pass (validation drop within the
budget) and one known to fail, and probes the geometric mean of their remaining fractions until the two are
within ``search.tolerance`` of each other (in remaining fraction). It assumes accuracy falls monotonically
with sparsity; probes that contradict it (a pass above a fail) are flagged in ``search.json`` and ``search.md``.

Differences are called only when the search can resolve them: a strategy's threshold lies between its
chosen (passing) sparsity and its next failing probe, and two strategies whose ranges overlap are a tie
(``verdict: tie``); at the same sparsity, validation accuracies are compared with McNemar's test on the
images themselves. The resolution (points per validation image) and each strategy's training budget are
stated; ``strategy=auto`` screens every family at the same budget and keeps every candidate it cannot tell
from the ones it keeps.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from prune_cli.errors import UsageError

log = logging.getLogger("prune_cli.search")


@dataclass
class Settings:
    max_drop: float = 0.01        # largest allowed validation accuracy drop from dense (a fraction: 0.01 = 1 point)
    tolerance: float = 0.005      # stop when the pass/fail remaining fractions are this close
    min_sparsity: float = 0.5     # the lowest sparsity probed (if it fails, nothing is chosen)
    max_sparsity: float = 0.995   # the highest sparsity probed
    max_probes: int = 12          # probes per strategy, at most
    screen_epochs: int = 2        # strategy=auto: epochs after the dense stage, the same for every screened strategy
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
             "val_drop": val["dense"] - val["finetuned"], "run_dir": str(run_dir), "budget": budget_of(report)}
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
    result = {"probes": [{k: v for k, v in p.items() if not k.startswith("_") and k != "budget"} for p in probes],
              "chosen": None, "budget": probes[0]["budget"], "non_monotone": non_monotone(probes)}
    if chosen is not None:
        report = chosen["_report"]
        result["chosen"] = {"sparsity": chosen["sparsity"], "run_dir": chosen["run_dir"], "val_drop": chosen["val_drop"],
                            "val_accuracy": chosen["val_accuracy"], "test_accuracy": report["accuracy"]["finetuned"],
                            "test_dense": report["accuracy"]["dense"]}
        above = [p for p in probes if p["sparsity"] > chosen["sparsity"] and not p["within"]]
        if above:
            result["chosen"]["next_failing"] = min(p["sparsity"] for p in above)
        result["_chosen_report"] = report
    return result


def budget_of(report: dict) -> dict:
    """A run's training budget: epochs of the dense stage it starts from (0 for a model trained from scratch
    by the strategy itself) and epochs after it, and their sum: what an equal comparison holds equal."""
    after = int(report["budget"]["total_epochs"])
    phases = report["budget"]["epochs"]
    from_scratch = "compress" in phases  # the smaller-model baseline trains its own model from initialisation
    dense = 0 if from_scratch else int(((report.get("config") or {}).get("train") or {}).get("epochs", 0))
    return {"dense_epochs": dense, "epochs_after_dense": after, "total_epochs": dense + after}


def non_monotone(probes: list[dict]) -> list[dict]:
    """Pairs of probes where a higher sparsity passed and a lower one failed: accuracy did not fall
    monotonically there, so the bisection's answer near them is uncertain."""
    return [{"failed": low["sparsity"], "passed": high["sparsity"]}
            for low in probes if not low["within"]
            for high in probes if high["within"] and high["sparsity"] > low["sparsity"]]


def screening_overrides(overrides: list[str], strategy: str, epochs: int) -> list[str]:
    """The settings that give ``strategy`` exactly ``epochs`` of training after the dense stage (for the
    smaller-model baseline, which trains from scratch, train.epochs + ``epochs`` in all: the same total).
    A strategy that trains before it prunes (l1, l0: ``strategy.epochs``) spends part of them there."""
    from prune_cli.config import compose_config
    cfg = compose_config([*overrides, f"strategy={strategy}"])
    before = cfg.strategy.get("epochs")
    if before is None:
        return [f"finetune.epochs={epochs}"]
    before = min(int(before), epochs)
    if before < 1:  # no room to train before pruning: the strategy cannot be screened at this budget
        return []
    return [f"strategy.epochs={before}", f"finetune.epochs={epochs - before}"]


def screen(settings: Settings, overrides: list[str], counter: list) -> tuple[list[dict], list[str]]:
    """strategy=auto: every family at ``screen_sparsity`` with the same training budget (``screen_epochs``
    after the dense stage), ranked by validation accuracy. The best ``keep`` go on to the full search, and so
    does every candidate McNemar's test cannot tell from the last one kept (a tie is not a loss)."""
    import prune_cli
    from prune_cli.search.paired import val_correct
    from prune_cli.significance import ALPHA, mcnemar
    rows = []
    for strategy in SCREENED:
        run_dir = settings.directory / "screen" / strategy
        given = screening_overrides(overrides, strategy, settings.screen_epochs)
        if not given:
            rows.append({"strategy": strategy, "refused": f"search.screen_epochs={settings.screen_epochs} leaves "
                         f"no epoch for its training before pruning", "run_dir": str(run_dir)})
            continue
        try:
            report = prune_cli.run([*overrides, f"strategy={strategy}", f"sparsity={settings.screen_sparsity:.6f}",
                                    *given, "progress=false"], run_dir)
        except UsageError as err:  # e.g. a structured strategy that cannot reach the screening sparsity
            rows.append({"strategy": strategy, "refused": str(err), "run_dir": str(run_dir)})
            log.info("screen: %s refused: %s", strategy, err)
            continue
        counter[0] += 1
        val = report.get("val_accuracy") or {}
        if val.get("finetuned") is None:
            raise UsageError("prune-search needs a validation split: dataset.val_fraction must be above 0")
        rows.append({"strategy": strategy, "val_accuracy": val["finetuned"], "val_drop": val["dense"] - val["finetuned"],
                     "budget": budget_of(report), "settings": given, "run_dir": str(run_dir),
                     "_correct": val_correct(run_dir, report)})
        log.info("screen: %s at sparsity %.4f: validation %.2f%%", strategy, settings.screen_sparsity,
                 100 * val["finetuned"])
    measured = [r for r in rows if "val_accuracy" in r]
    totals = {r["budget"]["total_epochs"] for r in measured}
    expected = max(totals, key=lambda t: sum(r["budget"]["total_epochs"] == t for r in measured)) if totals else None
    for r in measured:  # only equal budgets are ranked (every built-in family gets one; an own one may not)
        if r["budget"]["total_epochs"] != expected:
            r["ranked"] = False
            r["verdict"] = f"not ranked: trained {r['budget']['total_epochs']} epochs, the others {expected}"
    ranked = sorted((r for r in measured if r.get("ranked", True)), key=lambda r: -r["val_accuracy"])
    kept = ranked[:settings.keep]
    for r in ranked:
        r["ranked"] = True
        if r in kept:
            r["verdict"] = "kept"
            continue
        last = kept[-1]
        if r["_correct"] is not None and last["_correct"] is not None:
            test = mcnemar(last["_correct"], r["_correct"])
            r["against"] = {"strategy": last["strategy"], **test}
            if test["p_value"] >= ALPHA:
                r["verdict"] = f"kept: a tie with {last['strategy']} (McNemar p = {test['p_value']:.2g})"
                continue
            r["verdict"] = f"dropped: below {last['strategy']} (McNemar p = {test['p_value']:.2g})"
        else:  # no paired test possible: not shown to be worse, so kept (a tie is not a loss)
            r["verdict"] = "kept: its validation results could not be re-measured for a paired test"
    names = [r["strategy"] for r in ranked if r["verdict"].startswith("kept")]
    for r in rows:
        r["kept"] = r["strategy"] in names
        r.pop("_correct", None)
    if not names:
        raise UsageError(f"search.screen_sparsity={settings.screen_sparsity}: every strategy was refused there")
    return rows, names


def check_before_probing(settings: Settings, overrides: list[str], strategies: list[str]) -> None:
    """Every strategy and value checked before the first probe (and before the search directory is made): a
    name that is an option of conf/strategy (never a path), a config that composes and plans, and a
    validation split to choose on."""
    import re
    from prune_cli.app.dry_run import make_plan
    from prune_cli.config import compose_config
    auto = strategies == ["auto"]
    names = [s for s in strategies if s != "auto"] if not auto else SCREENED
    refused = []
    for name in names:
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]*", name):
            raise UsageError(f"strategy={name}: not a strategy name (an option of conf/strategy, e.g. magnitude); "
                             f"names never become paths outside the search directory")
        cfg = compose_config([*overrides, f"strategy={name}", f"sparsity={settings.min_sparsity:.6f}"])
        if float(cfg.dataset.get("val_fraction") or 0.0) <= 0.0:
            raise UsageError(f"dataset.val_fraction={cfg.dataset.get('val_fraction')}: prune-search needs a "
                             f"validation split to choose on; use a fraction above 0 (default 0.1)")
        if auto and (cfg.schedule.name == "lottery" or cfg.schedule.get("epochs_per_round") is not None):
            raise UsageError(f"schedule={cfg.schedule.name}: strategy=auto screens every family at the same "
                             f"budget, search.screen_epochs of fine-tuning, which this schedule's own per-round "
                             f"training would not keep; screen with schedule=oneshot, iterative or gradual")
        try:
            make_plan(cfg)
        except UsageError as err:
            if not auto:
                raise
            refused.append(str(err))  # screening records the family as refused and goes on
    if auto and len(refused) == len(names):
        raise UsageError(f"strategy=auto: every family is refused here; the first: {refused[0]}")


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
    best, verdict = decide(results, settings)
    reports = [r.pop("_chosen_report", None) for r in results.values()]
    examples = _val_examples(results, reports)
    out = {"max_drop": settings.max_drop, "tolerance": settings.tolerance,
           "range": [settings.min_sparsity, settings.max_sparsity], "overrides": overrides,
           "strategies": results, "best": best, "probes_run": counter[0], **verdict,
           "resolution": {"val_images": examples, "points_per_image": 100.0 / examples if examples else None,
                          "budget_images": settings.max_drop * examples if examples else None}}
    if screening is not None:
        out["screening"] = {"sparsity": settings.screen_sparsity, "epochs_after_dense": settings.screen_epochs,
                            "keep": settings.keep, "strategies": screening,
                            "why": f"every family trained {settings.screen_epochs} epoch(s) after the dense stage "
                                   f"(l1 and l0 spend them in their own training before pruning; the smaller-model "
                                   f"baseline trains from scratch for the same total) and was ranked by validation "
                                   f"accuracy at sparsity {settings.screen_sparsity}; kept the {settings.keep} best "
                                   f"and every one McNemar's test cannot tell from the last of them "
                                   f"({', '.join(strategies)}); each was then searched fully, and the best is the one "
                                   f"reaching the highest sparsity within the budget"}
    return out


def _val_examples(results: dict, reports: list) -> Optional[int]:
    """The size of the validation split the choices were made on (from a chosen run, re-measured)."""
    from prune_cli.search.paired import val_correct
    for result, report in zip(results.values(), reports):
        if report is not None:
            hits = val_correct(Path(result["chosen"]["run_dir"]), report)
            if hits is not None:
                return len(hits)
    return None


def decide(results: dict, settings: Settings) -> tuple[Optional[dict], dict]:
    """The best strategy, and whether the search can tell it from the others (``verdict``: best | tie).

    A strategy's highest passing sparsity is only known to lie between its chosen probe and its next failing
    one (or the top of the range). The strategy reaching the highest chosen sparsity is best only if no other
    strategy's range reaches it, and the gap is more than ``search.tolerance`` of the weights remaining; the
    others are tied with it. At the same chosen sparsity the validation accuracies are compared on the images
    (McNemar), a difference it cannot tell from chance being a tie too."""
    from prune_cli.search.paired import val_correct
    from prune_cli.significance import ALPHA, mcnemar
    found = {name: r for name, r in results.items() if r["chosen"]}
    if not found:
        return None, {"verdict": None, "tied_with": [], "why": "no strategy stays within the budget"}
    order = sorted(found, key=lambda n: (-found[n]["chosen"]["sparsity"], found[n]["chosen"]["val_drop"]))
    top = found[order[0]]["chosen"]
    tied, reasons = [], []
    for name in order[1:]:
        chosen = found[name]["chosen"]
        upper = chosen.get("next_failing", settings.max_sparsity if chosen["sparsity"] >= settings.max_sparsity
                           else chosen["sparsity"])
        gap = (1 - chosen["sparsity"]) - (1 - top["sparsity"])
        if chosen["sparsity"] == top["sparsity"]:
            a = val_correct(Path(top["run_dir"]), found[order[0]].get("_chosen_report") or {})
            b = val_correct(Path(chosen["run_dir"]), found[name].get("_chosen_report") or {})
            test = mcnemar(a, b) if a is not None and b is not None else None
            if test is None or test["p_value"] >= ALPHA:
                tied.append(name)
                reasons.append(f"{name} reaches the same sparsity" + (
                    f" and McNemar cannot tell the validation accuracies apart (p = {test['p_value']:.2g})"
                    if test else ""))
        elif upper > top["sparsity"] or gap <= settings.tolerance:
            tied.append(name)
            reasons.append(f"{name}'s threshold lies between {chosen['sparsity']:.4f} and {upper:.4f}, which "
                           f"{'reaches' if upper > top['sparsity'] else 'is within search.tolerance of'} "
                           f"{top['sparsity']:.4f}")
    name = order[0]
    best = {"strategy": name, **{k: top[k] for k in ("sparsity", "val_drop", "test_accuracy", "run_dir")}}
    budgets = {n: r["budget"]["total_epochs"] for n, r in results.items()}
    why = ("; ".join(reasons) if tied else
           f"{name} reaches {top['sparsity']:.4f} and no other strategy's range comes within "
           f"search.tolerance={settings.tolerance} of it" if len(order) > 1 else f"{name} is the only strategy within the budget")
    if len(set(budgets.values())) > 1:
        why += ("; the strategies trained for different budgets (" + ", ".join(f"{n}: {b} epochs" for n, b in
                budgets.items()) + "), so this is not an equal comparison")
    return best, {"verdict": "tie" if tied else "best", "tied_with": tied, "why": why,
                  "equal_budgets": len(set(budgets.values())) <= 1}
