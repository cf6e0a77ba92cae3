"""torchvision datasets from files the tests write in torchvision's own on-disk layout: never a download."""
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import prune_run, read_report
from prune_cli.data.splits import TensorSplit
from prune_cli.errors import UsageError
from prune_cli.data.files import SOURCES
from prune_cli.data.splits import AugmentedSplit, LoaderSplit, augment, augmentation_draws
from prune_cli.data.torchvision_sets import load
from test_models import _plain_cpu_kernels  # noqa: F401  (autouse: one thread, PyTorch's own kernels)


# ------------------------------------------------------------------------------------ generated files

def _images(n, shape, classes, seed):
    """Learnable uint8 images: a random prototype per class plus noise (labels cycle through the classes)."""
    rng = np.random.default_rng(seed)
    prototypes = rng.integers(0, 256, size=(classes, *shape))
    labels = np.arange(n) % classes
    rng.shuffle(labels)
    noise = rng.normal(0, 40, size=(n, *shape))
    return np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8), labels.astype(np.uint8)


def _write_idx(path: Path, array: np.ndarray) -> None:
    """idx format: magic 0x0000 08 <ndim> (unsigned bytes), big-endian int32 sizes, then the bytes."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, folder: str = "MNIST", train: int = 120, test: int = 40, seed: int = 0) -> Path:
    raw = Path(root) / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", train), ("t10k", test)):
        x, y = _images(n, (28, 28), 10, seed + (prefix == "t10k"))
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", x)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", y)
    return raw


def write_cifar(root: Path, classes: int = 10, per_batch: int = 20, test: int = 40, seed: int = 0) -> Path:
    """CIFAR's python layout: pickled dicts with 'data' (N, 3072) uint8 (channel-major) and the labels."""
    if classes == 10:
        folder, train_files, key = "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "labels"
        test_file, meta = "test_batch", ("batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    else:
        folder, train_files, key = "cifar-100-python", ["train"], "fine_labels"
        test_file, meta = "test", ("meta", {"fine_label_names": [f"c{i}" for i in range(100)]})
    base = Path(root) / folder
    base.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(train_files + [test_file]):
        n = test if name == test_file else per_batch
        x, y = _images(n, (3, 32, 32), classes, seed + i)
        with open(base / name, "wb") as f:
            pickle.dump({"batch_label": name, key: [int(v) for v in y], "data": x.reshape(n, -1)}, f)
    with open(base / meta[0], "wb") as f:
        pickle.dump(meta[1], f)
    return base


def cfg_for(name, root, **extra):
    from omegaconf import OmegaConf
    base = {"name": name, "root": str(root), "download": False, "val_fraction": 0.0, "split_seed": 0,
            "augment": name.startswith("cifar"), "in_memory": True, "workers": 0}
    base.update(extra)
    return OmegaConf.create(base)


# ------------------------------------------------------------------------------------------- loading

@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_idx_datasets_load_as_unit_float_tensors(tmp_path, name, folder):
    write_mnist(tmp_path, folder, train=50, test=20)
    data = load(cfg_for(name, tmp_path))
    assert data.info.input_shape == (1, 28, 28) and data.info.num_classes == 10
    assert isinstance(data.train, TensorSplit) and isinstance(data.test, TensorSplit)
    assert len(data.train) == 50 and len(data.test) == 20 and data.val is None
    x, y = next(data.train.batches(64))
    assert x.dtype == torch.float32 and y.dtype == torch.long and x.shape == (50, 1, 28, 28)
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    # Statistics come from the training split and agree with the plain computation.
    assert data.info.mean[0] == pytest.approx(float(data.train.x.mean()), abs=1e-5)
    assert data.info.std[0] == pytest.approx(float(data.train.x.std()), abs=1e-5)


def test_idx_reads_exactly_what_was_written(tmp_path):
    raw = write_mnist(tmp_path, train=30, test=10)
    data = load(cfg_for("mnist", tmp_path))
    header = 16
    written = np.frombuffer((raw / "train-images-idx3-ubyte").read_bytes()[header:], dtype=np.uint8)
    assert torch.equal((data.train.x * 255).round().to(torch.uint8).flatten(), torch.from_numpy(written.copy()))
    labels = np.frombuffer((raw / "train-labels-idx1-ubyte").read_bytes()[8:], dtype=np.uint8)
    assert data.train.y.tolist() == labels.tolist()


def test_gzipped_idx_files_are_unpacked(tmp_path):
    import gzip
    raw = write_mnist(tmp_path, train=20, test=10)
    for path in list(raw.iterdir()):
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    data = load(cfg_for("mnist", tmp_path))
    assert len(data.train) == 20 and (raw / "train-images-idx3-ubyte").is_file()


def test_downloaded_cifar_archive_is_unpacked(tmp_path):
    import shutil
    import tarfile
    base = write_cifar(tmp_path / "build", per_batch=4, test=4)
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(base, arcname="cifar-10-batches-py")
    shutil.rmtree(tmp_path / "build")
    data = load(cfg_for("cifar10", tmp_path))
    assert len(data.train) == 20 and (tmp_path / "cifar-10-batches-py" / "test_batch").is_file()


@pytest.mark.parametrize("classes", [10, 100])
def test_cifar_layout_loads_with_augmented_training_split(tmp_path, classes):
    write_cifar(tmp_path, classes=classes, per_batch=20 if classes == 10 else 200, test=30)
    data = load(cfg_for(f"cifar{classes}", tmp_path))
    assert data.info.input_shape == (3, 32, 32) and data.info.num_classes == classes
    assert len(data.train) == (100 if classes == 10 else 200) and len(data.test) == 30
    assert isinstance(data.train, AugmentedSplit) and isinstance(data.test, TensorSplit)
    assert len(data.info.mean) == 3 and all(0 < s < 1 for s in data.info.std)
    x, y = next(data.train.batches(16, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert x.dtype == torch.float32 and x.shape == (16, 3, 32, 32) and y.dtype == torch.long
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    # Deterministic given the generator (resumed runs replay the same batches) and different across seeds.
    again, _ = next(data.train.batches(16, shuffle=True, generator=torch.Generator().manual_seed(0)))
    other, _ = next(data.train.batches(16, shuffle=True, generator=torch.Generator().manual_seed(1)))
    assert torch.equal(x, again) and not torch.equal(x, other)
    # Unshuffled batches are the plain images, in file order.
    plain, labels = next(data.train.batches(1000))
    assert torch.equal(plain, data.train.x.float() / 255) and labels.tolist() == data.train.y.tolist()


def test_cifar_without_augmentation_is_a_tensor_split(tmp_path):
    write_cifar(tmp_path, per_batch=10, test=10)
    data = load(cfg_for("cifar10", tmp_path, augment=False))
    assert isinstance(data.train, TensorSplit) and data.train.x.dtype == torch.float32


def test_augment_is_random_crop_with_zero_padding_and_flip():
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    out = augment(x, *augmentation_draws(6, torch.Generator().manual_seed(3), 4, True, "cpu"))
    g = torch.Generator().manual_seed(3)
    shifts = torch.randint(0, 9, (6, 2), generator=g)
    flips = torch.rand(6, generator=g) < 0.5
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(6):
        expected = padded[i, :, shifts[i, 0]:shifts[i, 0] + 32, shifts[i, 1]:shifts[i, 1] + 32]
        assert torch.equal(out[i], expected.flip(-1) if flips[i] else expected)


def test_validation_is_carved_from_train_never_test(tmp_path):
    write_mnist(tmp_path, train=100, test=40)
    full = load(cfg_for("mnist", tmp_path))
    data = load(cfg_for("mnist", tmp_path, val_fraction=0.2))
    assert len(data.val) == 20 and len(data.train) == 80 and len(data.test) == 40
    assert torch.equal(data.test.x, full.test.x)
    # Train and validation together are exactly the original training images.
    rows = lambda t: sorted(map(tuple, t.flatten(1).mul(255).round().int().tolist()))
    assert rows(torch.cat([data.train.x, data.val.x])) == rows(full.train.x)


def test_streamed_split_matches_in_memory_batches(tmp_path):
    write_cifar(tmp_path, per_batch=8, test=12)
    memory = load(cfg_for("cifar10", tmp_path))
    streamed = load(cfg_for("cifar10", tmp_path, in_memory=False, workers=0))
    assert isinstance(streamed.train, LoaderSplit) and isinstance(streamed.test, LoaderSplit)
    assert streamed.train.num_batches(16) == 3 and len(streamed.test) == 12
    a = torch.cat([x for x, _ in memory.test.batches(5)])
    b = torch.cat([x for x, _ in streamed.test.batches(5)])
    assert torch.equal(a, b)
    xs = [x for x, _ in streamed.train.batches(16, shuffle=True, generator=torch.Generator().manual_seed(0))]
    assert [len(x) for x in xs] == [16, 16, 8] and all(x.dtype == torch.float32 for x in xs)


# --------------------------------------------------------------------------------------- bad input

def test_missing_files_name_the_dataset_directory_and_files(tmp_path):
    with pytest.raises(UsageError) as err:
        load(cfg_for("mnist", tmp_path / "nowhere"))
    message = str(err.value)
    assert "\n" not in message and message.startswith("dataset=mnist: files not found under")
    assert str(tmp_path / "nowhere" / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert "dataset.download=true" in message


def test_partly_missing_files_name_only_the_missing_ones(tmp_path):
    base = write_cifar(tmp_path, per_batch=4, test=4)
    (base / "data_batch_3").unlink()
    with pytest.raises(UsageError, match=r"need data_batch_3\)"):
        load(cfg_for("cifar10", tmp_path))


def test_failed_download_is_one_line(tmp_path, monkeypatch):
    """torchvision's own downloader runs and fails (no network): its error becomes part of one line."""
    from urllib.error import URLError
    import torchvision.datasets.mnist as tv_mnist

    def offline(*args, **kwargs):
        raise URLError("[Errno -2] Name or service not known")
    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", offline)
    with pytest.raises(UsageError) as err:
        load(cfg_for("mnist", tmp_path, download=True))
    message = str(err.value)
    assert "\n" not in message and "download failed" in message and "Name or service not known" in message
    assert "files not found under" in message


def test_root_that_is_not_a_readable_directory(tmp_path):
    root = tmp_path / "file"
    root.write_text("not a directory")
    with pytest.raises(UsageError, match="dataset=cifar10: dataset.root=.* is not a directory"):
        load(cfg_for("cifar10", root))


def test_corrupt_files_are_bad_input(tmp_path):
    raw = write_mnist(tmp_path, train=10, test=10)
    (raw / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08")
    with pytest.raises(UsageError, match="could not read .*train-images-idx3-ubyte"):
        load(cfg_for("mnist", tmp_path))
    base = write_cifar(tmp_path, per_batch=4, test=4)
    with open(base / "data_batch_1", "wb") as f:
        pickle.dump({"data": Path("x")}, f)  # a class that is not a numpy array: refused, never run
    with pytest.raises(UsageError, match="could not read .*data_batch_1"):
        load(cfg_for("cifar10", tmp_path))


def test_known_sources_describe_their_layout():
    assert SOURCES["mnist"].folder == "MNIST/raw" and SOURCES["cifar100"].num_classes == 100
    assert SOURCES["cifar10"].shape == (3, 32, 32) and SOURCES["fashion_mnist"].sizes == (60000, 10000)


# -------------------------------------------------------------------------------------- full runs

def test_full_pipeline_on_generated_mnist_in_process(tmp_path, run_api):
    write_mnist(tmp_path / "data", train=120, test=40)
    report, run_dir = run_api("dataset=mnist", f"dataset.root={tmp_path / 'data'}", "dataset.download=false",
                              "model=lenet300", "model.hidden=[32,16]", "train.epochs=1", "finetune.epochs=1",
                              "sparsity=0.8", tiny=False)
    assert report["status"] == "completed" and report["experiment"]["dataset"] == "mnist"
    assert report["sparsity"]["zeros"] == round(0.8 * report["sparsity"]["prunable_weights"])
    assert 0.0 <= report["accuracy"]["finetuned"] <= 1.0


def test_full_pipeline_on_generated_cifar_with_structured_pruning(tmp_path, run_api):
    write_cifar(tmp_path / "data", per_batch=12, test=20)
    report, run_dir = run_api("dataset=cifar10", f"dataset.root={tmp_path / 'data'}", "dataset.download=false",
                              "model=resnet20", "+model.width=0.25", "strategy=magnitude",
                              "strategy.granularity=structured", "strategy.scope=layer", "sparsity=0.3",
                              "train.epochs=1", "finetune.epochs=1", "train.batch_size=32",
                              "finetune.batch_size=32", "measure.latency=false", tiny=False)
    assert report["status"] == "completed"
    assert report["sparsity"]["achieved"] > 0.1


def test_missing_files_in_a_subprocess_exit_2_with_one_line(tmp_path):
    run_dir = tmp_path / "run"
    result = prune_run(["dataset=cifar10", f"dataset.root={tmp_path / 'empty'}", "dataset.download=false",
                        f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("prune-run: dataset=cifar10: files not found under")
    assert "data_batch_1" in lines[0] and "test_batch" in lines[0]
    assert read_report(run_dir)["status"] == "failed"


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(counts=st.lists(st.integers(2, 40), min_size=2, max_size=8), fraction=st.floats(0.05, 0.6),
       seed=st.integers(0, 2 ** 31 - 1))
def test_stratified_split_is_exactly_scikit_learns(counts, fraction, seed):
    """Our split (which spares every run the import of sklearn.model_selection) gives scikit-learn's sets."""
    import numpy as np
    from sklearn.model_selection import train_test_split
    from prune_cli.data.splits import stratified_split
    y = np.repeat(np.arange(len(counts)), counts)
    np.random.RandomState(seed % 1000).shuffle(y)
    try:
        expected = train_test_split(np.arange(len(y)), test_size=fraction, random_state=seed, stratify=y)
    except ValueError:
        with pytest.raises(ValueError):
            stratified_split(torch.as_tensor(y), fraction, seed)
        return
    train, test = stratified_split(torch.as_tensor(y), fraction, seed)
    assert train.tolist() == sorted(expected[0]) and test.tolist() == sorted(expected[1])


def test_digits_are_read_as_scikit_learn_reads_them():
    import numpy as np
    from sklearn.datasets import load_digits
    from prune_cli.data.builtin import digits_arrays
    images, target = digits_arrays()
    bunch = load_digits()
    assert np.array_equal(images, bunch.images) and np.array_equal(target, bunch.target)
