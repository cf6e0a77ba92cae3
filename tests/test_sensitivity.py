"""prune-sensitivity: each layer pruned alone, exactly; rates derived from the curves reach the target exactly."""
from __future__ import annotations

import json

import pytest

import prune_cli
from prune_cli.errors import UsageError
from prune_cli.pruning.allocation import allocate
from prune_cli.sensitivity import main
from prune_cli.storage.safe_load import safe_load

RUN = ["device=cpu", "model=mlp", "train.epochs=2", "measure.latency=false"]


def test_each_layer_alone_then_rates_from_the_curves(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNE_CLI_CACHE", str(tmp_path / "cache"))
    assert main([*RUN, "sensitivity.sparsities=[0.5,0.9]", f"sensitivity.dir={tmp_path / 's'}"]) == 0
    result = json.loads((tmp_path / "s" / "sensitivity.json").read_text())
    assert list(result["layers"]) == ["layers.1.weight", "layers.3.weight"]
    assert all(list(points) == ["0.5", "0.9"] for points in result["layers"].values())
    # The probe of one layer zeroes round(s * n) of its weights and nothing anywhere else.
    state = safe_load(tmp_path / "s" / "layers.1.weight" / "sparsity_0.9000" / "pruned.pt")["state_dict"]
    assert int((state["layers.1.weight"] == 0).sum()) == round(0.9 * 256 * 64)
    assert int((state["layers.3.weight"] == 0).sum()) == 0
    report = prune_cli.run([*RUN, "sparsity=0.8", "dataset.val_fraction=0.1", "finetune.epochs=1",
                            f"strategy.layer_sparsity=from_sensitivity:{tmp_path / 's' / 'sensitivity.json'}"],
                           tmp_path / "use")
    assert report["sparsity"]["zeros"] == round(0.8 * report["sparsity"]["prunable_weights"])
    assert report["strategy"]["layer_sparsity_source"].startswith("from_sensitivity:")
    rates = report["strategy"]["layer_sparsity"]
    assert {layer["name"]: layer["sparsity"] for layer in report["layers"]} == pytest.approx(rates, abs=1e-12)


def test_allocate_gives_the_robust_layer_more_and_sums_exactly():
    curves = {"dense_val_accuracy": 0.9,
              "layers": {"a": {"0.5": 0.9, "0.9": 0.89}, "b": {"0.5": 0.85, "0.9": 0.5}}}
    rates = allocate(curves, {"a": 100, "b": 300}, 0.6)
    assert rates["a"] > rates["b"]
    assert round(rates["a"] * 100) + round(rates["b"] * 300) == round(0.6 * 400)
    with pytest.raises(UsageError, match="the measured curves reach at most 0.9000"):
        allocate(curves, {"a": 100, "b": 300}, 0.95)
    with pytest.raises(UsageError, match="no curve for c"):
        allocate(curves, {"a": 100, "c": 300}, 0.5)


def test_bad_sensitivity_input_is_one_line(tmp_path, capsys):
    assert main([*RUN, "sensitivity.sparsities=[1.5]"]) == 2
    assert "must be a list of fractions in (0, 1)" in capsys.readouterr().err
    with pytest.raises(UsageError, match="from_sensitivity:nowhere.json: cannot be read"):
        prune_cli.run([*RUN, "strategy.layer_sparsity=from_sensitivity:nowhere.json"], tmp_path / "x")
