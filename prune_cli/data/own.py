"""A user's own data: an ImageFolder directory, or any ``torch.utils.data.Dataset`` a factory builds.

Both end as the splits every dataset gives (images in [0, 1], (N, C, H, W), integer labels): loaded into memory
once as uint8 when they fit ``dataset.memory_mb`` (or ``in_memory: true``), streamed through a DataLoader
otherwise. A validation split is the set's own (``DIR/val``, ``dataset.val``) or carved, stratified, from
training; never from test.
"""
from __future__ import annotations

import os

import importlib
from typing import Any

import torch

from prune_cli.data.splits import AugmentedSplit, DataInfo, Dataset, LoaderSplit, TensorSplit, stratified_split, \
    to_float
from prune_cli.errors import UsageError


class Materialised(torch.utils.data.Dataset):
    """(uint8 image tensor (C, H, W), label) items of another map-style dataset, read once into memory."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def as_uint8(image, where: str) -> torch.Tensor:
    """One item's image as a (C, H, W) uint8 tensor: a PIL image, a uint8 tensor, or a float tensor in [0, 1]."""
    if isinstance(image, torch.Tensor):
        if image.dim() == 2:
            image = image.unsqueeze(0)
        if image.dim() != 3:
            raise UsageError(f"{where}: an image of shape {tuple(image.shape)}; expected (C, H, W)")
        if image.dtype == torch.uint8:
            return image
        if image.is_floating_point():
            if image.numel() and (float(image.min()) < 0.0 or float(image.max()) > 1.0):
                raise UsageError(f"{where}: float images must be in [0, 1] (got {float(image.min()):.3g} .. "
                                 f"{float(image.max()):.3g})")
            return (image * 255.0).round().to(torch.uint8)
        raise UsageError(f"{where}: images of dtype {image.dtype}; expected uint8 or float in [0, 1]")
    from PIL import Image
    if not isinstance(image, Image.Image):
        raise UsageError(f"{where}: an image is a {type(image).__name__}; expected a PIL image or a (C, H, W) "
                         f"tensor (uint8, or float in [0, 1])")
    from torchvision.transforms.functional import pil_to_tensor
    return pil_to_tensor(image)


def label_of(value, where: str) -> int:
    """An integer class index: a Python or NumPy integer, or a one-element integer tensor."""
    import operator
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = value.item()
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)
    except TypeError:
        raise UsageError(f"{where}: label {value!r} is not an integer class index") from None


def _item(dataset, i: int, where: str):
    item = dataset[i]
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise UsageError(f"{where} item {i}: a {type(item).__name__}; items must be (image, label) pairs")
    return item


def read_all(dataset, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every item, as one uint8 tensor and one label tensor (all images must have one shape)."""
    images, labels = [], []
    for i in range(len(dataset)):
        image, label = _item(dataset, i, where)
        images.append(as_uint8(image, f"{where} item {i}"))
        labels.append(label_of(label, f"{where} item {i}"))
        if images[-1].shape != images[0].shape:
            raise UsageError(f"{where}: item {i} is {tuple(images[-1].shape)}, item 0 {tuple(images[0].shape)}; "
                             f"all images must have one shape")
    if not images:
        raise UsageError(f"{where}: holds no items")
    return torch.stack(images), torch.tensor(labels, dtype=torch.long)


def stream_stats(dataset, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of a streamed training set, in one pass."""
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    count = 0
    for i in range(len(dataset)):
        x = as_uint8(dataset[i][0], "training item").to(torch.float64) / 255.0
        total += x.sum(dim=(1, 2))
        squares += (x * x).sum(dim=(1, 2))
        count += x.shape[1] * x.shape[2]
    mean = total / count
    std = ((squares - count * mean * mean) / max(1, count - 1)).clamp_min(0).sqrt().clamp_min(1e-6)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


class _Items(torch.utils.data.Dataset):
    """A streamed dataset's items as (uint8 image, label) tensors, for the DataLoader."""

    def __init__(self, dataset, where: str):
        self.dataset, self.where = dataset, where

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        image, label = _item(self.dataset, i, self.where)
        return as_uint8(image, f"{self.where} item {i}"), label_of(label, f"{self.where} item {i}")


def _subset(dataset, index):
    return torch.utils.data.Subset(dataset, [int(i) for i in index])


def build_splits(name: str, train, test, val, labels_of, cfg, num_classes: int,
                 shape: tuple[int, int, int]) -> Dataset:
    """Splits from map-style datasets of (image, label); ``labels_of(dataset)`` gives a split's labels without
    reading its images (for the stratified validation split)."""
    val_fraction = float(cfg.get("val_fraction") or 0.0)
    seed = int(cfg.get("split_seed") or 0)
    notes = []
    if val is None and val_fraction:
        labels = labels_of(train)
        try:
            train_idx, val_idx = stratified_split(labels, val_fraction, seed)
        except ValueError as err:
            raise UsageError(f"dataset.val_fraction={val_fraction}: cannot carve a stratified validation split "
                             f"from {len(labels)} training images ({str(err).splitlines()[0]})") from None
        train, val = _subset(train, train_idx), _subset(train, val_idx)
    c, h, w = shape
    sizes = len(train) + len(test) + (len(val) if val is not None else 0)
    wanted = cfg.get("in_memory", "auto")
    fits = sizes * c * h * w <= float(cfg.get("memory_mb", 1024)) * 2 ** 20
    augmented = bool(cfg.get("augment") or False)
    if augmented:
        notes.append("training batches augmented: random crop (padding 4) + horizontal flip")
    if wanted is True or (wanted == "auto" and fits):
        x, y = read_all(train, f"dataset={name} train")
        from prune_cli.data.splits import channel_stats
        mean, std = channel_stats(x)
        train_split = AugmentedSplit(x, y) if augmented else TensorSplit(to_float(x), y)
        def split(data, where):
            images, labels = read_all(data, where)
            if tuple(images.shape[1:]) != tuple(x.shape[1:]):
                raise UsageError(f"{where}: images of shape {tuple(images.shape[1:])}, the training images' are "
                                 f"{tuple(x.shape[1:])}; every split needs one shape")
            return TensorSplit(to_float(images), labels)
        test_split = split(test, f"dataset={name} test")
        val_split = split(val, f"dataset={name} val") if val is not None else None
        notes.append(f"{sizes:,} images read into memory once")
    else:
        workers = int(cfg.get("workers", 2))
        for data, split_name in ((test, "test"), (val, "val")):
            if data is not None and len(data):
                first = as_uint8(_item(data, 0, f"dataset={name} {split_name}")[0], f"dataset={name} {split_name}")
                if tuple(first.shape) != tuple(shape):
                    raise UsageError(f"dataset={name} {split_name}: images of shape {tuple(first.shape)}, the "
                                     f"training images' are {tuple(shape)}; every split needs one shape")
        mean, std = stream_stats(train, c)
        train_split = LoaderSplit(_Items(train, f"dataset={name} train"), None, workers, augmented=augmented)
        test_split = LoaderSplit(_Items(test, f"dataset={name} test"), None, workers)
        val_split = LoaderSplit(_Items(val, f"dataset={name} val"), None, workers) if val is not None else None
        notes.append(f"{sizes:,} images streamed from their files through a DataLoader with {workers} workers")
    info = DataInfo(name, shape, num_classes, mean, std)
    return Dataset(info, train_split, test_split, val_split, notes)


# ----------------------------------------------------------------------------------------- ImageFolder

SPLITS = ("train", "test", "val")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def load_image_folder(cfg) -> Dataset:
    """torchvision's ImageFolder layout: ``root/train/<class>/*``, ``root/test/<class>/*``, optional
    ``root/val/<class>/*``. Channels and size come from the first training image unless set."""
    from pathlib import Path
    if not cfg.get("root"):
        raise UsageError("dataset.root=null: dataset=imagefolder needs the directory holding train/ and test/")
    root = Path(str(cfg.root)).expanduser()
    if not root.is_dir():
        raise UsageError(f"dataset.root={cfg.root}: no such directory")
    folders = {}
    for split in SPLITS:
        if (root / split).is_dir():
            folders[split] = _scan(root / split, f"dataset.root={cfg.root}: {split}/")
        elif split != "val":
            raise UsageError(f"dataset.root={cfg.root}: no {split}/ directory (expected {split}/<class>/<image>)")
    classes = folders["train"][0]
    for split, (names, _) in folders.items():
        if names != classes:
            odd = sorted(set(names) ^ set(classes))
            raise UsageError(f"dataset.root={cfg.root}: {split}/ has other classes than train/ ({odd[0]!r} is in "
                             f"only one of them); every split needs the same class folders")
    first = folders["train"][1][0][0]
    channels, size = _first_image_facts(first, cfg)
    if len(classes) < 2:
        raise UsageError(f"dataset.root={cfg.root}: train/ has {len(classes)} class folder ({classes[0]!r}); "
                         f"classifying needs at least 2")
    datasets = {split: _Folder(samples, channels, size) for split, (_, samples) in folders.items()}
    data = build_splits("imagefolder", datasets["train"], datasets["test"], datasets.get("val"),
                        lambda d: _labels(d), cfg, len(classes), (channels, *size))
    data.notes.insert(0, f"{len(classes)} classes from {root}: {', '.join(classes[:5])}"
                         + (", ..." if len(classes) > 5 else ""))
    return data


def folder_identity(root) -> str:
    """A digest of an ImageFolder directory's files (relative path, size, modification time): part of the dense
    cache key, so changed or added images never reuse a model trained on the old ones."""
    import hashlib
    from pathlib import Path
    base = Path(str(root)).expanduser().resolve()
    digest = hashlib.sha256(str(base).encode())
    for split in SPLITS:
        if not (base / split).is_dir():
            continue
        try:
            _, samples = _scan(base / split, f"dataset.root={root}: {split}/")
        except UsageError:
            continue  # the run itself says what is wrong with the folder
        for path, _ in samples:
            stat = os.stat(path)
            digest.update(f"{os.path.relpath(path, base)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def _scan(directory, where: str) -> tuple[list[str], list[tuple[str, int]]]:
    """(class names, [(image path, class index)]) of one split: torchvision's ImageFolder layout, walked without
    following a directory link out of the split or into a directory already walked (a link loop)."""
    import os
    from torchvision.datasets.folder import IMG_EXTENSIONS
    base = os.path.realpath(directory)
    classes = sorted(entry.name for entry in os.scandir(directory) if entry.is_dir() and _inside(entry.path, base))
    if not classes:
        raise UsageError(f"{where} holds no class folders (expected <class>/<image>)")
    samples, seen = [], set()
    for index, name in enumerate(classes):
        found = 0
        for root, dirs, names in os.walk(os.path.join(directory, name), followlinks=True):
            real = os.path.realpath(root)
            if real in seen or not _inside(real, base):
                dirs[:] = []  # a loop, or a link out of the split: not walked
                continue
            seen.add(real)
            dirs.sort()
            for file in sorted(names):
                path = os.path.join(root, file)
                if file.lower().endswith(IMG_EXTENSIONS) and os.path.isfile(path):
                    samples.append((path, index))
                    found += 1
        if not found:
            raise UsageError(f"{where}{name}/ holds no image files ({', '.join(IMG_EXTENSIONS)})")
    return classes, samples


def _inside(path: str, base: str) -> bool:
    real = os.path.realpath(path)
    return real == base or real.startswith(base + os.sep)


def _first_image_facts(path: str, cfg) -> tuple[int, tuple[int, int]]:
    image = _open(path)
    channels = cfg.get("channels") or (1 if image.mode in GREY_MODES else 3)
    if int(channels) not in (1, 3):
        raise UsageError(f"dataset.channels={channels}: must be 1 (grey) or 3 (colour)")
    size = cfg.get("image_size")
    if size is None:
        size = (image.height, image.width)
    elif isinstance(size, int):
        size = (int(size), int(size))
    return int(channels), (int(size[0]), int(size[1]))


def _open(path: str):
    import warnings
    from PIL import Image, UnidentifiedImageError
    try:
        with warnings.catch_warnings():
            # Pillow warns above 89 million pixels and refuses above twice that: a decompression bomb either way.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                return image.copy()
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        raise UsageError(f"dataset=imagefolder: {path} is too large to decode safely (a decompression bomb?): "
                         f"{str(err).splitlines()[0][:120]}") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise UsageError(f"dataset=imagefolder: cannot read {path} as an image ({str(err).splitlines()[0][:120]})") \
            from None


class _Folder(torch.utils.data.Dataset):
    """One split's files: opened on access, converted to the set's channels and resized to its size."""

    def __init__(self, samples: list[tuple[str, int]], channels: int, size: tuple[int, int]):
        self.samples, self.channels, self.size = samples, channels, size

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        from torchvision.transforms.functional import pil_to_tensor
        path, label = self.samples[i]
        image = _open(path).convert("L" if self.channels == 1 else "RGB")
        if (image.height, image.width) != self.size:
            image = image.resize((self.size[1], self.size[0]))
        return pil_to_tensor(image), label


def _labels(dataset) -> torch.Tensor:
    if isinstance(dataset, _Folder):
        return torch.tensor([label for _, label in dataset.samples], dtype=torch.long)
    return torch.tensor([label_of(_item(dataset, i, "dataset")[1], f"item {i}") for i in range(len(dataset))],
                        dtype=torch.long)


# -------------------------------------------------------------------------------------- factory datasets

def load_factory(cfg) -> Dataset:
    """``dataset.train`` / ``dataset.test`` (and optional ``dataset.val``) each name a factory or Dataset class
    with ``_target_`` and its arguments; items are (image, integer label), images a PIL image or a (C, H, W)
    tensor (uint8, or float in [0, 1])."""
    built = {}
    for split in SPLITS:
        node = cfg.get(split)
        if node is None:
            if split != "val":
                raise UsageError(f"dataset.{split}=null: dataset=custom needs a {{_target_: ...}} that builds the "
                                 f"{split} split")
            continue
        built[split] = _call(node, f"dataset.{split}")
    if len(built["train"]) == 0:
        raise UsageError("dataset.train: the dataset it builds holds no items")
    image = as_uint8(_item(built["train"], 0, "dataset.train")[0], "dataset.train item 0")
    shape = tuple(int(s) for s in image.shape)
    labels = _labels(built["train"])
    num_classes = int(cfg.get("num_classes") or int(labels.max()) + 1)
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise UsageError(f"dataset.num_classes={num_classes}: training labels run from {int(labels.min())} to "
                         f"{int(labels.max())}")
    return build_splits(str(cfg.get("name", "custom")), built["train"], built["test"], built.get("val"),
                        _labels, cfg, num_classes, shape)


def _call(node: Any, where: str):
    if not isinstance(node, dict) and hasattr(node, "items"):
        node = dict(node.items())
    target = node.get("_target_") if isinstance(node, dict) else None
    if not isinstance(target, str) or "." not in target:
        raise UsageError(f"{where}={node!r}: must be {{_target_: module.factory, ...its arguments}}")
    module_name, _, attr = target.rpartition(".")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise UsageError(f"{where}._target_={target}: cannot be imported ({str(err).splitlines()[0]})") from None
    kwargs = {k: v for k, v in node.items() if k != "_target_"}
    try:
        dataset = factory(**kwargs)
    except (TypeError, ValueError, OSError) as err:
        raise UsageError(f"{where}._target_={target}: {type(err).__name__}: {str(err).splitlines()[0]}") from None
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise UsageError(f"{where}._target_={target}: built a {type(dataset).__name__}, not a map-style Dataset "
                         f"(with __len__ and __getitem__)")
    return dataset
