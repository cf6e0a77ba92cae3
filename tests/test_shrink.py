"""Unit coupling, structured selection and physical shrinking (prune_cli/pruning/units.py, prune_cli/pruning/shrink.py)."""
import io

import pytest
import torch
from torch import nn

from prune_cli.pruning.masks import Masks, classifier_name, prunable_names
from prune_cli.models import Normalize
from prune_cli.pruning.shrink import rebuild_shrunk, shrink
from prune_cli.pruning.units import select_units, unit_groups, unit_layers, unit_masks, zeroed_weight_count


class BasicBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + x)


class TinyResNet(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.normalize = Normalize([0.5] * 3, [0.25] * 3)
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.block1, self.block2 = BasicBlock(width), BasicBlock(width)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(self.normalize(x))))
        return self.head(self.block2(self.block1(x)))


def mlp():
    return nn.Sequential(Normalize([0.5], [0.25]), nn.Flatten(), nn.Linear(64, 300), nn.ReLU(),
                         nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))


def lenet5():
    return nn.Sequential(Normalize([0.5], [0.25]),
                         nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


def vgg():
    return nn.Sequential(Normalize([0.5] * 3, [0.25] * 3),
                         nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))


MODELS = {"mlp": (mlp, (1, 8, 8)), "lenet5": (lenet5, (1, 28, 28)), "vgg": (vgg, (3, 16, 16)),
          "resnet": (TinyResNet, (3, 8, 8))}


def build(name, seed=0):
    factory, shape = MODELS[name]
    torch.manual_seed(seed)
    model = factory()
    with torch.no_grad():  # non-trivial BatchNorm state, so a wrongly kept or dropped channel shows
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval(), torch.rand(1, *shape)


def random_scores(layers, seed):
    g = torch.Generator().manual_seed(seed)
    return {layer.name: torch.rand(layer.num_units, generator=g) for layer in layers}


def masked_copy(model, masks):
    import copy
    masked = copy.deepcopy(model)
    Masks(masks).apply_(masked)
    return masked


def unit_worth(model, layers, names):
    """Most prunable weights that removing a single unit (of any group) zeroes."""
    return max(zeroed_weight_count(unit_masks(model, None, {layer.name: [0]}, layers), names) for layer in layers)


@pytest.fixture(scope="module", params=list(MODELS))
def case(request):
    model, example = build(request.param)
    return request.param, model, example, unit_layers(model, example)


def test_unit_layers_exclude_classifier_and_list_every_other_layer(case):
    name, model, example, layers = case
    head = classifier_name(model)
    expected = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and n != head]
    assert [layer.name for layer in layers] == expected
    for layer in layers:
        assert layer.weight_name == f"{layer.name}.weight"
        assert layer.num_units == dict(model.named_modules())[layer.name].weight.shape[0]


def test_residual_layers_form_one_group():
    model, example = build("resnet")
    groups = {g.name: g for g in unit_groups(model, example)}
    assert groups["stem"].layers == ["stem", "block1.conv2", "block2.conv2"]
    coupled = {(c.param, c.dim) for c in groups["stem"].couplings}
    assert {("bn.weight", 0), ("block1.bn2.bias", 0), ("block2.conv1.weight", 1), ("head.2.weight", 1)} <= coupled
    assert groups["block1.conv1"].layers == ["block1.conv1"]
    # Removing a unit from one member removes it from the whole group.
    masks = unit_masks(model, example, {"block1.conv2": [3]})
    assert not bool(masks["stem.weight"][3].any()) and not bool(masks["head.2.weight"][:, 3].any())


def test_flatten_couples_a_channel_to_its_columns():
    model, example = build("lenet5")
    masks = unit_masks(model, example, {"4": [2]})
    columns = masks["8.weight"].sum(0)
    assert torch.equal((columns == 0).nonzero().flatten(), torch.arange(2 * 25, 3 * 25))
    assert masks["4.bias"][2] == 0 and masks["4.weight"][2].sum() == 0


def test_tracing_leaves_the_model_untouched():
    model, example = build("resnet")
    model.train()
    before = model.bn.running_mean.clone()
    unit_layers(model, example * 5)
    assert torch.equal(model.bn.running_mean, before) and model.training and model.bn.training


def check_whole_slices(model, masks):
    """Linear/Conv masks are products of whole output rows and whole input columns."""
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)) and f"{name}.weight" in masks:
            mask = masks[f"{name}.weight"].flatten(2) if module.weight.dim() > 2 else masks[f"{name}.weight"][..., None]
            rows = mask.amax(dim=(1, 2))
            cols = mask.amax(dim=(0, 2))
            assert torch.equal(mask, rows[:, None, None] * cols[None, :, None].expand_as(mask))


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_selection_hits_target_and_masks_only_shrink(case, scope):
    name, model, example, layers = case
    names = prunable_names(model)
    total = sum(p.numel() for n, p in model.named_parameters() if n in names)
    worth = unit_worth(model, layers, names)
    head = classifier_name(model)
    previous, previous_removed = None, None
    for round_index, target in enumerate((0.5, 0.9)):
        removed = select_units(random_scores(layers, round_index), target, model, example, scope=scope,
                               existing_masks=previous, layers=layers)
        masks = unit_masks(model, example, removed, layers)
        achieved = zeroed_weight_count(masks, names)
        assert abs(achieved - target * total) <= worth, (achieved / total, target)
        check_whole_slices(model, masks)
        for layer in layers:
            assert len(removed[layer.name]) < layer.num_units
        assert head not in removed
        assert bool(masks.get(f"{head}.weight", torch.ones(1)).flatten(1).amax(1).all())  # no output row lost
        if previous is not None:
            for layer in layers:
                assert set(previous_removed[layer.name]) <= set(removed[layer.name])
            for key, mask in previous.items():
                assert bool((masks[key] <= mask).all())
        previous, previous_removed = masks, removed
    if scope == "layer":  # the same fraction everywhere, to within one unit
        fractions = [len(removed[layer.name]) / layer.num_units for layer in layers]
        assert max(fractions) - min(fractions) <= max(1 / layer.num_units for layer in layers) + 1e-9


def test_selection_is_deterministic_and_breaks_ties_by_layer_then_index():
    model, example = build("mlp")
    layers = unit_layers(model, example)
    flat = {layer.name: torch.ones(layer.num_units) for layer in layers}
    first = select_units(flat, 0.3, model, example, scope="global", layers=layers)
    assert first == select_units(flat, 0.3, model, example, scope="global", layers=layers)
    assert first["2"] == list(range(len(first["2"]))) and len(first["2"]) > 0 and first["4"] == []


def test_zero_target_removes_nothing(case):
    name, model, example, layers = case
    removed = select_units(random_scores(layers, 0), 0.0, model, example, layers=layers)
    assert all(units == [] for units in removed.values())


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("target", [0.5, 0.9])
def test_shrunk_model_matches_masked_model(case, scope, target):
    name, model, example, layers = case
    removed = select_units(random_scores(layers, 7), target, model, example, scope=scope, layers=layers)
    masks = unit_masks(model, example, removed, layers)
    small, info = shrink(model, masks, example)
    x = torch.rand(16, *example.shape[1:])
    with torch.no_grad():
        expected = masked_copy(model, masks)(x)
        assert torch.allclose(small.eval()(x), expected, atol=1e-5, rtol=0)
    dense = sum(p.numel() for p in model.parameters())
    masked_entries = sum(int((m == 0).sum()) for m in masks.values())
    assert info["params"] == sum(p.numel() for p in small.parameters()) == dense - masked_entries < dense
    assert info["fallback"] == []
    for layer in layers:
        assert info["units_kept"][layer.name] == [layer.num_units - len(removed[layer.name]), layer.num_units]

    # The recorded shapes turn a freshly built dense model into one that takes the shrunk state dict.
    buffer = io.BytesIO()
    torch.save(small.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    fresh = rebuild_shrunk(build(name, seed=1)[0], info["shapes"])
    fresh.load_state_dict(state)
    with torch.no_grad():
        assert torch.allclose(fresh.eval()(x), expected, atol=1e-5, rtol=0)


def test_shrink_leaves_the_input_model_alone():
    model, example = build("vgg")
    layers = unit_layers(model, example)
    masks = unit_masks(model, example, {"1": [0, 1]}, layers)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shrink(model, masks, example)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_unremovable_units_stay_masked_and_are_reported():
    model, example = build("mlp")
    layers = unit_layers(model, example)
    masks = unit_masks(model, example, {"4": list(range(100))}, layers)  # every unit of a hidden layer
    masks["6.weight"][3] = 0  # a classifier row
    small, info = shrink(model, masks, example)
    reasons = {entry["layer"]: entry["reason"] for entry in info["fallback"]}
    assert set(reasons) == {"4", "6"} and "classifier" in reasons["6"]
    assert info["units_kept"]["4"] == [1, 100] and info["units_kept"]["6"] == [10, 10]
    x = torch.rand(8, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(small(x), masked_copy(model, masks)(x), atol=1e-5, rtol=0)


def test_zero_rows_whose_outputs_are_still_read_are_not_removed():
    """A unit with a zeroed row but a live bias still feeds the next layer: removing it would change outputs."""
    model, example = build("mlp")
    masks = {"2.weight": torch.ones_like(model[2].weight)}
    masks["2.weight"][:5] = 0
    small, info = shrink(model, masks, example)
    assert info["units_kept"]["2"] == [300, 300]


class ChannelNormalize(Normalize):
    """A per-channel buffer after a conv: masking stays exact, but Torch-Pruning cannot shrink the buffer."""


@pytest.mark.parametrize("kind", ["layernorm", "buffer", "depthwise"])
def test_layers_that_cannot_be_shrunk_stay_masked_and_are_reported(kind):
    torch.manual_seed(0)
    if kind == "layernorm":  # LayerNorm statistics see every unit: zeroing one is not removing it
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 16),
                              nn.ReLU(), nn.Linear(16, 10))
    elif kind == "buffer":
        model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), ChannelNormalize([0.1] * 8, [0.5] * 8), nn.ReLU(),
                              nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 10))
    else:
        model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                              nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(512, 10))
    model.eval()
    example = torch.rand(1, 1, 8, 8)
    groups = unit_groups(model, example)
    stuck = [g for g in groups if g.reason]
    assert (len(stuck) > 0) == (kind != "buffer")
    layers = unit_layers(model, example)
    masks = unit_masks(model, example, {layer.name: [0, 1] for layer in layers}, layers)
    for group in stuck:  # a zeroed row where masking cannot be turned into removal
        weight = dict(model.named_parameters())[f"{group.name}.weight"]
        masks[f"{group.name}.weight"] = torch.ones_like(weight)
        masks[f"{group.name}.weight"][0] = 0
    small, info = shrink(model, masks, example)
    first = "1" if kind == "layernorm" else "0"
    assert first in {entry["layer"] for entry in info["fallback"]}
    assert info["units_kept"][first][0] == info["units_kept"][first][1]
    assert info["params"] < sum(p.numel() for p in model.parameters())  # the other layers still shrink
    x = torch.rand(8, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(small(x), masked_copy(model, masks)(x), atol=1e-5, rtol=0)


# --- fine-tuning the shrunk model (finetune.on=shrunk) ---------------------------------------------------------

def _sgd_step(model, x, y, masks=None):
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if masks:
        Masks(masks).apply_(model)


def test_a_step_on_the_shrunk_model_is_a_step_on_the_masked_one(case):
    """The small model's positions pick exactly its values out of the masked model; one training step on it,
    written back, gives the full-size model the masked step would (BatchNorm in training mode included) at
    every kept entry, and the same outputs; the masked entries stay zero. (Only the running statistics of a
    removed channel differ: the masked model still averages its zeros in, and no output reads them.)"""
    import copy
    from prune_cli.pruning.shrink import shrink_for_training
    name, model, example, layers = case
    removed = select_units(random_scores(layers, 3), 0.5, model, example, layers=layers)
    masks = unit_masks(model, example, removed, layers)
    masked = masked_copy(model, masks)
    shrunk = shrink_for_training(masked, masks, example)
    full_state, small_state = masked.state_dict(), shrunk.model.state_dict()
    assert shrunk.positions and set(shrunk.positions) < set(full_state)
    for key, where in shrunk.positions.items():
        assert torch.equal(full_state[key].reshape(-1)[where], small_state[key].reshape(-1))
        assert len(set(where.tolist())) == where.numel()  # every small element has its own place
    assert shrunk.masks is None  # whole units removed: nothing left to mask inside the small model

    torch.manual_seed(0)
    x, y = torch.rand(16, *example.shape[1:]), torch.randint(0, 10, (16,))
    reference = copy.deepcopy(masked)
    _sgd_step(reference, x, y, masks)
    _sgd_step(shrunk.model, x, y)
    shrunk.write_back(masked)
    for key, value in reference.state_dict().items():
        got, where = masked.state_dict()[key].float(), shrunk.positions.get(key)
        if where is not None:
            got, value = got.reshape(-1)[where], value.reshape(-1)[where]
        assert torch.allclose(got, value.float(), atol=1e-6, rtol=1e-5), key
    with torch.no_grad():
        assert torch.allclose(masked.eval()(x), reference.eval()(x), atol=1e-5, rtol=0)
    for key, mask in masks.items():
        assert bool((dict(masked.named_parameters())[key][mask == 0] == 0).all()), key


def test_what_cannot_shrink_stays_masked_inside_the_shrunk_model():
    from prune_cli.pruning.shrink import shrink_for_training
    model, example = build("mlp")
    layers = unit_layers(model, example)
    masks = unit_masks(model, example, {"2": list(range(150))}, layers)
    masks["6.weight"] = torch.ones_like(model[6].weight)
    masks["6.weight"][3, :7] = 0  # classifier weights: the classifier keeps its outputs, so they stay masked
    shrunk = shrink_for_training(model, masks, example)
    assert list(shrunk.model[2].weight.shape) == [150, 64] and list(shrunk.model[6].weight.shape) == [10, 100]
    assert set(shrunk.masks) == {"6.weight"} and int((shrunk.masks["6.weight"] == 0).sum()) == 7
    assert torch.equal(shrunk.masks["6.weight"], masks["6.weight"])


def test_nothing_to_remove_means_no_shrunk_model():
    from prune_cli.pruning.shrink import shrink_for_training
    model, example = build("mlp")
    masks = {"2.weight": torch.ones_like(model[2].weight)}
    masks["2.weight"][:5] = 0  # zero rows whose biases still feed the next layer: not removable
    assert shrink_for_training(model, masks, example) is None
