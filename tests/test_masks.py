import pytest
import torch
from torch import nn

from prune_cli.pruning.masks import Masks, classifier_name, prunable_names, topk_masks
from prune_cli.pruning.sparsity import model_sparsity, weight_sparsity


def toy():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(8, 6), nn.ReLU(), nn.Conv1d(1, 1, 1), nn.Linear(6, 3))


def test_prunable_names_are_linear_and_conv_weights_in_order():
    model = toy()
    assert prunable_names(model) == ["1.weight", "3.weight", "4.weight"]
    assert classifier_name(model) == "4"
    assert prunable_names(model, include_classifier=False) == ["1.weight", "3.weight"]


def test_global_topk_zeroes_exactly_the_lowest_scores():
    scores = {"a": torch.tensor([[5.0, 1.0], [3.0, 7.0]]), "b": torch.tensor([2.0, 8.0, 4.0, 6.0])}
    masks = topk_masks(scores, 0.5, "global")
    # The four lowest of {5,1,3,7,2,8,4,6} are 1,2,3,4.
    assert masks["a"].tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert masks["b"].tolist() == [0.0, 1.0, 0.0, 1.0]


def test_layer_scope_prunes_each_tensor_by_the_same_fraction():
    scores = {"a": torch.arange(10.0), "b": torch.arange(100.0, 90.0, -1)}
    masks = topk_masks(scores, 0.3, "layer")
    assert masks["a"].tolist() == [0, 0, 0] + [1] * 7
    assert masks["b"].tolist() == [1] * 7 + [0, 0, 0]


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.9, 0.99])
def test_counts_are_exact_and_ties_broken_by_position(sparsity):
    scores = {"a": torch.zeros(37), "b": torch.zeros(63)}  # all tied
    masks = topk_masks(scores, sparsity, "global")
    zeros = weight_sparsity(masks, ["a", "b"])[1]
    assert zeros == round(sparsity * 100)
    flat = torch.cat([masks["a"], masks["b"]])
    assert flat[:zeros].sum() == 0 and flat[zeros:].min() == 1  # the first positions go first
    assert torch.equal(flat, torch.cat(list(topk_masks(scores, sparsity, "global").values())))


def test_previous_masks_only_shrink():
    torch.manual_seed(1)
    scores = {"a": torch.rand(50)}
    first = topk_masks(scores, 0.4, "global")
    rescored = {"a": torch.rand(50)}  # new scores may rank old survivors low, old pruned weights high
    second = topk_masks(rescored, 0.6, "global", previous=first)
    assert bool((second["a"] <= first["a"]).all())
    assert weight_sparsity(second, ["a"])[1] == 30


def test_apply_and_sparsity_count_from_weights():
    model = toy()
    names = prunable_names(model)
    params = dict(model.named_parameters())
    masks = topk_masks({n: params[n].abs() for n in names}, 0.5, "global")
    masks.validate(model).apply_(model)
    fraction, zeros, total = model_sparsity(model, names)
    assert total == 8 * 6 + 1 + 6 * 3 and zeros == round(0.5 * total)


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5])
def test_topk_rejects_bad_sparsity(bad):
    with pytest.raises(ValueError, match="sparsity"):
        topk_masks({"a": torch.rand(4)}, bad)


def test_validate_rejects_wrong_shapes_names_and_values():
    model = toy()
    with pytest.raises(ValueError, match="unknown parameter"):
        Masks({"nope.weight": torch.ones(1)}).validate(model)
    with pytest.raises(ValueError, match="shape"):
        Masks({"1.weight": torch.ones(3)}).validate(model)
    with pytest.raises(ValueError, match="0 and 1"):
        Masks({"1.weight": torch.full((6, 8), 0.5)}).validate(model)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_layer_rates_set_some_layers_and_the_rest_reach_the_exact_total(scope):
    torch.manual_seed(0)
    scores = {"a": torch.rand(100), "b": torch.rand(300), "head": torch.rand(40)}
    masks = topk_masks(scores, 0.8, scope, layer_rates={"head": 0.4})
    zeros = {n: int((m == 0).sum()) for n, m in masks.items()}
    assert zeros["head"] == 16                                   # round(0.4 * 40), exactly
    assert sum(zeros.values()) == round(0.8 * 440) == 352        # the total is still exact
    if scope == "layer":                                         # the others share the rest evenly
        share = (352 - 16) / 400
        assert (zeros["a"], zeros["b"]) == (round(share * 100), round(share * 300))
    else:                                                        # ... or globally, by score
        rest = torch.cat([scores["a"], scores["b"]])
        assert zeros["a"] + zeros["b"] == 336
        assert float(rest[torch.cat([masks["a"], masks["b"]]) == 0].max()) <= \
            float(rest[torch.cat([masks["a"], masks["b"]]) == 1].min())


def test_layer_rates_that_cannot_be_completed_are_refused():
    with pytest.raises(ValueError, match="cannot be completed"):
        topk_masks({"a": torch.rand(10), "b": torch.rand(10)}, 0.1, "global", layer_rates={"a": 0.9})


def test_own_rates_for_every_layer_meet_the_total_exactly_over_earlier_masks():
    import torch
    from prune_cli.pruning.masks import Masks, topk_masks
    torch.manual_seed(0)
    scores = {"a": torch.rand(10, 10), "b": torch.rand(3)}
    # Earlier masks zero 2 of b's 3 weights; this round's own rates give b round(0.34 * 3) = 1: the floor wins
    # and the surplus comes back from a, so the total is still exactly round(0.5 * 103) = 52.
    previous = Masks({"a": torch.ones(10, 10), "b": torch.tensor([0.0, 0.0, 1.0])})
    masks = topk_masks(scores, 0.5, "layer", previous=previous, layer_rates={"a": 0.5, "b": 0.34})
    zeros = {name: int((mask == 0).sum()) for name, mask in masks.items()}
    assert zeros == {"a": 50, "b": 2} and sum(zeros.values()) == round(0.5 * 103)
    assert bool((masks["b"][:2] == 0).all())  # masks only shrink
    with pytest.raises(ValueError, match="already zero 3 weights, more than the 1 of this target"):
        topk_masks({"b": torch.rand(3)}, 0.34, "layer", previous=Masks({"b": torch.zeros(3)}),
                   layer_rates={"b": 0.34})
