"""Pruning with quantization and distillation: the int8 model reloads and reproduces its accuracy, its zeros
survive, every model of the compression table is measured; distillation learns from the dense teacher."""
from __future__ import annotations

import pytest
import torch

import prune_cli
from prune_cli.errors import UsageError
from prune_cli.measure.quantized import zero_counts
from prune_cli.storage.safe_load import safe_load
from prune_cli.training.evaluate import evaluate

FAST = ["train.epochs=2", "finetune.epochs=1", "progress=false", "measure.latency_budget_s=0.02"]


def _test_split(report):
    from omegaconf import OmegaConf
    from prune_cli.data import load_dataset
    return load_dataset(OmegaConf.create({"name": "digits", "test_fraction": 0.2, "split_seed": 0,
                                          "val_fraction": 0.0})).test


def test_int8_dynamic_reloads_keeps_zeros_and_is_smaller(tmp_path):
    report = prune_cli.run([*FAST, "device=cpu", "model=lenet300", "strategy=magnitude", "sparsity=0.9",
                            "quantize=int8_dynamic"], tmp_path / "run")
    assert [row["model"] for row in report["compression"]] == ["dense", "pruned", "quantized (int8_dynamic)"]
    assert all(set(row["latency_ms"]) == {"batch_1_ms", "batch_256_ms"} for row in report["compression"])
    quantized = report["quantized"]
    import torchao
    assert quantized["library"] == f"torchao {torchao.__version__}"
    assert quantized["int8_weights"] == ["layers.1.weight", "layers.3.weight", "layers.5.weight"]
    # The file is plain data: it loads with weights_only=True (torchao registers its int8 tensor types).
    payload = torch.load(tmp_path / "run" / "quantized.pt", weights_only=True)
    assert type(payload["quantized"]["state_dict"]["layers.1.weight"]).__name__ == "Int8Tensor"
    model = prune_cli.load_checkpoint(tmp_path / "run" / "quantized.pt", quantized=True)
    assert evaluate(model, _test_split(report)) == quantized["accuracy"]
    prunable = [layer["name"] for layer in report["layers"]]
    zeros, total = zero_counts(model, prunable)
    assert total == report["sparsity"]["prunable_weights"]
    assert zeros == quantized["prunable_int8_zeros"] >= report["sparsity"]["zeros"]  # symmetric int8 keeps 0
    assert (tmp_path / "run" / "quantized.pt").stat().st_size < (tmp_path / "run" / "pruned.pt").stat().st_size
    assert report["compression"][2]["bytes"]["quantized"] == (tmp_path / "run" / "quantized.pt").stat().st_size
    assert "## Compression: what each step bought" in (tmp_path / "run" / "report.md").read_text()
    assert f"Quantized (int8_dynamic, torchao {torchao.__version__})" in (tmp_path / "run" / "report.md").read_text()
    with pytest.raises(UsageError, match="not a quantized checkpoint"):
        prune_cli.load_checkpoint(tmp_path / "run" / "pruned.pt", quantized=True)


def test_int8_weight_only_keeps_the_convs_float_beside_the_shrunk_model(tmp_path):
    report = prune_cli.run([*FAST, "device=cpu", "model=lenet5", "strategy=activation", "sparsity=0.5",
                            "quantize=int8_weight_only"], tmp_path / "run")
    assert [row["model"] for row in report["compression"]] == ["dense", "pruned", "shrunk",
                                                               "quantized (int8_weight_only)"]
    int8 = set(report["quantized"]["int8_weights"])
    convs = {layer["name"] for layer in report["layers"]} - int8
    assert convs == {"features.0.weight", "features.3.weight"}
    assert sorted(report["quantized"]["kept_float"]) == sorted(
        f"{name} (kept float: torchao's int8 covers Linear layers only)" for name in convs)
    model = prune_cli.load_checkpoint(tmp_path / "run" / "quantized.pt", quantized=True)
    assert evaluate(model, _test_split(report)) == report["quantized"]["accuracy"]
    # Whole units removed stay removed in int8: every zero of the pruned Linear weights is a zero of the int8 ones.
    state = safe_load(tmp_path / "run" / "pruned.pt")["state_dict"]
    zeros, _ = zero_counts(model, int8)
    assert zeros >= sum(int((state[name] == 0).sum()) for name in int8)


def test_distillation_from_itself_with_alpha_1_changes_nothing(tmp_path):
    """At sparsity 0 the student is the teacher: the distillation loss is zero and its gradient zero up to
    rounding, so SGD (lr 0.01) with alpha=1 leaves the weights where they were (to 1e-6), while cross-entropy (alpha=0)
    moves them. (Adam would not do: it scales rounding-level gradients up to full steps.)"""
    common = [*FAST, "model=lenet300", "sparsity=0.0", "finetune.epochs=2", "finetune.distill=true",
              "finetune.optimizer=sgd", "finetune.momentum=0.0", "finetune.lr=0.01", f"cache.dir={tmp_path / 'c'}"]
    kept = prune_cli.run([*common, "finetune.alpha=1.0"], tmp_path / "kd")
    moved = prune_cli.run([*common, "finetune.alpha=0.0"], tmp_path / "ce")
    assert kept["distillation"] == {"teacher": "the dense model", "temperature": 4.0, "alpha": 1.0}
    assert kept["accuracy"]["finetuned"] == kept["accuracy"]["dense"]
    dense = torch.load(next((tmp_path / "c").glob("dense-*.pt")), weights_only=True)["trained"]
    change = lambda run: max(float((safe_load(tmp_path / run / "pruned.pt")["state_dict"][k] - dense[k]).abs().max())
                             for k in dense)
    assert change("kd") < 1e-6 < 1e-3 < change("ce")
    assert moved["accuracy"]["dense"] == kept["accuracy"]["dense"]


@pytest.mark.parametrize("overrides", [["strategy=activation", "schedule=iterative", "schedule.rounds=2",
                                        "finetune.epochs=2"],
                                       ["strategy=l1", "strategy.epochs=1", "schedule=gradual"],
                                       ["strategy=compress"],
                                       ["schedule=lottery", "schedule.rounds=2", "schedule.reinit=true"]],
                         ids=["structured-iterative", "l1-gradual", "compress", "lottery-control"])
def test_distillation_runs_with_every_family_and_schedule(tmp_path, overrides):
    report = prune_cli.run([*FAST, "model=lenet300", "sparsity=0.8", "finetune.distill=true",
                            "measure.latency=false", *overrides], tmp_path / "run")
    assert report["status"] == "completed" and report["distillation"]["alpha"] == 0.5


def test_int8_static_is_refused_with_the_reason(tmp_path):
    with pytest.raises(UsageError, match="quantize=int8_static: not available: torchao's int8 tensors have no "
                                         "convolution kernel"):
        prune_cli.run([*FAST, "quantize=int8_static"], tmp_path / "a")
    assert not (tmp_path / "a").exists()
