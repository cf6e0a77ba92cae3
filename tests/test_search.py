"""prune-search: bisection on the weights remaining, choices on validation data, probes as run directories."""
from __future__ import annotations

import json

import pytest

import prune_cli
from prune_cli.search import main
from prune_cli.training.evaluate import evaluate

RUN = ["device=cpu", "model=lenet300", "train.epochs=3", "finetune.epochs=2", "measure.latency=false"]


def test_search_finds_the_boundary_on_validation_data_and_resumes(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PRUNE_CLI_CACHE", str(tmp_path / "cache"))
    args = [*RUN, "strategy=magnitude", "search.max_drop=0.02", "search.tolerance=0.05", f"search.dir={tmp_path / 's'}"]
    assert main(args) == 0
    result = json.loads((tmp_path / "s" / "search.json").read_text())
    probes, chosen = result["strategies"]["magnitude"]["probes"], result["strategies"]["magnitude"]["chosen"]
    assert [p["sparsity"] for p in probes][:2] == [0.5, 0.995]
    # The chosen probe is within the budget, the next one above it is not, and they are within the tolerance.
    assert chosen["val_drop"] <= 0.02 < next(p["val_drop"] for p in probes if p["sparsity"] == chosen["next_failing"])
    assert (1 - chosen["sparsity"]) - (1 - chosen["next_failing"]) <= 0.05
    assert all(p["within"] == (p["val_drop"] <= 0.02) for p in probes)
    # Test accuracy only for the chosen run, and it is what its pruned.pt gives on the test split.
    assert all("test_accuracy" not in p for p in probes)
    model = prune_cli.load_checkpoint(f"{chosen['run_dir']}/pruned.pt")
    from omegaconf import OmegaConf
    from prune_cli.data import load_dataset
    test = load_dataset(OmegaConf.create({"name": "digits", "test_fraction": 0.2, "split_seed": 0,
                                          "val_fraction": 0.1})).test
    assert evaluate(model, test) == chosen["test_accuracy"]
    # The dense model was trained once, then reused by every probe.
    reports = [json.loads(open(f"{p['run_dir']}/report.json").read()) for p in probes]
    assert [r["cache"]["dense"] for r in reports] == ["computed"] + ["reused"] * (len(reports) - 1)
    assert len(list((tmp_path / "cache").glob("dense-*.pt"))) == 1
    assert result["best"]["strategy"] == "magnitude" and (tmp_path / "s" / "search.png").stat().st_size > 0
    assert result["verdict"] == "best" and result["resolution"] == {
        "val_images": 144, "points_per_image": 100 / 144, "budget_images": 0.02 * 144}
    assert result["strategies"]["magnitude"]["budget"] == {"dense_epochs": 3, "epochs_after_dense": 2,
                                                           "total_epochs": 5}
    assert "| magnitude |" in (tmp_path / "s" / "search.md").read_text()
    # Killed and started again: finished probes are read back, not rerun.
    stamps = {p["run_dir"]: (tmp_path / p["run_dir"] / "pruned.pt").stat().st_mtime_ns for p in probes}
    assert main(args) == 0
    assert json.loads((tmp_path / "s" / "search.json").read_text())["strategies"] == result["strategies"]
    assert stamps == {p["run_dir"]: (tmp_path / p["run_dir"] / "pruned.pt").stat().st_mtime_ns for p in probes}


@pytest.mark.parametrize("args, message", [
    (["sparsity=0.9"], "prune-search chooses the sparsity"),
    (["search.max_drop=abc"], "search.max_drop=abc: must be a float in [0.0, 1.0]"),
    (["search.colour=red"], "search.colour=red: unknown search setting"),
    (["search.min_sparsity=0.9", "search.max_sparsity=0.8"], "must be below search.max_sparsity"),
    (["dataset.val_fraction=0.0"], "needs a validation split"),
    (["strategy=magnitude,nope"], "strategy=nope: no such option; strategy is one of activation, apoz,"),
    (["strategy=magnitude,gradnt"], "strategy=gradnt: no such option; did you mean gradient?"),
    (["strategy=../strategy/magnitude"], "strategy=../strategy/magnitude: not a strategy name"),
    (["strategy=magnitude,activation", "strategy.scope=nowhere"], "strategy.scope='nowhere': must be one of"),
    (["strategy=auto", "schedule=lottery"], "schedule=lottery: strategy=auto screens every family at the same budget"),
])
def test_bad_search_input_is_one_line_exit_2(tmp_path, capsys, args, message):
    """Refused before the first probe: within seconds, and no search directory is made."""
    import time
    started = time.monotonic()
    assert main([*RUN, *args, f"search.dir={tmp_path / 's'}"]) == 2
    assert time.monotonic() - started < 5
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("prune-search: ") and message in err[0], err
    assert not (tmp_path / "s").exists() and not (tmp_path / "strategy").exists()


def test_auto_screens_every_family_keeps_the_best_and_says_why(tmp_path, monkeypatch):
    from prune_cli.search.run import SCREENED
    monkeypatch.setenv("PRUNE_CLI_CACHE", str(tmp_path / "cache"))
    assert main(["model=lenet300", "train.epochs=2", "finetune.epochs=1", "measure.latency=false", "strategy=auto",
                 "search.screen_epochs=1", "search.keep=1", "search.tolerance=0.2",
                 f"search.dir={tmp_path / 's'}"]) == 0
    result = json.loads((tmp_path / "s" / "search.json").read_text())
    screened = result["screening"]["strategies"]
    assert [row["strategy"] for row in screened] == list(SCREENED)
    ranked = sorted((r for r in screened if r.get("ranked")), key=lambda r: -r["val_accuracy"])
    # Equal budgets: 2 dense epochs + 1 after them for every family (l1 and l0 spend theirs before pruning,
    # compress trains from scratch for the same 3).
    assert {r["budget"]["total_epochs"] for r in screened if "budget" in r} == {3}
    assert next(r for r in screened if r["strategy"] == "l1")["settings"] == ["strategy.epochs=1", "finetune.epochs=0"]
    assert ranked[0]["verdict"] == "kept"
    for row in ranked[1:]:  # the others are kept exactly when McNemar cannot tell them from the best one
        assert row["against"]["strategy"] == ranked[0]["strategy"]
        assert row["kept"] == (row["against"]["p_value"] >= 0.05), row
    kept = [r["strategy"] for r in ranked if r["kept"]]
    assert list(result["strategies"]) == kept and len(kept) >= 1
    text = (tmp_path / "s" / "search.md").read_text()
    assert "## Choosing the strategy (strategy=auto)" in text and "kept the 1 best and every one McNemar" in text
    assert result["resolution"]["val_images"] == 144 and result["verdict"] in ("best", "tie")
    assert "Resolution: 144 validation images, so one image is 0.69 points" in text


def test_help_says_what_it_does(capsys):
    from prune_cli.sensitivity import main as sensitivity_main
    assert main(["--help"]) == 0 and "prune-search" in capsys.readouterr().out
    assert sensitivity_main(["-h"]) == 0 and "prune-sensitivity" in capsys.readouterr().out


def test_help_lists_every_search_setting_with_its_default_as_plain_text(capsys):
    import dataclasses
    from prune_cli.search.run import FIELDS, Settings
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "``" not in out
    defaults = {f.name: f.default for f in dataclasses.fields(Settings)}
    for key in FIELDS:
        line = next(line for line in out.splitlines() if line.strip().startswith(f"search.{key} "))
        assert line.split()[1] == repr(defaults[key]) and len(line.split()) > 2, line
    assert "search.dir" in out


def _result(sparsity, next_failing=None, val_drop=0.005):
    chosen = {"sparsity": sparsity, "val_drop": val_drop, "test_accuracy": 0.9, "run_dir": "x"}
    if next_failing is not None:
        chosen["next_failing"] = next_failing
    return {"chosen": chosen, "budget": {"total_epochs": 12}, "probes": []}


def test_a_winner_inside_the_searchs_own_resolution_is_a_tie():
    from prune_cli.search.run import Settings, decide
    settings = Settings(tolerance=0.005)
    # The case: gradient at 0.9111 over magnitude at 0.9078 is a gap of 0.0033 < the tolerance.
    best, verdict = decide({"magnitude": _result(0.9078, 0.9111), "gradient": _result(0.9111, 0.9144)}, settings)
    assert best["strategy"] == "gradient" and verdict["verdict"] == "tie" and verdict["tied_with"] == ["magnitude"]
    # Magnitude's failing probe lies above gradient's pass: the two ranges overlap, whatever the gap.
    best, verdict = decide({"magnitude": _result(0.85, 0.95), "gradient": _result(0.9111, 0.92)}, settings)
    assert verdict["verdict"] == "tie" and "between 0.8500 and 0.9500" in verdict["why"]
    # Separated by more than the tolerance, and magnitude's range ends below gradient's pass.
    best, verdict = decide({"magnitude": _result(0.80, 0.82), "gradient": _result(0.9111, 0.92)}, settings)
    assert (best["strategy"], verdict["verdict"], verdict["tied_with"]) == ("gradient", "best", [])
    assert verdict["equal_budgets"]


def test_probes_that_contradict_monotone_accuracy_are_flagged():
    from prune_cli.search.run import non_monotone
    probes = [{"sparsity": 0.5, "within": True}, {"sparsity": 0.9, "within": False},
              {"sparsity": 0.8, "within": False}, {"sparsity": 0.85, "within": True}]
    assert non_monotone(probes) == [{"failed": 0.8, "passed": 0.85}]


def test_mcnemar_counts_the_discordant_images_and_calls_a_tie():
    import torch
    from prune_cli.significance import mcnemar, paired_interval
    a = torch.tensor([1, 1, 1, 1, 0, 0, 1, 1], dtype=torch.bool)
    b = torch.tensor([1, 0, 0, 0, 0, 1, 1, 1], dtype=torch.bool)
    test = mcnemar(a, b)
    # 3 images only A gets right, 1 only B: two-sided exact binomial p = 2 * P(X >= 3 | n=4, 1/2) = 0.625.
    assert (test["a_only"], test["b_only"], test["examples"]) == (3, 1, 8)
    assert test["p_value"] == pytest.approx(0.625) and test["difference"] == pytest.approx(2 / 8)
    interval = paired_interval([0.01, 0.02, 0.03])
    # mean 0.02, sd 0.01, t(0.975, 2) = 4.302653: half-width 0.024841
    assert interval["mean"] == pytest.approx(0.02) and interval["high"] - 0.02 == pytest.approx(0.0248414, abs=1e-6)
    assert interval["tie"] and not paired_interval([0.10, 0.11, 0.12])["tie"]
