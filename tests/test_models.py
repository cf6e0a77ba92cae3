"""The built-in models: every config option builds for every dataset shape it fits, trains (forward and
backward), rebuilds from its spec alone, and scales with ``width``."""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from prune_cli.config import CONFIG_DIR
from prune_cli.errors import UsageError
from prune_cli.pruning.masks import prunable_names
from prune_cli.models import TorchvisionModel, build, build_for, make_spec


@pytest.fixture(autouse=True)
def _plain_cpu_kernels():
    """oneDNN compiles a kernel per new conv shape (seconds on a busy 2-core machine, for every case here);
    PyTorch's own kernels, on one thread, are faster for these one-off tiny batches. Only the kernels differ,
    not the maths."""
    before, threads = torch.backends.mkldnn.enabled, torch.get_num_threads()
    torch.backends.mkldnn.enabled = False
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before
        torch.set_num_threads(threads)


def info(shape, classes=10):
    channels = shape[0]
    return SimpleNamespace(name="synthetic", input_shape=tuple(shape), num_classes=classes,
                           mean=[0.4] * channels, std=[0.2] * channels)


def model_cfg(name, **extra):
    cfg = OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / "model" / f"{name}.yaml"))
    cfg.update(extra)
    return cfg


MNIST, CIFAR, TINY = (1, 28, 28), (3, 32, 32), (1, 8, 8)
# Full-width convolutions at 28-32 pixels cost ~1 s of CPU per case; one full-width case per family is enough,
# the others run narrower (the full layouts are counted in test_published_sizes).
CASES = [
    ("conv2", MNIST, {"width": 0.25}), ("conv2", CIFAR, {}), ("conv2", TINY, {}),
    ("conv4", MNIST, {"width": 0.25}), ("conv4", CIFAR, {"width": 0.25}), ("conv4", TINY, {}),
    ("conv6", MNIST, {"width": 0.25}), ("conv6", CIFAR, {"width": 0.25}), ("conv6", TINY, {}),
    # VGGs at reduced width: the full-width layouts are checked in test_published_sizes, on the meta device.
    ("vgg11", MNIST, {"width": 0.25}), ("vgg11", CIFAR, {"width": 0.25}), ("vgg11", TINY, {"width": 0.125}),
    ("vgg16", CIFAR, {"width": 0.25}), ("vgg16", MNIST, {"width": 0.125}),
    ("resnet20", MNIST, {}), ("resnet20", CIFAR, {}), ("resnet20", TINY, {}),
    ("resnet56", CIFAR, {}), ("resnet56", TINY, {"width": 0.5}),
    ("torchvision", MNIST, {"arch": "resnet18"}), ("torchvision", CIFAR, {"arch": "mobilenet_v2"}),
    ("torchvision", TINY, {"arch": "shufflenet_v2_x0_5"}),
]


@pytest.mark.parametrize("name,shape,extra", CASES, ids=[f"{n}-{'x'.join(map(str, s))}" + (
    "-" + "-".join(f"{k}={v}" for k, v in e.items()) if e else "") for n, s, e in CASES])
def test_model_builds_trains_and_rebuilds_from_its_spec(name, shape, extra):
    torch.manual_seed(0)
    model, spec = build_for(model_cfg(name, **extra), info(shape))
    # The spec is plain data: it survives JSON (so torch.load(weights_only=True) too) and names a class.
    assert json.loads(json.dumps(spec)) == spec and spec["target"].startswith("prune_cli.models.")
    x = torch.rand(2, *shape)
    y = torch.tensor([1, 3])
    model.train()
    logits = model(x)
    assert logits.shape == (2, 10)
    torch.nn.functional.cross_entropy(logits, y).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    # The first layer normalises with the dataset's statistics: the model takes pixels in [0, 1].
    assert next(iter(model.children())).__class__.__name__ == "Normalize"
    # Rebuilt from the spec alone, with the state dict, it computes the same function.
    rebuilt = build(spec)
    rebuilt.load_state_dict(model.state_dict())
    model.eval(), rebuilt.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), rebuilt(x), atol=1e-5)
    assert prunable_names(model)  # there is something to prune


def test_published_sizes():
    """Parameter counts of the papers' models on CIFAR-10 inputs (built on the meta device: no memory, no init)."""
    def count(name):
        with torch.device("meta"):
            return sum(p.numel() for p in build_for(model_cfg(name), info(CIFAR))[0].parameters())
    assert round(count("conv2") / 1e6, 1) == 4.3     # Frankle & Carbin 2019, Figure 2: 4.3M
    assert round(count("conv4") / 1e6, 1) == 2.4     # 2.4M
    assert round(count("conv6") / 1e6, 1) == 2.3     # 2.3M
    assert round(count("vgg16") / 1e6, 1) == 15.0    # Li et al. 2017, Table 1: 1.5e7
    assert round(count("resnet56") / 1e6, 2) == 0.86  # 8.5e5 with option-A shortcuts
    assert round(count("resnet20") / 1e6, 2) == 0.27


@pytest.mark.parametrize("name", ["conv4", "vgg11", "resnet20", "lenet5"])
def test_width_scales_hidden_layers_only(name):
    with torch.device("meta"):
        full, _ = build_for(model_cfg(name), info(CIFAR))
    half, spec = build_for(model_cfg(name, **({"width": 0.25} if name == "vgg11" else {})), info(CIFAR),
                           width=0.5)
    assert spec["kwargs"]["width"] == 0.5
    n = lambda m: sum(p.numel() for p in m.parameters())
    assert n(half) < 0.5 * n(full)
    assert half(torch.rand(2, *CIFAR)).shape == (2, 10)  # input and output sizes do not change


def test_compress_finds_a_width_for_the_new_models():
    from prune_cli.pruning.sparsity import model_sparsity
    from prune_cli.pruning.strategies.compress import find_width
    cfg = model_cfg("resnet20")

    def count(width):
        m = build(make_spec(cfg, info(TINY), width))
        return model_sparsity(m, prunable_names(m))[2]
    width = find_width(count, 0.25)
    assert 0.3 < width < 0.7 and count(width) <= 0.25 * count(1.0)


def test_vgg_classifier_follows_li_et_al_or_is_a_single_linear():
    with torch.device("meta"):
        li, _ = build_for(model_cfg("vgg16"), info(CIFAR))
        single, _ = build_for(model_cfg("vgg16", hidden=[]), info(CIFAR))
    kinds = [type(m).__name__ for m in li.classifier]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear"] and li.classifier[0].in_features == 512
    assert [type(m).__name__ for m in single.classifier] == ["Linear"]


def test_resnet_uses_conv_shortcuts_where_shapes_change():
    model, _ = build_for(model_cfg("resnet20"), info(CIFAR))
    shortcuts = [name for name, m in model.named_modules() if name.endswith("shortcut") and len(m)]
    assert shortcuts == ["layer2.0.shortcut", "layer3.0.shortcut"]
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) == 19 + 2


def test_bad_depths_are_one_line():
    with pytest.raises(UsageError, match="model.depth=12: VGG depth must be one of"):
        build_for(model_cfg("vgg16", depth=12), info(CIFAR))
    with pytest.raises(UsageError, match="model.depth=21: a CIFAR ResNet has depth 6n\\+2"):
        build_for(model_cfg("resnet20", depth=21), info(CIFAR))


def test_torchvision_adapts_channels_and_small_inputs():
    model, spec = build_for(model_cfg("torchvision", arch="alexnet"), info(TINY))
    assert model.net.features[0].in_channels == 1 and model.input_size == 64   # AlexNet needs >= 63 pixels
    assert spec["kwargs"]["arch"] == "alexnet" and "pretrained" not in spec["kwargs"]
    assert model(torch.rand(2, *TINY)).shape == (2, 10)
    resnet, _ = build_for(model_cfg("torchvision", arch="resnet18"), info(CIFAR, classes=100))
    assert resnet.input_size is None and resnet.net.fc.out_features == 100


def test_torchvision_bad_names_and_widths_are_one_line():
    with pytest.raises(UsageError, match="model.arch=resnet19: not a torchvision classification model"):
        build_for(model_cfg("torchvision", arch="resnet19"), info(CIFAR))
    with pytest.raises(UsageError, match="arch=resnet18 has no width setting"):
        build_for(model_cfg("torchvision", arch="resnet18"), info(CIFAR), width=0.5)
    narrow, _ = build_for(model_cfg("torchvision", arch="mobilenet_v2"), info(CIFAR), width=0.5)
    full, _ = build_for(model_cfg("torchvision", arch="mobilenet_v2"), info(CIFAR))
    assert sum(p.numel() for p in narrow.parameters()) < 0.6 * sum(p.numel() for p in full.parameters())


def test_torchvision_pretrained_weights_load_into_an_adapted_model(monkeypatch):
    import torchvision
    import torchvision.models._api as api
    reference = torchvision.models.resnet18(weights=None).state_dict()  # 3 channels, 1000 classes
    monkeypatch.setattr(api, "load_state_dict_from_url", lambda *a, **k: reference)
    model, spec = build_for(model_cfg("torchvision", arch="resnet18", pretrained=True), info(MNIST))
    # Pretrained is an initialisation, not architecture: the spec rebuilds without any download.
    assert "pretrained" not in spec["kwargs"]
    state = model.net.state_dict()
    assert torch.equal(state["conv1.weight"], reference["conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(state["layer1.0.conv1.weight"], reference["layer1.0.conv1.weight"])
    assert state["fc.weight"].shape == (10, 512)  # the head stays fresh: different number of classes


def test_torchvision_pretrained_offline_is_one_line(monkeypatch):
    from urllib.error import URLError
    import torchvision.models._api as api

    def offline(*args, **kwargs):
        raise URLError("[Errno -2] Name or service not known")
    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    with pytest.raises(UsageError) as err:
        TorchvisionModel(CIFAR, 10, [0.5] * 3, [0.2] * 3, arch="resnet18", pretrained=True)
    message = str(err.value)
    assert "\n" not in message and "pretrained=true: could not get the weights" in message
    assert "model.pretrained=false" in message
