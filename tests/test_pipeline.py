"""End-to-end behaviour of one run, checked against what the saved files hold."""
import pytest
import torch

import prune_cli
from prune_cli.storage.safe_load import safe_load
from prune_cli.data import load_dataset
from prune_cli.training.evaluate import evaluate

from conftest import read_report


def saved(run_dir):
    return safe_load(run_dir / "pruned.pt")


def prunable_zero_fraction(state_dict, names):
    zeros = sum(int((state_dict[n] == 0).sum()) for n in names)
    return zeros / sum(state_dict[n].numel() for n in names)


def test_default_run_prunes_exactly_and_reports_honestly(run_api):
    report, run_dir = run_api("strategy=magnitude", "sparsity=0.9")
    assert report == read_report(run_dir)
    assert report["status"] == "completed" and "error" not in report
    ckpt = saved(run_dir)
    names = [layer["name"] for layer in report["layers"]]
    total = report["sparsity"]["prunable_weights"]
    # Exact top-k: round(0.9 * n) zeros, counted from the saved weights.
    zeros = sum(int((ckpt["state_dict"][n] == 0).sum()) for n in names)
    assert zeros == round(0.9 * total) == report["sparsity"]["zeros"]
    assert report["sparsity"]["achieved"] == pytest.approx(zeros / total, abs=0)
    assert report["params"]["nonzero"] == sum(int((v != 0).sum()) for k, v in ckpt["state_dict"].items()
                                              if not k.startswith("normalize."))
    for key in ("dense", "pruned", "finetuned"):
        assert 0.0 <= report["accuracy"][key] <= 1.0
    assert set(report["timings"]) >= {"train", "score", "prune", "finetune", "total"}
    assert report["rounds"][0]["target"] == 0.9


def test_masked_weights_stay_zero_through_finetuning(run_api):
    report, run_dir = run_api("sparsity=0.8", "finetune.optimizer=sgd", "finetune.lr=0.05",
                              "finetune.weight_decay=1e-3")
    ckpt = saved(run_dir)
    for name, mask in ckpt["masks"].items():
        weight = ckpt["state_dict"][name]
        assert mask.dtype == torch.bool
        assert bool((weight[~mask] == 0).all()), name
    # Fine-tuning really moved the surviving weights (the test would pass vacuously otherwise).
    assert report["accuracy"]["finetuned"] != report["accuracy"]["pruned"]


def test_reloaded_checkpoint_reproduces_reported_accuracy(run_api):
    report, run_dir = run_api("sparsity=0.7", "model=lenet300", "model.hidden=[40,20]")
    model = prune_cli.load_checkpoint(run_dir / "pruned.pt")
    assert not model.training
    ckpt = saved(run_dir)
    data = load_dataset(prune_cli.config.compose_config(["dataset=digits"]).dataset)
    assert evaluate(model, data.test) == report["accuracy"]["finetuned"]
    assert ckpt["model"]["target"] == "prune_cli.models.MLP"
    assert ckpt["config"]["sparsity"] == 0.7 and ckpt["report"]["status"] == "completed"
    # Plain containers only: loadable with weights_only=True (safe_load) and self-contained inputs in [0, 1].
    logits = model(torch.rand(5, 1, 8, 8))
    assert logits.shape == (5, 10)


@pytest.mark.parametrize("model", ["mlp", "lenet300", "lenet5"])
@pytest.mark.parametrize("strategy", ["magnitude", "random"])
def test_models_and_baseline_strategies(run_api, model, strategy):
    overrides = [f"model={model}", f"strategy={strategy}", "sparsity=0.5", "train.epochs=1", "finetune.epochs=1"]
    if model != "lenet5":
        overrides.append("model.hidden=[24,12]")
    report, run_dir = run_api(*overrides, name=f"{model}-{strategy}", tiny=False)
    assert report["experiment"]["model"] == model
    assert report["sparsity"]["zeros"] == round(0.5 * report["sparsity"]["prunable_weights"])


def test_layer_scope_prunes_each_layer_to_the_target(run_api):
    report, _ = run_api("strategy.scope=layer", "sparsity=0.75")
    for layer in report["layers"]:
        n = 1
        for s in layer["shape"]:
            n *= s
        assert layer["sparsity"] == round(0.75 * n) / n


def test_classifier_can_be_excluded(run_api):
    report, run_dir = run_api("strategy.prune_classifier=false", "sparsity=0.6")
    names = [layer["name"] for layer in report["layers"]]
    assert names == ["layers.1.weight"]
    assert bool((saved(run_dir)["state_dict"]["layers.3.weight"] != 0).all())
    assert "classifier excluded" in report["sparsity"]["prunable"]


def test_synthetic_dataset_of_any_shape(run_api):
    report, run_dir = run_api("dataset=synthetic", "dataset.shape=[3,12,10]", "dataset.num_classes=4",
                              "dataset.train_size=200", "dataset.test_size=80", "model=lenet5", "sparsity=0.5",
                              "train.epochs=15")
    ckpt = saved(run_dir)
    assert ckpt["model"]["kwargs"]["input_shape"] == [3, 12, 10]
    assert ckpt["model"]["kwargs"]["num_classes"] == 4
    assert report["accuracy"]["dense"] > 0.5  # learnable: well above the 25% of chance


def test_zero_sparsity_keeps_every_weight(run_api):
    report, _ = run_api("sparsity=0.0")
    assert report["sparsity"]["zeros"] == 0


def test_same_seed_same_result_different_seed_different(run_api):
    a, dir_a = run_api("seed=3", name="a")
    b, dir_b = run_api("seed=3", name="b")
    c, _ = run_api("seed=4", name="c")
    strip = lambda r: {k: r[k] for k in ("accuracy", "sparsity", "layers", "params")}
    assert strip(a) == strip(b)
    sa, sb = saved(dir_a)["state_dict"], saved(dir_b)["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert strip(a) != strip(c)


def test_report_markdown_matches_json(run_api):
    report, run_dir = run_api("sparsity=0.9")
    text = (run_dir / "report.md").read_text()
    assert f"{100 * report['accuracy']['finetuned']:.2f}%" in text
    assert f"{100 * report['sparsity']['achieved']:.2f}%" in text
    assert "| layers.1.weight |" in text


def test_sparse_export_is_timed_and_layer_collapse_is_flagged(run_api):
    import prune_cli
    report, run_dir = run_api("sparsity=0.97", "model.hidden=[512]", "export.sparse=true")
    info = report["export"]["sparse"]
    assert info["sparse_layers"] and info["dense_ms"]["batch_256_ms"] > 0 and info["sparse_ms"]["batch_1_ms"] > 0
    assert ("sparse" in report["latency"]) == info["used"]
    model = prune_cli.load_checkpoint(run_dir / "pruned.pt")
    sparse = prune_cli.load_checkpoint(run_dir / "pruned.pt", sparse=True)
    x = torch.rand(32, 1, 8, 8)
    assert torch.allclose(model(x), sparse(x), atol=1e-5)
    collapsed = [layer["name"] for layer in report["layers"] if layer["sparsity"] == 1.0]
    assert [w.split(" ")[0] for w in report.get("warnings", [])] == collapsed


def test_cost_fields_are_measured(run_api):
    report, run_dir = run_api("sparsity=0.5", "model.hidden=[100]")
    # Multiply-adds of a 64-100-10 MLP, by hand; half the weights zero halves them.
    assert report["flops"]["dense"] == 64 * 100 + 100 * 10
    assert report["flops"]["nonzero"] == pytest.approx(report["flops"]["dense"] / 2, abs=1)
    for model in ("dense", "masked"):
        for key in ("batch_1_ms", "batch_256_ms"):
            assert report["latency"][model][key] > 0
    assert report["size_bytes"]["checkpoint"] == (run_dir / "pruned.pt").stat().st_size
    assert report["size_bytes"]["sparse"] < report["size_bytes"]["dense"]
    assert report["speedup"]["method"] == "none"
    # Ratios named as ratios: dense latency over the masked model's, per batch size.
    latency = report["latency"]
    assert report["speedup"]["measured"] == {
        f"batch_{n}": latency["dense"][f"batch_{n}_ms"] / latency["masked"][f"batch_{n}_ms"] for n in (1, 256)}


def test_latency_is_timed_at_the_batch_sizes_asked_for(run_api):
    report, run_dir = run_api("sparsity=0.5", "model.hidden=[100]", "measure.batch_sizes=[1,32]")
    assert all(set(entry) == {"batch_1_ms", "batch_32_ms"} for entry in report["latency"].values())
    assert set(report["speedup"]["measured"]) == {"batch_1", "batch_32"}
    import torch
    if not torch.cuda.is_available() or report["experiment"]["device"] == "cpu":
        assert report["latency_cuda_graph"] == {}  # CUDA graphs exist on a GPU only
    # report.md says which timing each figure is, at the batch sizes timed.
    text = (run_dir / "report.md").read_text()
    for name, latency in report["latency"].items():
        assert (f"| latency {name} (eager) | batch 1: {latency['batch_1_ms']:.3f} ms, "
                f"batch 32: {latency['batch_32_ms']:.3f} ms |") in text


def test_the_report_names_each_timing_and_keeps_the_kernels_note():
    """CUDA-graph latencies and speed-ups beside the eager ones; a 2:4 note that the sparse kernel is slower
    stays beside the ratios it explains; the compression table has a column per batch size timed."""
    from prune_cli.report.render import compression_lines, speedup_lines
    speedup = {"method": "shrunk model", "measured": {"batch_1": 0.92, "batch_64": 1.5},
               "measured_cuda_graph": {"batch_1": 1.8, "batch_64": 2.04}, "cuda_graph_of": "shrunk"}
    assert speedup_lines(speedup) == [
        ("measured speed-up (shrunk model, eager)", "batch 1: 0.92x, batch 64: 1.50x"),
        ("measured speed-up as CUDA graphs (shrunk model)", "batch 1: 1.80x, batch 64: 2.04x")]
    slower = {"method": "semi-structured sparse kernel (2:4, float16)", "measured": {"batch_1": 0.11},
              "note": "the semi-structured kernel is slower than dense float16 at batch_1"}
    assert speedup_lines(slower)[-1] == ("speed-up note", slower["note"])
    assert speedup_lines({"method": "none", "measured": {}, "note": "no GPU"}) == [("measured speed-up", "none: no GPU")]
    row = {"model": "dense", "accuracy": 0.9, "val_accuracy": 0.8, "params_nonzero": 10, "bytes": {"dense": 40},
           "latency_ms": {"batch_1_ms": 0.5, "batch_64_ms": 2.0}}
    assert compression_lines({"compression": [row, dict(row, model="shrunk", latency_ms=None)]}) == [
        "| model | test acc. | val acc. | non-zero params | bytes (dense) | bytes (sparse) | bytes (int8) | "
        "ms batch 1 | ms batch 64 |", "|---|---|---|---|---|---|---|---|---|",
        "| dense | 90.00% | 80.00% | 10 | 40 | - | - | 0.500 | 2.000 |",
        "| shrunk | 90.00% | 80.00% | 10 | 40 | - | - | - | - |"]


def test_first_round_scores_are_shared_across_sparsities(run_api, tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNE_CLI_CACHE", str(tmp_path / "cache"))  # its own: other tests score the same
    a, _ = run_api("strategy=activation", "sparsity=0.5", name="a")
    b, _ = run_api("strategy=activation", "sparsity=0.7", name="b")
    fresh, _ = run_api("strategy=activation", "sparsity=0.7", "cache.enabled=false", name="fresh")
    assert a["cache"]["scores"] == "computed" and b["cache"]["scores"] == "reused"
    assert "scores" not in fresh["cache"]
    assert b["layers"] == fresh["layers"] and b["accuracy"] == fresh["accuracy"]


def test_scores_are_not_shared_with_gradual_or_other_batch_sizes(run_api):
    gradual, _ = run_api("strategy=gradient", "schedule=gradual", "sparsity=0.5", name="gradual")
    assert "scores" not in gradual["cache"]
    small, _ = run_api("strategy=gradient", "sparsity=0.5", "finetune.batch_size=16", name="small")
    large, _ = run_api("strategy=gradient", "sparsity=0.5", "finetune.batch_size=256", name="large")
    assert small["cache"]["scores"] == large["cache"]["scores"] == "computed"


def test_validation_split_is_evaluated_and_reported(run_api):
    report, run_dir = run_api("dataset.val_fraction=0.1", "sparsity=0.8")
    data = load_dataset(prune_cli.config.compose_config(["dataset.val_fraction=0.1"]).dataset)
    assert (len(data.train), len(data.val), len(data.test)) == (1293, 144, 360)  # 10% of 1,437, rounded up
    model = prune_cli.load_checkpoint(run_dir / "pruned.pt")
    assert report["val_accuracy"]["finetuned"] == evaluate(model, data.val)
    assert report["accuracy"]["finetuned"] == evaluate(model, data.test)
    assert set(report["val_accuracy"]) == {"dense", "pruned", "finetuned"}
    assert all(0.0 <= v <= 1.0 for v in report["val_accuracy"].values())
    assert report["rounds"][0]["val_accuracy"] == report["val_accuracy"]["finetuned"]


def test_no_validation_split_no_val_accuracy(run_api):
    report, _ = run_api("sparsity=0.5")
    assert "val_accuracy" not in report and "val_accuracy" not in report["rounds"][0]


@pytest.mark.parametrize("overrides,epochs", [
    (["finetune.epochs=2"], {"finetune": 2}),
    (["finetune.epochs=0"], {}),
    (["strategy=l1", "strategy.epochs=1", "finetune.epochs=2"], {"l1": 1, "finetune": 2}),
    (["strategy=l0", "strategy.epochs=3", "schedule=gradual", "finetune.epochs=2"], {"l0": 3, "finetune": 2}),
    (["schedule=iterative", "schedule.rounds=3", "finetune.epochs=4"], {"finetune": 4}),
    (["schedule=iterative", "schedule.rounds=3", "schedule.epochs_per_round=2"], {"finetune": 6}),
    (["strategy=compress", "train.epochs=3", "finetune.epochs=2"], {"compress": 5}),
])
def test_every_report_shows_the_training_budget_after_the_dense_stage(run_api, overrides, epochs):
    report, _ = run_api(*overrides, "measure.latency=false")
    assert report["budget"] == {"epochs": epochs, "total_epochs": sum(epochs.values())}


def test_layer_sparsity_sets_some_layers_and_the_rest_reaches_the_target(run_api):
    report, _ = run_api("model=lenet300", "sparsity=0.9", "strategy.layer_sparsity={layers.5.weight:0.5}",
                        "schedule=iterative", "schedule.rounds=2")
    layers = {layer["name"]: layer for layer in report["layers"]}
    assert layers["layers.5.weight"]["sparsity"] == 0.5                     # exactly, at the end
    assert report["sparsity"]["zeros"] == round(0.9 * report["sparsity"]["prunable_weights"])
    assert report["strategy"]["layer_sparsity"] == {"layers.5.weight": 0.5}


@pytest.mark.parametrize("overrides,message", [
    (["strategy.layer_sparsity={fc9.weight:0.5}"], "strategy.layer_sparsity: fc9.weight is not a prunable weight "
                                                   "of this model; they are layers.1.weight, layers.3.weight"),
    (["strategy=activation", "sparsity=0.5", "strategy.layer_sparsity={layers.1.weight:0.5}"],
     "strategy.layer_sparsity: strategy=activation does not take per-layer rates"),
    (["strategy=l0", "strategy.layer_sparsity={layers.1.weight:0.5}"],
     "strategy.layer_sparsity: strategy=l0 does not take per-layer rates"),
    (["schedule=lottery", "schedule.classifier_rate=0.0", "sparsity=0.99"],
     "sparsity=0.99: schedule=lottery can reach at most 0.864865 (schedule.classifier_rate=0 leaves the output "
     "layer dense)"),
    (["sparsity=0.1", "strategy.layer_sparsity={layers.1.weight:0.9}"],
     "strategy.layer_sparsity: cannot reach sparsity=0.1: the given layers alone zero 14,746 weights, more than "
     "the 1,894 it allows"),
    (["sparsity=0.99", "strategy.layer_sparsity={layers.1.weight:0.5}"],
     "strategy.layer_sparsity: cannot reach sparsity=0.99: the other layers would need 10,563 zeros of their "
     "2,560 weights"),
    (["strategy.layer_sparsity={layers.1.weight:1.5}"], "strategy.layer_sparsity={'layers.1.weight': 1.5}: must be"),
])
def test_bad_layer_sparsity_is_one_line(run_api, overrides, message):
    with pytest.raises(prune_cli.errors.UsageError) as err:
        run_api(*overrides)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
