"""model=vit: torchvision's VisionTransformer, sized for small images, through the pipeline's families."""
import pytest
import torch

from prune_cli.errors import UsageError
from prune_cli.models import ViT
from prune_cli.storage.safe_load import safe_load

VIT = ["model=vit", "measure.latency=false"]


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
    # Whole units: within one unit's weights (its row of mlp.0 and column of mlp.3, 64 each) of the target.
    s = report["sparsity"]
    assert abs(s["achieved"] - 0.3) * s["prunable_weights"] <= 128
    # The residual stream (patch embedding, attention output, second MLP layer) keeps every feature.
    assert all(kept[name][0] == kept[name][1] for name in kept if not name.endswith("mlp.0"))


def test_two_four_masks_on_every_linear_of_the_vit(run_api):
    report, run_dir = run_api(*VIT, "strategy=magnitude", "strategy.pattern=2:4", "sparsity=0.5",
                              "strategy.ignore=[.*conv_proj]")
    state = safe_load(run_dir / "pruned.pt")["state_dict"]
    pruned = [layer["name"] for layer in report["layers"] if not layer.get("ignored")]
    assert pruned and all(name in state for name in pruned)
    for name in pruned:
        groups = state[name].reshape(state[name].shape[0], -1, 4)
        assert bool(((groups != 0).sum(-1) == 2).all()), name


def test_calibrated_criteria_refuse_the_attention_projection_they_cannot_measure(run_api):
    with pytest.raises(UsageError, match=r"out_proj.weight is never called as a module in the forward pass .* "
                                         r"leave these 2 layers dense with strategy.ignore=\['\.\*out_proj'\]"):
        run_api(*VIT, "strategy=wanda", "sparsity=0.5")
