"""model=vit: torchvision's VisionTransformer, sized for small images, through the pipeline's families."""
import copy

import pytest
import torch
from torch import nn

import prune_cli
from prune_cli.data import load_dataset
from prune_cli.errors import UsageError
from prune_cli.models import ViT
from prune_cli.models.attention import HeadAttention
from prune_cli.pruning.shrink import rebuild_shrunk, shrink
from prune_cli.pruning.strategies.calibration import Wanda
from prune_cli.pruning.units import head_group, unit_groups, unit_masks
from prune_cli.storage.safe_load import safe_load
from prune_cli.training.evaluate import evaluate

VIT = ["device=cpu", "model=vit", "measure.latency=false"]


@pytest.mark.parametrize("shape,patch,tokens", [((1, 8, 8), 2, 17), ((1, 28, 28), 7, 17), ((3, 32, 32), 8, 17)])
def test_patches_are_a_quarter_of_the_side_for_any_channels(shape, patch, tokens):
    model = ViT(shape, 10, [0.5] * shape[0], [0.25] * shape[0])
    assert model.net.patch_size == patch and model.net.seq_length == tokens
    assert model.net.conv_proj.in_channels == shape[0]
    assert model(torch.rand(2, *shape)).shape == (2, 10)


def test_width_scales_features_and_keeps_them_a_multiple_of_the_heads():
    model = ViT((1, 8, 8), 10, [0.5], [0.25], heads=4, hidden_dim=64, mlp_dim=128, width=0.3)
    assert model.net.hidden_dim == 20 and model.net.encoder.layers[0].mlp[0].out_features == 38
    with pytest.raises(UsageError, match="model.patch_size=3: must divide the image size 8"):
        ViT((1, 8, 8), 10, [0.5], [0.25], patch_size=3)


def test_structured_pruning_removes_mlp_units_and_the_shrunk_vit_matches_the_masked_one(run_api):
    report, run_dir = run_api(*VIT, "strategy=magnitude", "strategy.granularity=structured", "sparsity=0.3")
    kept = report["shrunk"]["units_kept"]
    mlp = [name for name in kept if name.endswith("mlp.0")]
    assert len(mlp) == 2 and all(kept[name][0] < kept[name][1] == 128 for name in mlp)
    assert report["shrunk"]["matches_masked"] and report["finetuned_on"][0]["on"] == "shrunk"
    # Whole units: within one unit's weights of the target; the largest unit is a head (its 16 rows of query,
    # key and value and 16 columns of the output projection, 64 weights each).
    s = report["sparsity"]
    assert abs(s["achieved"] - 0.3) * s["prunable_weights"] <= 4 * 16 * 64
    # The residual stream (patch embedding, attention output, second MLP layer) keeps every feature.
    residual = [name for name in kept if name.endswith(("conv_proj", "attention.out", "mlp.3", "head"))]
    assert len(residual) == 6 and all(kept[name][0] == kept[name][1] for name in residual)


def test_two_four_masks_on_every_linear_of_the_vit(run_api):
    report, run_dir = run_api(*VIT, "strategy=magnitude", "strategy.pattern=2:4", "sparsity=0.5",
                              "strategy.ignore=[.*conv_proj]")
    state = safe_load(run_dir / "pruned.pt")["state_dict"]
    pruned = [layer["name"] for layer in report["layers"] if not layer.get("ignored")]
    assert pruned and all(name in state for name in pruned)
    for name in pruned:
        groups = state[name].reshape(state[name].shape[0], -1, 4)
        assert bool(((groups != 0).sum(-1) == 2).all()), name


class _PackedAttention(nn.Module):
    """nn.MultiheadAttention applies out_proj's weight without calling the module."""
    def __init__(self):
        super().__init__()
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.attention(x, x, x, need_weights=False)[0].mean(1))


def test_calibrated_criteria_refuse_a_projection_they_cannot_measure():
    from tests.test_modern import _context
    model = _PackedAttention()
    ctx = _context(model, torch.rand(4, 5, 8), ["attention.out_proj.weight", "head.weight"])
    with pytest.raises(UsageError, match=r"^strategy=wanda: attention.out_proj.weight is never called as a module "
                                         r"in the forward pass .* leave it dense with "
                                         r"strategy.ignore=\[attention.out_proj\]$"):
        Wanda(calibration_batches=1).score(ctx)


def test_head_attention_computes_what_multihead_attention_computes():
    torch.manual_seed(0)
    packed, ours = nn.MultiheadAttention(16, 4, batch_first=True), HeadAttention(16, 4)
    with torch.no_grad():  # random biases, so a bias landing in the wrong projection shows
        packed.in_proj_bias.normal_()
        packed.out_proj.bias.normal_()
        for i, layer in enumerate((ours.query, ours.key, ours.value)):
            layer.weight.copy_(packed.in_proj_weight[16 * i:16 * (i + 1)])
            layer.bias.copy_(packed.in_proj_bias[16 * i:16 * (i + 1)])
        ours.out.weight.copy_(packed.out_proj.weight)
        ours.out.bias.copy_(packed.out_proj.bias)
    x = torch.randn(3, 7, 16)
    assert torch.allclose(ours(x, x, x)[0], packed(x, x, x, need_weights=False)[0], atol=1e-6)
    assert ours.num_heads == 4 and ours.head_dim == 4


def test_head_attention_starts_as_multihead_attention_does():
    """Xavier-uniform over the packed (3E, E) projection, zero projection biases, zero output bias."""
    torch.manual_seed(0)
    ours = HeadAttention(64, 4)
    bound = (6 / (64 + 3 * 64)) ** 0.5
    packed = torch.cat([ours.query.weight, ours.key.weight, ours.value.weight]).detach()
    assert float(packed.abs().max()) <= bound and float(packed.abs().max()) > 0.99 * bound
    assert all(int(layer.bias.count_nonzero()) == 0 for layer in (ours.query, ours.key, ours.value, ours.out))


def test_heads_are_units_of_query_key_value_rows_and_output_columns():
    model, x = ViT((1, 8, 8), 10, [0.5], [0.25]), torch.rand(2, 1, 8, 8)
    heads = [g for g in unit_groups(model, x) if g.attention is not None]
    prefix = "net.encoder.layers.encoder_layer_{}.self_attention"
    assert [g.attention for g in heads] == [prefix.format(0), prefix.format(1)]
    group = heads[0]
    assert group.num_units == 4 and group.reason is None
    assert group.layers == [f"{group.attention}.{p}" for p in ("query", "key", "value")]
    owned = {(c.param, c.dim): c.unit.tolist() for c in group.couplings}
    rows = [i // 16 for i in range(64)]  # 64 features, 4 heads of 16
    assert owned == {**{(f"{layer}.{p}", 0): rows for layer in group.layers for p in ("weight", "bias")},
                     (f"{group.attention}.out.weight", 1): rows}


def test_removing_heads_shrinks_the_attention_and_the_rebuilt_model_matches():
    torch.manual_seed(0)
    model, x = ViT((1, 8, 8), 10, [0.5], [0.25]).eval(), torch.rand(5, 1, 8, 8)
    attention = "net.encoder.layers.encoder_layer_1.self_attention"
    removed = {f"{attention}.query": list(range(16, 48))}  # heads 1 and 2 of block 1
    masks = unit_masks(model, x, removed)
    assert set(masks) == {f"{attention}.{p}.{q}" for p in ("query", "key", "value") for q in ("weight", "bias")
                          } | {f"{attention}.out.weight"}
    small, info = shrink(model, masks, x)
    assert small.get_submodule(attention).num_heads == 2 and info["heads_kept"] == {
        "net.encoder.layers.encoder_layer_0.self_attention": [4, 4], attention: [2, 4]}
    assert small.get_submodule(f"{attention}.out").weight.shape == (64, 32)
    masked = copy.deepcopy(model)
    masks.apply_(masked)
    with torch.no_grad():
        assert torch.allclose(small(x), masked(x), atol=1e-6)
        rebuilt = rebuild_shrunk(ViT((1, 8, 8), 10, [0.5], [0.25]), info["shapes"]).eval()
        rebuilt.load_state_dict(small.state_dict())
        assert torch.equal(rebuilt(x), small(x))


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_structured_pruning_removes_heads_and_the_reloaded_checkpoint_reproduces_the_report(run_api, scope):
    report, run_dir = run_api(*VIT, "strategy=magnitude", "strategy.granularity=structured", "sparsity=0.5",
                              f"strategy.scope={scope}", "finetune.epochs=1")
    heads = report["shrunk"]["heads_kept"]
    if scope == "layer":  # the same fraction of every group's units: 2 of each block's 4 heads
        assert list(heads.values()) == [[2, 4], [2, 4]]
    else:  # ranked against the MLP units: which go depends on the weights, but some do and each block keeps one
        assert len(heads) == 2 and all(1 <= kept <= total == 4 for kept, total in heads.values())
        assert sum(kept for kept, _ in heads.values()) < 8
    assert report["shrunk"]["matches_masked"]
    (a, _), (b, _) = heads.values()
    assert f"| attention heads kept | {a + b} of 8 ({a}/4, {b}/4) |" in (run_dir / "report.md").read_text()
    state = safe_load(run_dir / "pruned.pt")["state_dict"]
    for attention, (kept, _) in heads.items():
        rows = state[f"{attention}.query.weight"].view(4, 16, 64)
        alive = (rows != 0).flatten(1).any(1)
        assert int(alive.sum()) == kept  # dead heads are whole zero blocks in the saved (full-size) weights
        columns = state[f"{attention}.out.weight"].view(64, 4, 16)
        assert torch.equal((columns != 0).any(0).any(1), alive)
    model = prune_cli.load_checkpoint(run_dir / "pruned.pt")
    test = load_dataset(prune_cli.config.compose_config(VIT).dataset).test
    assert report["accuracy"]["finetuned"] == evaluate(model, test)


def test_calibrated_criteria_measure_every_projection_of_the_vit(run_api):
    report, run_dir = run_api(*VIT, "strategy=wanda", "sparsity=0.5", "finetune.epochs=0")
    names = [layer["name"] for layer in report["layers"] if not layer.get("ignored")]
    assert sum(".self_attention." in n for n in names) == 8  # query, key, value and out of both blocks
    state = safe_load(run_dir / "pruned.pt")["state_dict"]
    for name in names:  # Wanda compares within each output row: half of every row goes
        rows = state[name].flatten(1)
        assert bool(((rows == 0).sum(1) == rows.shape[1] // 2).all()), name


def test_a_module_declaring_heads_it_does_not_have_is_refused_in_one_line():
    attention = HeadAttention(8, 2)
    attention.out = nn.Linear(4, 8)  # reads 4 features, not the 8 the heads give
    with pytest.raises(UsageError, match=r"^block: declares attention heads, but \['query', 'key', 'value'\] are not "
                                         r"Linear layers of equal outputs, a multiple of head_dim=4, read by the "
                                         r"Linear 'out'$"):
        head_group(attention, "block")


def test_activation_scores_a_head_by_its_output_and_apoz_leaves_heads_alone(run_api):
    from prune_cli.pruning.strategies.activation import APoZ, Activation
    from prune_cli.pruning.strategies.base import ScoringContext
    from prune_cli.data.splits import TensorSplit
    from prune_cli.pruning.masks import Masks, prunable_names
    from prune_cli.pruning.units import unit_layers
    torch.manual_seed(0)
    model, x = ViT((1, 8, 8), 10, [0.5], [0.25]), torch.rand(16, 1, 8, 8)
    names = prunable_names(model)
    ctx = ScoringContext(model=model, masks=Masks.ones(model, names), train=TensorSplit(x, torch.zeros(16).long()),
                         prunable=names, device=torch.device("cpu"), seed=0, round=1, batch_size=16,
                         unit_layers=unit_layers(model, x))
    scores = Activation(batches=1).score(ctx)
    attention = "net.encoder.layers.encoder_layer_0.self_attention"
    seen = []
    handle = model.get_submodule(f"{attention}.out").register_forward_pre_hook(lambda m, i: seen.append(i[0]))
    with torch.no_grad():
        model.eval()(next(iter(ctx.calibration_batches(1)))[0])
    handle.remove()
    expected = seen[0].abs().flatten(0, 1).mean(0)  # mean |head output| per feature, over images and tokens
    for projection in ("query", "key", "value"):
        assert torch.allclose(scores[f"{attention}.{projection}"], expected.float(), rtol=1e-5)
    # APoZ: heads are no units of its run, so every head stays.
    report, _ = run_api(*VIT, "strategy=apoz", "sparsity=0.3", "finetune.epochs=1")
    assert list(report["shrunk"]["heads_kept"].values()) == [[4, 4], [4, 4]]
    assert APoZ.scores_heads is False and Activation.scores_heads is True
    with pytest.raises(UsageError, match=r"^sparsity=0.5: strategy=apoz removes whole units and can reach at most "
                                         r"0.4894 on model=vit \(every layer keeps one unit, the classifier all its "
                                         r"outputs, every attention head\)$"):
        run_api(*VIT, "strategy=apoz", "sparsity=0.5", name="beyond")
