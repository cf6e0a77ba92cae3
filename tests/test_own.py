"""A user's own model, data and trained weights (docs/own-model.md): a model class from the user's module, an
ImageFolder directory of real PNGs and a state_dict trained outside prune-cli go through prune-run together."""
from __future__ import annotations

import hashlib
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import prune_cli
from prune_cli.errors import UsageError
from prune_cli.storage.safe_load import safe_load
from tests.conftest import run_in_process

MODULE = "ownmodels_t"  # a module name no other test imports
MODEL_SOURCE = '''
import torch
from torch import nn


class SmallCNN(nn.Module):
    """Takes images in [0, 1]; asks for num_classes only (not input_shape, mean or std)."""
    def __init__(self, num_classes: int, width: int = 8):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * width, 32), nn.ReLU(), nn.Linear(32, num_classes))

    def forward(self, x):
        return self.head(self.features(x))


class Items(torch.utils.data.Dataset):
    """A factory dataset: the ImageFolder's PNGs as (float tensor in [0, 1], label) items."""
    def __init__(self, root: str, split: str):
        from torchvision.datasets import ImageFolder
        from torchvision.transforms.functional import pil_to_tensor
        self.data = ImageFolder(f"{root}/{split}", loader=lambda p: __import__("PIL.Image").Image.open(p).convert("L"))
        self.to_tensor = pil_to_tensor

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        image, label = self.data[i]
        return self.to_tensor(image).float() / 255, label
'''


def _images(root: Path, split: str):
    """The split read independently of prune-cli (PIL -> uint8 -> /255), labels from the folder names."""
    import numpy as np
    from PIL import Image
    classes = sorted(p.name for p in (root / split).iterdir())
    xs, ys = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / split / name).glob("*.png")):
            xs.append(torch.from_numpy(np.array(Image.open(path))).float().view(1, 8, 8) / 255)
            ys.append(label)
    return torch.stack(xs), torch.tensor(ys)


def _accuracy(model, x, y) -> float:
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).sum().item() / len(y)


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    """The user's directory: their module, a model config, an ImageFolder of digits PNGs (80 train / 20 test
    per class), and a state_dict trained in plain PyTorch."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    home = tmp_path_factory.mktemp("own")
    (home / f"{MODULE}.py").write_text(MODEL_SOURCE)
    (home / "conf" / "model").mkdir(parents=True)
    (home / "conf" / "model" / "smallcnn.yaml").write_text(f"name: smallcnn\n_target_: {MODULE}.SmallCNN\nwidth: 8\n")
    digits = load_digits()
    images = (digits.images * 255 / 16).round().astype(np.uint8)
    for label in range(10):
        index = np.flatnonzero(digits.target == label)[:100]
        for split, part in (("train", index[:80]), ("test", index[80:])):
            folder = home / "data" / split / f"digit{label}"
            folder.mkdir(parents=True)
            for i in part:
                Image.fromarray(images[i], mode="L").save(folder / f"{i}.png")
    sys.path.insert(0, str(home))
    module = __import__(MODULE)
    torch.manual_seed(0)
    x, y = _images(home / "data", "train")
    model = module.SmallCNN(num_classes=10)
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(5):
        for batch in torch.randperm(len(y)).split(64):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    torch.save(model.state_dict(), home / "smallcnn.pt")
    test = _images(home / "data", "test")
    yield {"home": home, "module": module, "test": test, "dense": _accuracy(model, *test)}
    sys.path.remove(str(home))


def _run(own, *overrides, run_dir):
    data = [] if "dataset=custom" in overrides else ["dataset=imagefolder", f"dataset.root={own['home'] / 'data'}"]
    common = ["model=smallcnn", *data, "finetune.epochs=1", "measure.latency=false", "progress=false",
              f"cache.dir={own['home'] / 'cache'}"]
    return prune_cli.run([*common, *overrides], run_dir, config_dir=str(own["home"] / "conf"))


def _zeros(state, names):
    return {n: state[n] == 0 for n in names}


def test_own_model_data_and_weights_together(own, tmp_path):
    weights = own["home"] / "smallcnn.pt"
    report = _run(own, f"weights={weights}", "sparsity=0.8", run_dir=tmp_path / "a")
    # The dense stage loaded the user's weights: its accuracy is the independent evaluation's, exactly.
    assert report["cache"]["dense"] == "loaded"
    assert report["cache"]["weights"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert report["accuracy"]["dense"] == own["dense"]
    assert report["budget"]["total_epochs"] == 1 and report["timings"]["train"] == 0.0
    # Sparsity counted from pruned.pt is the target, exactly: round(0.8 * n) zeros.
    payload = safe_load(tmp_path / "a" / "pruned.pt")
    names = [layer["name"] for layer in report["layers"]]
    total = sum(payload["state_dict"][n].numel() for n in names)
    assert sum(int(z.sum()) for z in _zeros(payload["state_dict"], names).values()) == round(0.8 * total)
    # The checkpoint rebuilds with the user's module trusted, and reproduces the reported accuracy.
    with pytest.raises(UsageError, match="no trusted= module covers it"):
        prune_cli.load_checkpoint(tmp_path / "a" / "pruned.pt")
    model = prune_cli.load_checkpoint(tmp_path / "a" / "pruned.pt", trusted=(f"{MODULE}.",))
    assert type(model).__name__ == "SmallCNN"
    assert _accuracy(model, *own["test"]) == report["accuracy"]["finetuned"]

    # Prune further: the masks of pruned.pt are kept, so every old zero is still zero, and the new total is exact.
    further = _run(own, f"weights={tmp_path / 'a' / 'pruned.pt'}", "sparsity=0.9", run_dir=tmp_path / "b")
    assert further["accuracy"]["dense"] == report["accuracy"]["finetuned"]
    new = safe_load(tmp_path / "b" / "pruned.pt")["state_dict"]
    old = _zeros(payload["state_dict"], names)
    assert all(bool((new[n][old[n]] == 0).all()) for n in names)
    assert sum(int((new[n] == 0).sum()) for n in names) == round(0.9 * total)


def test_ignored_layers_stay_dense_and_are_named(own, tmp_path):
    weights = own["home"] / "smallcnn.pt"
    report = _run(own, f"weights={weights}", "sparsity=0.7", "strategy.ignore=[features.0, 'head[.]3.*']",
                  run_dir=tmp_path / "a")
    state = safe_load(tmp_path / "a" / "pruned.pt")["state_dict"]
    ignored = {layer["name"] for layer in report["layers"] if layer.get("ignored")}
    assert ignored == {"features.0.weight", "head.3.weight"}
    assert all(int((state[n] == 0).sum()) == 0 for n in ignored)
    kept = [layer["name"] for layer in report["layers"] if not layer.get("ignored")]
    total = sum(state[n].numel() for n in kept)
    assert report["sparsity"]["prunable_weights"] == total
    assert sum(int((state[n] == 0).sum()) for n in kept) == round(0.7 * total)
    assert "| features.0.weight | 8x1x3x3 | ignored (dense) |" in (tmp_path / "a" / "report.md").read_text()


def test_structured_pruning_of_own_model_shrinks_and_spares_ignored(own, tmp_path):
    report = _run(own, f"weights={own['home'] / 'smallcnn.pt'}", "sparsity=0.3", "strategy.granularity=structured",
                  "strategy.scope=layer", "strategy.ignore=[head.3]", run_dir=tmp_path / "a")
    assert report["shrunk"]["matches_masked"] is True
    state = safe_load(tmp_path / "a" / "pruned.pt")["state_dict"]
    # head.3 reads head.1's units: removing one would zero a column of the ignored classifier, so none go.
    assert int((state["head.3.weight"] == 0).sum()) == 0
    assert report["shrunk"]["units_kept"]["head.1"] == [32, 32]
    assert report["shrunk"]["units_kept"]["features.0"][0] < 8


def test_factory_dataset_streamed_or_in_memory_gives_the_same_numbers(own, tmp_path):
    root = own["home"] / "data"
    factory = ["dataset=custom", f"dataset.train={{_target_: {MODULE}.Items, root: '{root}', split: train}}",
               f"dataset.test={{_target_: {MODULE}.Items, root: '{root}', split: test}}"]
    reports = [_run(own, *factory, f"dataset.in_memory={where}", "dataset.workers=0",
                    f"weights={own['home'] / 'smallcnn.pt'}", "sparsity=0.5", "finetune.epochs=0",
                    run_dir=tmp_path / str(where)) for where in (True, False)]
    assert reports[0]["accuracy"]["dense"] == reports[1]["accuracy"]["dense"] == own["dense"]
    assert reports[0]["accuracy"]["finetuned"] == reports[1]["accuracy"]["finetuned"]


def _bad_folders(home: Path) -> dict:
    """ImageFolder directories that are wrong in one way each."""
    good = next((home / "data" / "train" / "digit0").glob("*.png"))
    layouts = {"empty": {"train/a": None, "test/a": good}, "classes": {"train/a": good, "test/b": good},
               "unreadable": {"train/a": b"not an image", "test/a": good}, "no_test": {"train/a": good}}
    roots = {}
    for name, files in layouts.items():
        for folder, content in files.items():
            path = home / "bad" / name / folder
            path.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                (path / "x.png").write_bytes(content)
            elif content is not None:
                (path / "x.png").write_bytes(content.read_bytes())
        roots[name] = home / "bad" / name
    return roots


BAD = [
    (["dataset.root=nowhere"], "dataset.root=nowhere: no such directory"),
    (["dataset.root={bad}/no_test"], "no test/ directory"),
    (["dataset.root={bad}/empty"], "train/a/ holds no image files"),
    (["dataset.root={bad}/classes"], "test/ has other classes than train/ ('a' is in only one of them)"),
    (["dataset.root={bad}/unreadable"], "cannot read"),
    (["weights=missing.pt"], "weights=missing.pt: no such file"),
    (["weights={home}/narrow.pt"], "does not fit model=smallcnn: 'features.0.weight' is 4x1x3x3 in the file, "
                                   "8x1x3x3 in the model"),
    (["weights={home}/list.pt"], "holds neither a state_dict"),
    (["weights={home}/smallcnn.pt", "strategy.ignore=[fc9]"], "'fc9' matches none of the prunable weights"),
    (["weights={home}/smallcnn.pt", "strategy.ignore=['a[']"], "is not a regular expression"),
    (["weights={home}/smallcnn.pt", "schedule=lottery", "schedule.rewind_epoch=1"], "no epoch of their training"),
    (["weights={home}/smallcnn.pt", "strategy=compress", "strategy.ignore=[head.3]"], "no layer to leave dense"),
    (["weights={home}/smallcnn.pt", "strategy=compress", "sparsity=0.5"], "narrows a model through its "
                                                                          "constructor's `width` multiplier"),
]


@pytest.mark.parametrize("overrides, message", BAD, ids=[m[:28] for _, m in BAD])
def test_bad_own_inputs_one_line_exit_2(own, tmp_path, capsys, monkeypatch, overrides, message):
    home = own["home"]
    if not (home / "narrow.pt").exists():
        torch.save(own["module"].SmallCNN(num_classes=10, width=4).state_dict(), home / "narrow.pt")
        torch.save([torch.zeros(2)], home / "list.pt")
    _bad_folders(home)
    bad = home / "bad"
    args = [a.format(home=home, bad=bad) for a in overrides]
    if not any(a.startswith("dataset.root") for a in args):
        args.append(f"dataset.root={home / 'data'}")
    monkeypatch.syspath_prepend(str(home))
    code, out, err = run_in_process(["--config-dir", str(home / "conf"), "model=smallcnn", "dataset=imagefolder",
                                     *args, f"hydra.run.dir={tmp_path / 'run'}", f"cache.dir={tmp_path / 'c'}"],
                                    capsys, monkeypatch, home)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / "run" / "pruned.pt").exists()


def test_prune_further_below_the_checkpoints_sparsity_is_refused(own, tmp_path):
    _run(own, f"weights={own['home'] / 'smallcnn.pt'}", "sparsity=0.8", "finetune.epochs=0", run_dir=tmp_path / "a")
    # The same target again is allowed (round(0.8 * n) zeros is a little over 0.8 of n here): nothing more to prune.
    again = _run(own, f"weights={tmp_path / 'a' / 'pruned.pt'}", "sparsity=0.8", "finetune.epochs=0",
                 run_dir=tmp_path / "same")
    assert again["sparsity"]["zeros"] == round(0.8 * again["sparsity"]["prunable_weights"])
    already = f"{again['sparsity']['zeros'] / again['sparsity']['prunable_weights']:.6g}"
    assert already != "0.8"
    with pytest.raises(UsageError, match=rf"sparsity=0.5: weights=.* already has {already} of the prunable weights zero"):
        _run(own, f"weights={tmp_path / 'a' / 'pruned.pt'}", "sparsity=0.5", run_dir=tmp_path / "b")


def test_a_user_model_receives_only_what_it_asks_for():
    from prune_cli.models.spec import accepted
    assert accepted("prune_cli.models.MLP", ["input_shape", "num_classes", "mean", "std"]) == [
        "input_shape", "num_classes", "mean", "std"]
    source = textwrap.dedent('''
        def factory(num_classes, depth=2): ...
        def anything(**kwargs): ...
    ''')
    module = type(sys)("ownfactories_t")
    exec(compile(source, "ownfactories_t", "exec"), module.__dict__)
    sys.modules["ownfactories_t"] = module
    try:
        assert accepted("ownfactories_t.factory", ["input_shape", "num_classes"]) == ["num_classes"]
        assert accepted("ownfactories_t.anything", ["input_shape", "num_classes"]) == ["input_shape", "num_classes"]
    finally:
        del sys.modules["ownfactories_t"]


def test_pruning_further_refuses_zeros_a_per_layer_scope_cannot_keep(own, tmp_path):
    """A global 80% pruned.pt has some layers above 80%: a per-layer (or per-row) or SparseGPT prune to 0.8
    would have to add zeros back, so it is refused instead of silently overshooting."""
    _run(own, f"weights={own['home'] / 'smallcnn.pt'}", "sparsity=0.8", "finetune.epochs=0", run_dir=tmp_path / "a")
    for overrides in (["strategy.scope=layer"], ["strategy=wanda"], ["strategy=sparsegpt"]):
        with pytest.raises(UsageError, match="masks only shrink"):
            _run(own, f"weights={tmp_path / 'a' / 'pruned.pt'}", "sparsity=0.8", *overrides,
                 run_dir=tmp_path / overrides[0].replace("=", "_"))


def test_imagefolder_cache_key_follows_the_files(own, tmp_path):
    import shutil
    from prune_cli.config import compose_config, instantiate
    from prune_cli.pipeline.dense import dense_key
    root = tmp_path / "data"
    shutil.copytree(own["home"] / "data", root)
    cfg = compose_config(["dataset=imagefolder", f"dataset.root={root}"])
    schedule = instantiate(cfg.schedule, "schedule")
    before = dense_key(cfg, schedule, "cpu")
    assert dense_key(cfg, schedule, "cpu") == before
    image = next((root / "train" / "digit3").glob("*.png"))
    shutil.copy(image, image.with_name("extra.png"))
    assert dense_key(cfg, schedule, "cpu") != before


def test_factory_items_numpy_labels_and_bad_items():
    import numpy as np
    from prune_cli.data.own import label_of, read_all
    assert label_of(np.int64(3), "x") == 3 and label_of(torch.tensor(2), "x") == 2
    with pytest.raises(UsageError, match="label 2.5 is not an integer class index"):
        label_of(2.5, "x")
    with pytest.raises(UsageError, match="item 0: an image is a ndarray; expected a PIL image"):
        read_all([(np.zeros((1, 2, 2)), 0)], "dataset.train")
    with pytest.raises(UsageError, match="item 0: a dict; items must be"):
        read_all([{"image": 1}], "dataset.train")
