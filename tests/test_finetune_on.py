"""finetune.on: a structured result fine-tunes its physically smaller model; the report says which form each
fine-tune stage trained, and the run (masks, rounds, resume, pruned.pt) sees the same model either way."""
import pytest
import torch

from prune_cli.storage.safe_load import safe_load
from conftest import stopped_after_the_first_finetune_epoch

STRUCTURED = ["device=cpu", "model=lenet300", "strategy=magnitude", "strategy.granularity=structured", "sparsity=0.5",
              "measure.latency=false"]


def _weights(run_dir):
    return safe_load(run_dir / "pruned.pt")["state_dict"]


def test_shrunk_and_masked_finetuning_train_the_same_function(run_api):
    shrunk, shrunk_dir = run_api(*STRUCTURED, name="shrunk")
    masked, masked_dir = run_api(*STRUCTURED, "finetune.on=masked", name="masked")
    assert shrunk["finetuned_on"] == [{"stage": "round1.finetune", "on": "shrunk", "params": shrunk["params"]["shrunk"]}]
    assert masked["finetuned_on"] == [{"stage": "round1.finetune", "on": "masked", "params": masked["params"]["total"],
                                       "why": "finetune.on=masked"}]
    assert shrunk["params"]["shrunk"] < shrunk["params"]["total"] == masked["params"]["total"]
    # Same masks, and the same weights up to float summation order (the zeros a masked layer adds are exact).
    assert shrunk["accuracy"] == masked["accuracy"] and shrunk["sparsity"] == masked["sparsity"]
    a, b = _weights(shrunk_dir), _weights(masked_dir)
    masks = safe_load(shrunk_dir / "pruned.pt")["masks"]
    assert max(float((a[k] - b[k]).abs().max()) for k in masks) < 1e-5
    assert all(bool((a[k][m == 0] == 0).all()) for k, m in masks.items())
    assert shrunk["shrunk"]["matches_masked"] and shrunk["timings"]["shrink"] > 0
    checkpoint = safe_load(shrunk_dir / "pruned.pt")  # both forms
    assert checkpoint["shrunk"]["state_dict"]["layers.1.weight"].shape[0] < a["layers.1.weight"].shape[0]


def test_every_round_trains_the_model_its_prune_left(run_api):
    report, _ = run_api(*STRUCTURED, "schedule=iterative", "schedule.rounds=2", "sparsity=0.6")
    stages = report["finetuned_on"]
    assert [(s["stage"], s["on"]) for s in stages] == [("round1.finetune", "shrunk"), ("round2.finetune", "shrunk")]
    assert stages[0]["params"] > stages[1]["params"] == report["params"]["shrunk"]
    assert report["rounds"][0]["sparsity"] < report["rounds"][1]["sparsity"] and report["shrunk"]["matches_masked"]


@pytest.mark.parametrize("overrides,stage,why", [
    (["strategy=magnitude"], "round1.finetune", "unstructured masks keep every unit"),
    ([*STRUCTURED, "schedule=gradual"], "gradual.finetune", "gradual pruning prunes during the fine-tuning"),
], ids=["unstructured", "gradual"])
def test_the_report_says_why_the_masked_model_was_trained(run_api, overrides, stage, why):
    report, _ = run_api(*overrides, "measure.latency=false")
    assert report["finetuned_on"] == [{"stage": stage, "on": "masked", "params": report["params"]["total"], "why": why}]


def test_a_stopped_shrunk_finetune_resumes_to_the_same_result(run_api, tmp_path, monkeypatch):
    """The state saved mid-stage holds the full-size weights (the small model's written back) and the small
    model's optimizer state; the resumed stage shrinks the same way, so the optimizer state fits and the run
    ends where an uninterrupted one does."""
    args = [*STRUCTURED, "finetune.epochs=3"]
    whole, whole_dir = run_api(*args, name="whole")
    with stopped_after_the_first_finetune_epoch(monkeypatch):
        run_api(*args, name="stopped")
    state = safe_load(tmp_path / "stopped" / "state.pt")
    assert state["position"]["stage"] == "round1.finetune" and state["position"]["epoch"] == 1
    full_rows = _weights(whole_dir)["layers.1.weight"].shape[0]
    assert state["model"]["layers.1.weight"].shape[0] == full_rows
    moments = [s["exp_avg"] for s in state["position"]["optimizer"]["state"].values()]
    assert moments[0].shape[0] == whole["shrunk"]["units_kept"]["layers.1"][0] < full_rows

    resumed, resumed_dir = run_api(*args, name="stopped")
    assert resumed["resumed_from"] == {"stage": "round1.finetune", "epoch": 1}
    assert resumed["finetuned_on"] == whole["finetuned_on"] and resumed["accuracy"] == whole["accuracy"]
    a, b = _weights(whole_dir), _weights(resumed_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(resumed["history"]) == len(whole["history"])


def test_a_run_stopped_while_fine_tuning_masked_resumes_on_the_shrunk_model(run_api, tmp_path, monkeypatch):
    """finetune.on is not part of the run's identity (both forms train the same function): a run stopped under
    finetune.on=masked resumes under shrunk; the saved optimizer state, made for the full-size parameters,
    does not fit the small model and is started afresh instead of crashing the step."""
    from prune_cli.config import compose_config, fingerprint
    assert fingerprint(compose_config(["finetune.on=masked"])) == fingerprint(compose_config([]))
    args = [*STRUCTURED, "finetune.epochs=3"]
    with stopped_after_the_first_finetune_epoch(monkeypatch):
        run_api(*args, "finetune.on=masked", name="run")
    resumed, _ = run_api(*args, name="run")
    assert resumed["status"] == "completed" and resumed["resumed_from"] == {"stage": "round1.finetune", "epoch": 1}
    assert resumed["finetuned_on"] == [{"stage": "round1.finetune", "on": "shrunk", "params": resumed["params"]["shrunk"],
                                        "note": "epochs 1-1 trained the masked model before the run was resumed"}]
    assert resumed["shrunk"]["matches_masked"]


def test_optimizer_state_fits_only_the_shapes_it_was_saved_for():
    from prune_cli.pipeline.experiment import _fits
    big, small = torch.nn.Linear(8, 4), torch.nn.Linear(8, 2)
    optimizer = torch.optim.Adam(big.parameters())
    big(torch.rand(3, 8)).sum().backward()
    optimizer.step()
    assert _fits(optimizer.state_dict(), big) and not _fits(optimizer.state_dict(), small)


def test_counting_the_dense_model_leaves_the_random_stream_alone():
    from prune_cli.pipeline.experiment import _dense_macs, _macs
    _macs.clear()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    before = torch.get_rng_state()
    assert _dense_macs({"target": "x", "kwargs": {}}, model, (1, 8, 8)) == 640
    assert torch.equal(torch.get_rng_state(), before)
