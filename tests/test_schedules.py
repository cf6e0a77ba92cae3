"""Schedules: targets, the gradual formula, masks that only shrink, lottery rewinding, and composition."""
import pytest
import torch

from prune_cli.masks import Masks
from prune_cli.pipeline import Experiment
from prune_cli.schedules import Gradual, Iterative, Lottery, OneShot

STRATEGIES = ["magnitude", "gradient", "random", "activation", "apoz", "l1", "l0", "compress"]
SCHEDULES = ["oneshot", "iterative", "gradual", "lottery"]


@pytest.mark.parametrize("schedule", [OneShot(), Iterative(rounds=5), Iterative(rounds=3, spacing="linear"),
                                      Lottery(rounds=7)])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.98])
def test_targets_are_monotone_and_end_exactly_at_sparsity(schedule, sparsity):
    targets = schedule.targets(sparsity)
    assert targets[-1] == sparsity
    assert all(a <= b for a, b in zip(targets, targets[1:]))
    assert all(0 <= t < 1 for t in targets)


def test_geometric_rounds_remove_the_same_fraction_of_what_remains():
    targets = Iterative(rounds=4).targets(1 - 0.8 ** 4)
    remaining = [1 - t for t in [0.0] + targets]
    ratios = [b / a for a, b in zip(remaining, remaining[1:])]
    assert ratios == pytest.approx([0.8] * 4)


def test_fine_tune_epochs_are_split_over_rounds():
    assert Iterative(rounds=3).epochs_per_round(10, 3) == [4, 3, 3]
    assert Iterative(rounds=3, epochs_per_round=5).epochs_per_round(10, 3) == [5, 5, 5]


def test_gradual_formula_matches_zhu_and_gupta():
    schedule = Gradual(frequency=10, start=0.1, end=0.6, initial_sparsity=0.0)
    steps = schedule.pruning_steps(200)
    assert steps[0] == 20 and steps[-1] == 120 and steps == list(range(20, 121, 10))
    t0, n_dt = 20, 100
    for t in steps:
        expected = 0.9 + (0.0 - 0.9) * (1 - (t - t0) / n_dt) ** 3
        assert schedule.sparsity_at(t, 0.9, 200) == pytest.approx(expected)
    assert schedule.sparsity_at(120, 0.9, 200) == 0.9


def test_gradual_run_prunes_on_schedule(run_api):
    report, _ = run_api("schedule=gradual", "schedule.frequency=7", "sparsity=0.9", "finetune.epochs=3")
    steps_per_epoch = -(-1437 // 64)
    total = 3 * steps_per_epoch
    schedule = Gradual(frequency=7, start=0.0, end=0.7)
    expected_steps = schedule.pruning_steps(total)
    n = report["sparsity"]["prunable_weights"]
    assert [r["step"] for r in report["rounds"]] == expected_steps
    for r in report["rounds"]:
        assert r["target"] == pytest.approx(schedule.sparsity_at(r["step"], 0.9, total))
        assert r["sparsity"] == round(r["target"] * n) / n
    assert report["rounds"][-1]["target"] == 0.9
    assert report["sparsity"]["zeros"] == round(0.9 * n)


def capture_masks(monkeypatch):
    seen = []
    original = Experiment._prune_to

    def spy(self, target, ctx):
        masks = original(self, target, ctx)
        seen.append({k: v.detach().clone() for k, v in masks.items()})
        return masks
    monkeypatch.setattr(Experiment, "_prune_to", spy)
    return seen


@pytest.mark.parametrize("strategy", ["magnitude", "gradient", "activation"])
@pytest.mark.parametrize("schedule", ["iterative", "gradual", "lottery"])
def test_masks_only_shrink_across_rounds(run_api, monkeypatch, strategy, schedule):
    seen = capture_masks(monkeypatch)
    overrides = [f"strategy={strategy}", f"schedule={schedule}", "sparsity=0.9", "finetune.epochs=3"]
    if schedule != "gradual":
        overrides.append("schedule.rounds=3")
    report, _ = run_api(*overrides)
    assert len(seen) == len(report["rounds"]) >= 3
    for before, after in zip(seen, seen[1:]):
        for name, mask in before.items():
            assert bool((after[name] <= mask).all()), name
    sparsities = [r["sparsity"] for r in report["rounds"]]
    assert sparsities == sorted(sparsities)


@pytest.mark.parametrize("rewind_epoch", [0, 2])
def test_lottery_rewinds_survivors_to_their_initial_values(run_api, monkeypatch, rewind_epoch):
    snapshots = {}
    original_rewind = Experiment._rewind

    def spy(self, index):
        original_rewind(self, index)
        snapshots[index] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        snapshots["masks"] = Masks({k: v.clone() for k, v in self.masks.items()})
        snapshots["reference"] = self.state.extra["rewind"]
    monkeypatch.setattr(Experiment, "_rewind", spy)
    original_fit = Experiment._train_dense_now

    def record_initial(self, epoch):
        snapshots["initial"] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return original_fit(self, epoch)
    monkeypatch.setattr(Experiment, "_train_dense_now", record_initial)

    run_api("schedule=lottery", "schedule.rounds=2", f"schedule.rewind_epoch={rewind_epoch}", "sparsity=0.8",
            "cache.enabled=false", "train.epochs=3", "finetune.epochs=2")
    masks, reference = snapshots["masks"], snapshots["reference"]
    if rewind_epoch == 0:
        for k in reference:
            assert torch.equal(reference[k], snapshots["initial"][k])
    state = snapshots[2]
    for name, value in state.items():
        expected = reference[name] * masks[name] if name in masks else reference[name]
        assert torch.equal(value, expected), name
    # Survivors really were trained away from the reference before being rewound.
    assert not torch.equal(snapshots[1]["layers.1.weight"], snapshots[2]["layers.1.weight"])


def test_lottery_reinit_draws_fresh_weights(run_api, monkeypatch):
    snapshots = []
    original_rewind = Experiment._rewind

    def spy(self, index):
        original_rewind(self, index)
        snapshots.append((self.state.extra["rewind"], {k: v.clone() for k, v in self.model.state_dict().items()},
                          self.masks))
    monkeypatch.setattr(Experiment, "_rewind", spy)
    run_api("schedule=lottery", "schedule.rounds=2", "schedule.reinit=true", "sparsity=0.5")
    initial, state, masks = snapshots[0]
    weight = "layers.1.weight"
    survivors = masks[weight].bool()
    assert not torch.equal(state[weight][survivors], initial[weight][survivors])
    assert bool((state[weight][~survivors] == 0).all())


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_schedule_composes_with_every_strategy(run_api, strategy, schedule):
    overrides = [f"strategy={strategy}", f"schedule={schedule}", "sparsity=0.8", "train.epochs=1",
                 "finetune.epochs=2", "model.hidden=[32]", "measure.latency_budget_s=0.01"]
    if schedule in ("iterative", "lottery"):
        overrides.append("schedule.rounds=2")
    if strategy in ("l1", "l0"):
        overrides.append("strategy.epochs=1")
    report, _ = run_api(*overrides, tiny=False)
    assert report["status"] == "completed"
    assert report["sparsity"]["target"] == 0.8
    assert abs(report["sparsity"]["achieved"] - 0.8) < 0.05
    assert report["rounds"] and report["rounds"][-1]["accuracy"] is not None
