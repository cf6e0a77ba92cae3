"""Schedules: targets, the gradual formula, masks that only shrink, lottery rewinding, and composition."""
import math

import pytest
import torch

from omegaconf import OmegaConf

from prune_cli.pipeline.experiment import Experiment
from prune_cli.storage.safe_load import safe_load
from prune_cli.errors import UsageError
from prune_cli.pruning.schedules import Gradual, Iterative, Lottery, OneShot

from prune_cli.config import compose_config  # noqa: E402

from conftest import check_sparsity, options  # noqa: E402

# Every option in conf/: a new strategy or schedule is covered without editing this file.
STRATEGIES = options("strategy")
SCHEDULES = options("schedule")


LENET = {"fc1.weight": (300, 784), "fc2.weight": (100, 300), "head.weight": (10, 100)}


def _fitted(model="lenet300", shapes=None, sets_rates=False, **options):
    schedule = Lottery(**options)
    schedule.fit(model, shapes or LENET, "head.weight", sets_rates)
    return schedule


@pytest.mark.parametrize("schedule", [OneShot(), Iterative(rounds=5), Iterative(rounds=3, spacing="linear"),
                                      _fitted(rounds=7), _fitted(), _fitted("resnet20")])
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
    assert Iterative(rounds=3).epochs_per_round(10, 3, 20) == [4, 3, 3]
    assert Iterative(rounds=3, epochs_per_round=5).epochs_per_round(10, 3, 20) == [5, 5, 5]


def test_lottery_retrains_for_the_full_training_length_every_round():
    assert Lottery(rounds=3).epochs_per_round(10, 3, 20) == [20, 20, 20]
    assert Lottery(rounds=3, epochs_per_round=4).epochs_per_round(10, 3, 20) == [4, 4, 4]


def test_lottery_follows_frankle_and_carbin_layer_by_layer():
    schedule = _fitted()
    targets = schedule.targets(0.9)
    # 20% of each hidden layer's remaining weights per round and 10% of the output layer's: after 10 such
    # rounds 89.17% of LeNet-300-100 is gone, so the 10th round takes a little more and lands on 0.9.
    assert len(targets) == 10 and targets[-1] == 0.9
    sizes = {name: math.prod(shape) for name, shape in LENET.items()}
    for i, target in enumerate(targets[:-1], start=1):
        rates = schedule.layer_rates(target, None, None)
        assert rates == pytest.approx({"fc1.weight": 1 - 0.8 ** i, "fc2.weight": 1 - 0.8 ** i,
                                       "head.weight": 1 - 0.9 ** i}, abs=1e-12)
        assert sum(rates[n] * sizes[n] for n in sizes) == pytest.approx(target * sum(sizes.values()), abs=1e-6)
    last = schedule.layer_rates(0.9, None, None)
    assert sum(last[n] * sizes[n] for n in sizes) == pytest.approx(0.9 * sum(sizes.values()), abs=1e-6)
    assert schedule.describe()["protocol"] == "layerwise"


def test_lottery_convolutions_of_conv2_to_conv6_lose_the_papers_rate():
    shapes = {"conv1.weight": (64, 3, 3, 3), "fc1.weight": (256, 1024), "head.weight": (10, 256)}
    for model, conv in (("conv2", 0.1), ("conv4", 0.1), ("conv6", 0.15)):
        rates = _fitted(model, shapes).describe()["layer_rates"]
        assert rates == pytest.approx({"conv1.weight": conv, "fc1.weight": 0.2, "head.weight": 0.1})
    assert _fitted("conv2", shapes, conv_rate=0.3).describe()["layer_rates"]["conv1.weight"] == 0.3


def test_lottery_ranks_deep_nets_globally_and_leaves_allocation_to_strategies_that_set_it():
    schedule = _fitted("resnet20")
    assert schedule.describe()["protocol"] == "global"
    targets = schedule.targets(0.9)
    # Only the output layer has its own rate; the rest, ranked together, share what is left of the total.
    assert schedule.layer_rates(targets[0], None, None) == pytest.approx({"head.weight": 0.1})
    totals = _fitted(sets_rates=True)
    assert totals.describe()["protocol"] == "totals" and totals.layer_rates(0.5, None, None) is None
    with pytest.raises(UsageError, match="schedule.protocol=layerwise: the strategy sets every layer's rate"):
        _fitted(sets_rates=True, protocol="layerwise")


def test_lottery_with_a_fixed_number_of_rounds_spaces_them_equally():
    schedule = _fitted(rounds=4)
    targets = schedule.targets(0.9)
    assert len(targets) == 4 and targets[-1] == 0.9
    kept = [1 - schedule.layer_rates(t, None, None)["fc1.weight"] for t in targets]
    per_round = [kept[0]] + [b / a for a, b in zip(kept, kept[1:])]
    assert per_round == pytest.approx([per_round[0]] * 4)  # the same fraction of what is left, every round


def test_lottery_refuses_a_target_its_dense_output_layer_cannot_allow():
    with pytest.raises(UsageError, match=r"sparsity=0.999: schedule=lottery can reach at most 0.99624"):
        _fitted(classifier_rate=0.0).targets(0.999)
    with pytest.raises(UsageError, match=r"^schedule.rate_per_round=1e-06: reaching sparsity=0.9 would take more "
                                         r"than 10,000 rounds; use a larger rate$"):
        _fitted(rate_per_round=1e-6).targets(0.9)


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


def run_experiment(tmp_path, *overrides):
    """An Experiment run in this process; its record keeps every round's masks."""
    from conftest import TINY
    from prune_cli.config import compose_config
    cfg = compose_config([*TINY, *overrides])
    OmegaConf.resolve(cfg)
    experiment = Experiment(cfg, tmp_path / "run", keep_round_masks=True)
    report = experiment.run()
    return experiment, report


@pytest.mark.parametrize("strategy", ["magnitude", "gradient", "activation"])
@pytest.mark.parametrize("schedule", ["iterative", "gradual", "lottery"])
def test_masks_only_shrink_across_rounds(tmp_path, strategy, schedule):
    overrides = [f"strategy={strategy}", f"schedule={schedule}", "sparsity=0.9", "finetune.epochs=3"]
    if schedule != "gradual":
        overrides.append("schedule.rounds=3")
    experiment, report = run_experiment(tmp_path, *overrides)
    masks = [r.masks for r in experiment.record.rounds]
    assert len(masks) == len(report["rounds"]) >= 3
    for before, after in zip(masks, masks[1:]):
        assert set(after) >= set(before)
        for name, mask in before.items():
            assert bool((after[name] <= mask).all()), name
    zeros = [sum(int((~m).sum()) for m in round_masks.values()) for round_masks in masks]
    assert zeros[-1] > zeros[0]  # the rounds really pruned further (structured steps may repeat a count)
    saved = safe_load(tmp_path / "run" / "pruned.pt")["masks"]
    assert all(torch.equal(saved[name], mask) for name, mask in masks[-1].items())
    sparsities = [r["sparsity"] for r in report["rounds"]]
    assert sparsities == sorted(sparsities)


def initial_weights(*overrides):
    """The weights a run starts from: the model built right after seeding with the run's seed."""
    from prune_cli.config import compose_config, plain
    from prune_cli.data import load_dataset
    from prune_cli.models import build_for
    cfg = compose_config(list(overrides))
    data = load_dataset(cfg.dataset)
    torch.manual_seed(int(cfg.seed))
    return build_for(plain(cfg.model), data.info)[0].state_dict()


@pytest.mark.parametrize("rewind_epoch", [0, 2])
def test_lottery_rewinds_survivors_to_their_reference_values(run_api, rewind_epoch):
    # One round and no retraining: what is saved is exactly the rewound ticket.
    # protocol=totals: the same allocation as the one-shot run it is compared with (global magnitude).
    _, ticket_dir = run_api("schedule=lottery", "schedule.rounds=1", "schedule.protocol=totals",
                            f"schedule.rewind_epoch={rewind_epoch}",
                            "schedule.epochs_per_round=0", "sparsity=0.8", "train.epochs=3", "finetune.epochs=0",
                            name="ticket")
    _, pruned_dir = run_api("sparsity=0.8", "train.epochs=3", "finetune.epochs=0", name="pruned")
    if rewind_epoch == 0:
        reference = initial_weights()
    else:  # weights after epoch 2 of dense training: a 2-epoch run (shuffles depend only on seed and epoch)
        _, early_dir = run_api("sparsity=0.0", "train.epochs=2", "finetune.epochs=0", name="early")
        reference = safe_load(early_dir / "pruned.pt")["state_dict"]
    ticket, pruned = safe_load(ticket_dir / "pruned.pt"), safe_load(pruned_dir / "pruned.pt")
    masks = ticket["masks"]
    assert {k: torch.equal(v, pruned["masks"][k]) for k, v in masks.items()} == {k: True for k in masks}
    for name, value in ticket["state_dict"].items():
        expected = reference[name] * masks[name] if name in masks else reference[name]
        assert torch.equal(value, expected), name
    # Not the trained weights: rewinding really replaced them.
    assert not torch.equal(ticket["state_dict"]["layers.1.weight"], pruned["state_dict"]["layers.1.weight"])


def test_the_random_reinit_control_trains_the_tickets_own_masks_from_fresh_weights(run_api):
    common = ["schedule=lottery", "schedule.rounds=2", "sparsity=0.8", "train.epochs=2", "measure.latency=false"]
    ticket, ticket_dir = run_api(*common, name="ticket")
    control, control_dir = run_api(*common, "schedule.reinit=true", name="control")
    a, b = safe_load(ticket_dir / "pruned.pt"), safe_load(control_dir / "pruned.pt")
    assert a["masks"].keys() == b["masks"].keys()
    assert all(torch.equal(a["masks"][k], b["masks"][k]) for k in a["masks"])  # same masks ...
    weight = "layers.1.weight"
    kept = b["masks"][weight]
    assert not torch.equal(a["state_dict"][weight][kept], b["state_dict"][weight][kept])  # ... new weights
    assert bool((b["state_dict"][weight][~kept] == 0).all())
    assert control["rounds"] == [dict(r, seconds=c["seconds"]) for r, c in zip(ticket["rounds"], control["rounds"])]
    # Every round retrains for train.epochs; the control is one extra training of that length.
    assert ticket["budget"]["epochs"] == {"finetune": 4}
    assert control["budget"]["epochs"] == {"finetune": 4, "control": 2}
    assert control["sparsity"] == ticket["sparsity"]


def test_lottery_run_follows_the_papers_protocol_round_by_round(run_api):
    report, _ = run_api("schedule=lottery", "sparsity=0.9", "train.epochs=1", "model=lenet300", "measure.latency=false")
    layers = {layer["name"]: math.prod(layer["shape"]) for layer in report["layers"]}
    head = "layers.5.weight"
    rounds = report["rounds"]
    # On digits LeNet-300-100's first layer has 64 inputs, so the output layer weighs more: 10.53 rounds of the
    # paper's rates reach 0.9; the 11th round takes the remaining half round.
    assert len(rounds) == 11 and report["schedule"]["protocol"] == "layerwise"
    for entry in rounds[:-1]:  # each hidden layer keeps 0.8^i of its weights, the output layer 0.9^i
        i = entry["round"]
        for name, size in layers.items():
            expected = 1 - (0.9 if name == head else 0.8) ** i
            assert abs(entry["layers"][name] - expected) * size < 1, (i, name)
    assert report["sparsity"]["zeros"] == round(0.9 * report["sparsity"]["prunable_weights"])  # exactly on target
    assert rounds[-1]["layers"] == {layer["name"]: layer["sparsity"] for layer in report["layers"]}


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_schedule_composes_with_every_strategy(run_api, strategy, schedule):
    overrides = [f"strategy={strategy}", f"schedule={schedule}", "sparsity=0.8", "train.epochs=1",
                 "finetune.epochs=2", "model.hidden=[32]", "measure.latency_budget_s=0.01"]
    options = compose_config(overrides)
    if "rounds" in options.schedule:
        overrides.append("schedule.rounds=2")
    if "epochs" in options.strategy:
        overrides.append("strategy.epochs=1")
    report, run_dir = run_api(*overrides, tiny=False)
    assert report["status"] == "completed"
    assert report["sparsity"]["target"] == 0.8
    check_sparsity(report, run_dir, overrides)
    assert report["rounds"] and report["rounds"][-1]["accuracy"] is not None


@pytest.mark.parametrize("schedule, moment", [
    ("oneshot", "after the last prune, before its fine-tuning"),
    ("lottery", "after the last prune, before rewinding and retraining"),
    ("gradual", "at the last prune step, during the fine-tuning"),
])
def test_the_report_names_the_moment_of_its_pruned_accuracy(run_api, schedule, moment):
    extra = ["schedule.rounds=2"] if schedule == "lottery" else []
    report, _ = run_api(f"schedule={schedule}", *extra, name=schedule)
    assert report["accuracy"]["pruned_at"] == moment
