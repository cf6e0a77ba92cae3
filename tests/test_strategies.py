"""Every strategy end to end, and the properties that make its scores and masks trustworthy."""
import pytest
import torch
from torch import nn

from prune_cli.storage.safe_load import safe_load
from prune_cli.data.splits import TensorSplit
from prune_cli.pruning.masks import Masks, prunable_names
from prune_cli.pruning.strategies import ScoringContext
from prune_cli.pruning.strategies.activation import APoZ, Activation
from prune_cli.pruning.strategies.weight import Gradient, Magnitude
from prune_cli.pruning.units import unit_layers

FAST = ["train.epochs=2", "finetune.epochs=1", "strategy.epochs=1"]
UNSTRUCTURED = ["magnitude", "gradient", "random", "l1", "l0"]
STRUCTURED = ["activation", "apoz", "magnitude_structured"]


def strategy_overrides(name):
    if name == "magnitude_structured":
        return ["strategy=magnitude", "strategy.granularity=structured"]
    extra = [] if name in ("l1", "l0") else []
    return [f"strategy={name}", *extra]


def units_worth(report):
    """The most prunable weights one unit can carry: its row plus its column in the next layer."""
    shapes = [layer["shape"] for layer in report["layers"]]
    row = max(int(torch.tensor(s[1:]).prod()) for s in shapes)
    col = max(s[0] for s in shapes) * 25  # a conv channel feeds up to 5x5 positions of the next Linear
    return (row + col) / report["sparsity"]["prunable_weights"]


@pytest.mark.parametrize("sparsity", [0.5, 0.9])
@pytest.mark.parametrize("model", ["mlp", "lenet300", "lenet5"])
@pytest.mark.parametrize("strategy", UNSTRUCTURED + STRUCTURED + ["compress"])
def test_every_strategy_end_to_end(run_api, strategy, model, sparsity):
    overrides = strategy_overrides(strategy) + [f"model={model}", f"sparsity={sparsity}", "train.epochs=2",
                                                "finetune.epochs=1"]
    if strategy in ("l1", "l0"):
        overrides.append("strategy.epochs=1")
    report, run_dir = run_api(*overrides, name=f"{strategy}-{model}-{sparsity}", tiny=False)
    assert report["status"] == "completed"
    state = safe_load(run_dir / "pruned.pt")["state_dict"]
    names = [layer["name"] for layer in report["layers"]]
    total = sum(state[n].numel() for n in names)
    zeros = sum(int((state[n] == 0).sum()) for n in names)
    if strategy in UNSTRUCTURED:
        assert zeros == round(sparsity * total)
    elif strategy == "compress":
        dense = report["compress"]["dense_prunable_weights"]
        assert report["sparsity"]["achieved"] == 1 - total / dense
        assert abs(report["sparsity"]["achieved"] - sparsity) < 0.02
    else:
        assert abs(zeros / total - sparsity) <= units_worth(report)
        assert report["shrunk"]["matches_masked"] is True
        assert report["shrunk"]["params"] < report["params"]["total"]
        for layer in report["layers"]:
            assert layer["units_kept"][0] >= 1
    if strategy != "compress":
        assert report["sparsity"]["achieved"] == zeros / total


def tiny_context(model, train, masks=None, batch_size=16):
    names = prunable_names(model)
    example = torch.zeros(1, *train.x.shape[1:])
    return ScoringContext(model=model, masks=masks or Masks.ones(model, names), train=train, prunable=names,
                          device=torch.device("cpu"), seed=0, round=1, batch_size=batch_size,
                          unit_layers=unit_layers(model, example))


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def data(n=32):
    g = torch.Generator().manual_seed(0)
    return TensorSplit(torch.rand(n, 1, 2, 2, generator=g), torch.randint(0, 3, (n,), generator=g))


def test_magnitude_scores_are_absolute_weights():
    model = mlp()
    scores = Magnitude().score(tiny_context(model, data()))
    assert torch.equal(scores["1.weight"], model[1].weight.detach().abs())


def test_structured_magnitude_is_l1_norm_of_each_unit():
    model = mlp()
    scores = Magnitude(granularity="structured").score(tiny_context(model, data()))
    assert torch.allclose(scores["1"], model[1].weight.detach().abs().sum(dim=1))
    assert "5" not in scores  # the classifier keeps all its outputs


def test_gradient_scores_use_training_data_only():
    model = mlp()
    train = data()
    scores = Gradient(batches=2).score(tiny_context(model, train, batch_size=8))
    # Recompute by hand on exactly the batches the context hands out (training data, seed-determined).
    ctx = tiny_context(model, train, batch_size=8)
    expected = torch.zeros_like(model[1].weight)
    for x, y in ctx.calibration_batches(2):
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        expected += (model[1].weight * model[1].weight.grad).abs().detach()
    assert torch.allclose(scores["1.weight"], expected)
    # Different training data -> different scores: the scores really come from the split they are given.
    other = Gradient(batches=2).score(tiny_context(model, data(n=40), batch_size=8))
    assert not torch.allclose(other["1.weight"], scores["1.weight"])


def test_activation_and_apoz_score_units_by_what_they_fire():
    model = mlp()
    with torch.no_grad():
        model[1].bias[:] = 0
        model[1].weight[0] = -1.0   # unit 0 never fires on inputs in [0, 1]
        model[1].weight[1] = 5.0    # unit 1 always fires strongly
    ctx = tiny_context(model, data())
    act = Activation(batches=4).score(ctx)["1"]
    apoz = APoZ(batches=4).score(ctx)["1"]
    assert act[0] == 0 and act.argmax() == 1
    assert apoz[0] == 0 and apoz[1] == 1  # score = 1 - fraction of zeros


def test_structured_masks_are_whole_units(run_api):
    report, run_dir = run_api("strategy=activation", "sparsity=0.7", "model=lenet5")
    ckpt = safe_load(run_dir / "pruned.pt")
    for name, mask in ckpt["masks"].items():
        if name.endswith(".weight") and mask.dim() >= 2:
            rows = mask.flatten(1)
            full_or_empty = rows.all(dim=1) | ~rows.any(dim=1)
            cols = mask.flatten(2).any(dim=2) if mask.dim() > 2 else mask
            # Every row is all kept or all removed, except for input columns zeroed for removed upstream units.
            kept_cols = cols.any(dim=0)
            assert bool((rows[:, :][:, kept_cols.repeat_interleave(rows.shape[1] // cols.shape[1])].all(dim=1)
                         | ~rows.any(dim=1)).all()), name
    classifier = [layer for layer in report["layers"]][-1]
    assert classifier["units_kept"][0] == classifier["units_kept"][1]


def test_shrunk_checkpoint_matches_the_masked_model(run_api):
    import prune_cli
    _, run_dir = run_api("strategy=apoz", "sparsity=0.6", "model=lenet300", "model.hidden=[40,20]")
    masked = prune_cli.load_checkpoint(run_dir / "pruned.pt")
    small = prune_cli.load_checkpoint(run_dir / "pruned.pt", shrunk=True)
    x = torch.rand(64, 1, 8, 8)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in masked.parameters())
    assert torch.allclose(masked(x), small(x), atol=1e-5)


def test_l0_projection_keeps_target_and_l1_penalty_shrinks_weights(run_api):
    plain, _ = run_api("strategy=magnitude", "sparsity=0.8", name="plain")
    l1, _ = run_api("strategy=l1", "strategy.l1=1e-3", "strategy.epochs=2", "sparsity=0.8", name="l1")
    l0, _ = run_api("strategy=l0", "strategy.epochs=2", "sparsity=0.8", name="l0")
    for r in (l1, l0):
        assert r["sparsity"]["zeros"] == plain["sparsity"]["zeros"]
    assert "l1" in l1["timings"] and "l0" in l0["timings"]


def test_compress_trains_a_genuinely_smaller_model(run_api):
    import prune_cli
    report, run_dir = run_api("strategy=compress", "sparsity=0.75", "strategy.distill=true")
    model = prune_cli.load_checkpoint(run_dir / "pruned.pt")
    hidden = model.layers[1].out_features
    assert hidden < 256 and report["compress"]["width"] == pytest.approx(hidden / 256, abs=0.01)
    assert report["accuracy"]["pruned"] is None
    assert report["speedup"]["method"] == "smaller model (compress)"
