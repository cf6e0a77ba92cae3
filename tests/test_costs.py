"""Costs (MACs, latency, bytes, parameter counts) and the CSR export, against hand-computed numbers."""
import copy
import io
import math

import pytest
import torch
from torch import nn

from prune_cli.measure.flops import count_flops
from prune_cli.measure.latency import measure_latency
from prune_cli.measure.sizes import checkpoint_sizes, decode_sparse, encode_sparse, file_size
from prune_cli.pruning.sparsity import param_counts
from prune_cli.measure.csr import SparseLinear, sparse_is_faster, sparse_layer_names, to_sparse

# Hand-computed multiply-adds for one example:
LINEAR_MACS = 64 * 300                   # Linear(64, 300): one MAC per weight
CONV_MACS = (6 * 24 * 24) * (1 * 5 * 5)  # Conv2d(1, 6, 5) on 1x28x28: 6x24x24 outputs, 25 MACs each


def zero_half_(weight: torch.Tensor) -> torch.Tensor:
    """Zero the first half of the weight's entries (in place); return the matching mask."""
    mask = torch.ones_like(weight)
    mask.view(-1)[: weight.numel() // 2] = 0
    with torch.no_grad():
        weight.mul_(mask)
    return mask


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 5)
        self.fc = nn.Linear(6 * 24 * 24, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def sparse_weight(rows, cols, sparsity, seed=0):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=gen)
    weight[torch.rand(rows, cols, generator=gen) < sparsity] = 0
    return weight


# ------------------------------------------------------------------------------------------------------ MACs

def test_linear_macs_dense_and_half_zeroed():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 300))
    dense = count_flops(model, (1, 8, 8))
    assert dense["dense"] == LINEAR_MACS and dense["nonzero"] == LINEAR_MACS
    assert dense["theoretical_speedup"] == 1.0

    zero_half_(model[1].weight)
    half = count_flops(model, (1, 8, 8))
    assert half["dense"] == LINEAR_MACS and half["nonzero"] == LINEAR_MACS // 2
    assert half["theoretical_speedup"] == 2.0


def test_conv_macs_and_per_layer_discount():
    model = ConvNet()
    fc_macs = 6 * 24 * 24 * 10
    assert count_flops(model, (1, 28, 28))["dense"] == CONV_MACS + fc_macs

    # Zeros come from a mask alone (weights untouched): only the conv's MACs halve.
    conv_mask = torch.ones_like(model.conv.weight)
    conv_mask.view(-1)[:75] = 0
    flops = count_flops(model, (1, 28, 28), masks={"conv.weight": conv_mask})
    assert flops["dense"] == CONV_MACS + fc_macs
    assert flops["nonzero"] == CONV_MACS // 2 + fc_macs
    assert {layer["name"]: layer["nonzero"] for layer in flops["layers"]} == {"conv": CONV_MACS // 2,
                                                                              "fc": fc_macs}


def test_count_flops_restores_train_mode():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8)).train()
    count_flops(model, (1, 8, 8))  # BatchNorm on a batch of one only works in eval mode
    assert all(module.training for module in model.modules())


# --------------------------------------------------------------------------------------------------- latency

def test_latency_positive_finite_for_both_batch_sizes():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 300), nn.ReLU(), nn.Linear(300, 10))
    latency = measure_latency({"m": model}, (1, 8, 8), "cpu", batch_sizes=(1, 256), warmup=2, repeats=5,
                              max_time_s=0.1)["m"]
    assert set(latency) == {"batch_1_ms", "batch_256_ms"}
    assert all(math.isfinite(ms) and ms > 0 for ms in latency.values())


# ----------------------------------------------------------------------------------------------------- sizes

def test_dense_size_is_torch_save_length_and_file_size(tmp_path):
    model = ConvNet()
    masks = {"fc.weight": zero_half_(model.fc.weight)}
    state = model.state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    sizes = checkpoint_sizes(state, masks)
    assert sizes["dense"] == len(buffer.getvalue())
    assert sizes["shrunk"] is None

    # torch.save names the zip's top folder after the file ("archive" for a buffer), so a file named
    # archive.pt has exactly the measured size; other names differ by their length difference.
    path = tmp_path / "archive.pt"
    torch.save(state, path)
    assert file_size(path) == len(path.read_bytes()) == sizes["dense"]


def test_sparse_encoding_smaller_and_lossless():
    weight = sparse_weight(1024, 1024, 0.95)
    state = {"w.weight": weight, "w.bias": torch.randn(1024)}
    masks = {"w.weight": (weight != 0).float()}
    sizes = checkpoint_sizes(state, masks, shrunk_state_dict={"w.weight": weight[:100].clone()})
    assert sizes["sparse"] < sizes["dense"] / 5  # ~4.2 MB dense vs ~0.4 MB sparse
    assert sizes["shrunk"] < sizes["dense"]

    buffer = io.BytesIO()
    torch.save(encode_sparse(state, masks), buffer)
    buffer.seek(0)
    decoded = decode_sparse(torch.load(buffer, weights_only=True))
    assert torch.equal(decoded["w.weight"], weight) and torch.equal(decoded["w.bias"], state["w.bias"])


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.99, 1.0])
def test_every_encoding_round_trips(sparsity):
    weight = sparse_weight(37, 11, sparsity)  # odd sizes: the bitmap needs padding
    mask = (weight != 0).float()
    decoded = decode_sparse(encode_sparse({"w": weight}, {"w": mask}))["w"]
    assert torch.equal(decoded, weight)


def test_param_counts():
    model = nn.Linear(10, 4)
    mask = zero_half_(model.weight)
    assert param_counts(model, {"weight": mask}) == {"total": 44, "nonzero": 24}
    assert param_counts(model) == {"total": 44, "nonzero": 24}  # zeros are counted from the weights


# ---------------------------------------------------------------------------------------------- CSR export

@torch.no_grad()
def test_sparse_linear_matches_dense():
    linear = nn.Linear(512, 256)
    linear.weight.mul_((torch.rand_like(linear.weight) >= 0.9).float())
    sparse = SparseLinear.from_dense(linear)
    x = torch.rand(64, 512)
    torch.testing.assert_close(sparse(x), linear(x), rtol=1e-5, atol=1e-5)
    x3 = torch.rand(2, 3, 512)  # extra leading dimensions, as nn.Linear allows
    torch.testing.assert_close(sparse(x3), linear(x3), rtol=1e-5, atol=1e-5)
    with torch.inference_mode():
        torch.testing.assert_close(sparse(x), linear(x), rtol=1e-5, atol=1e-5)


def test_to_sparse_converts_only_sparse_linears():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    with torch.no_grad():
        model[1].weight.mul_((torch.rand_like(model[1].weight) >= 0.9).float())
    sparse = to_sparse(model, min_sparsity=0.8)
    assert isinstance(sparse[1], SparseLinear)
    assert type(sparse[3]) is nn.Linear and torch.equal(sparse[3].weight, model[3].weight)
    assert type(model[1]) is nn.Linear  # the original is untouched
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), model(x), rtol=1e-5, atol=1e-5)
        # The exported model copies, and its state dict loads with weights_only (plain buffers, no CSR).
        buffer = io.BytesIO()
        torch.save(sparse.state_dict(), buffer)
        buffer.seek(0)
        clone = copy.deepcopy(sparse)
        clone.load_state_dict(torch.load(buffer, weights_only=True))
        torch.testing.assert_close(clone(x), model(x), rtol=1e-5, atol=1e-5)


def test_sparse_is_kept_only_when_faster_at_the_largest_batch():
    """The one rule for the CSR export: the throughput case (largest batch) decides, batch 1 does not."""
    assert sparse_is_faster({"batch_1_ms": 1.0, "batch_256_ms": 4.0}, {"batch_1_ms": 9.0, "batch_256_ms": 3.0})
    assert not sparse_is_faster({"batch_1_ms": 9.0, "batch_256_ms": 3.0},
                                {"batch_1_ms": 1.0, "batch_256_ms": 4.0})
    assert not sparse_is_faster({"batch_32_ms": 2.0}, {"batch_32_ms": 2.0})  # a tie keeps the dense model


def test_to_sparse_converts_only_layers_sparse_enough():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 8))
    with torch.no_grad():
        model[1].weight.mul_((torch.rand_like(model[1].weight) >= 0.95).float())
    sparse = to_sparse(model, min_sparsity=0.8)
    assert sparse_layer_names(sparse) == ["1"] and type(model[1]) is nn.Linear  # the original is untouched
    x = torch.rand(5, 1, 8, 8)
    torch.testing.assert_close(sparse(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scale,error,matches", [(1.0, 5e-6, True), (1.0, 5e-5, False), (1000.0, 5e-6, True),
                                                 (1000.0, 5e-5, False)],
                         ids=["small-ok", "small-off", "large-ok", "large-off"])
def test_shrunk_matches_masked_within_1e5_of_the_output_scale(monkeypatch, scale, error, matches):
    """The check is relative to the largest output (at least 1): float reordering in wide layers with large
    logits passes, a difference the size of a wrongly kept unit does not."""
    import prune_cli.pruning.shrink as shrinking
    from prune_cli.data.splits import TensorSplit
    from prune_cli.measure.final import measure_final
    torch.manual_seed(0)
    x = torch.rand(16, 1, 2, 2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    with torch.no_grad():
        model[3].weight.mul_(scale / float(model(x).abs().max()))
        peak = float(model(x).abs().max())
    shift = error * max(1.0, peak)

    class Off(nn.Module):  # the "shrunk" model: the masked one's outputs, all moved by ``shift``
        def forward(self, inputs):
            return model(inputs) + shift

    monkeypatch.setattr(shrinking, "shrink", lambda m, masks, example: (Off(), {"params": 1, "shapes": {}}))
    out = measure_final(model, masks={"1.weight": torch.ones(8, 4)}, structured=True, compressed=False,
                        example=x[:1], test=TensorSplit(x, torch.zeros(16, dtype=torch.long)), device="cpu",
                        dense_twin=model, measure_cfg={"latency": False}, export_cfg={})
    assert out["shrunk"]["max_abs_output"] == pytest.approx(peak, rel=1e-6)
    assert out["shrunk"]["max_abs_diff"] == pytest.approx(shift, rel=1e-2)
    assert out["shrunk"]["matches_masked"] is matches


def test_the_shrunk_check_runs_in_ieee_float32_and_restores_the_settings():
    """TF32 (a GPU's default for convolutions, and matmul_precision=high) moves outputs by ~1e-3: the masked
    and shrunk models are compared without it, and the run's own settings come back, after an error too."""
    from prune_cli.training.float32 import ieee_fp32
    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("high")
    try:
        with pytest.raises(KeyError):
            with ieee_fp32():
                assert torch.get_float32_matmul_precision() == "highest"
                assert torch.backends.cudnn.allow_tf32 is False
                raise KeyError("inside")
        assert (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32) == ("high", True)
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.allow_tf32 = before[1]
