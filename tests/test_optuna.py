"""Hydra's Optuna sweeper over prune-run: the task returns the configured objective, on validation data."""
from __future__ import annotations

import importlib.util
import json
import math

import pytest
import yaml

from conftest import run_in_process
from prune_cli.objectives import objective_value

pytestmark = pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None,
                                reason="hydra-optuna-sweeper not installed (pip install 'prune-cli[optuna]')")


def test_a_three_trial_study_maximises_sparsity_within_the_budget(tmp_path, capsys, monkeypatch):
    sweep = tmp_path / "study"
    code, _, err = run_in_process(["-m", "+hparams_search=optuna_lenet300", "hydra.sweeper.n_trials=3",
                                   "train.epochs=2", "measure.latency=false", f"hydra.sweep.dir={sweep}",
                                   f"cache.dir={tmp_path / 'cache'}"], capsys, monkeypatch, tmp_path)
    assert code == 0, err
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    reports = [json.loads(p.read_text()) for p in sweep.glob("*/report.json")]
    assert len(reports) == 3 and all(r["status"] == "completed" for r in reports)
    values = [objective_value(r, "sparsity_at_budget", 0.01) for r in reports]
    assert best["best_value"] == pytest.approx(max(values))
    winner = reports[values.index(max(values))]
    assert best["best_params"]["sparsity"] == pytest.approx(winner["sparsity"]["target"])


def test_objectives_read_validation_numbers_only():
    report = {"status": "completed", "sparsity": {"achieved": 0.9},
              "val_accuracy": {"dense": 0.97, "finetuned": 0.965}, "accuracy": {"dense": 0.5, "finetuned": 0.1}}
    assert objective_value(report, "val_accuracy") == 0.965
    assert objective_value(report, "sparsity_at_budget", 0.01) == 0.9
    assert objective_value(report, "sparsity_at_budget", 0.001) == pytest.approx(-0.004)
    assert math.isnan(objective_value({"status": "failed"}, "val_accuracy"))
    assert math.isnan(objective_value(None, "val_accuracy"))
