"""Reading torchvision's files safely: MNIST-style idx files, and CIFAR pickles through an unpickler that only
rebuilds numpy arrays (a stray file in the data directory cannot run code).

CIFAR's pickles are read without torchvision's md5 check: it costs a full read of 170 MB on every run and
rejects any file that is not the official one (tests generate their own).
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import torch

from prune_cli.data.files import Source, first_line as _first_line
from prune_cli.errors import UsageError


def _read_idx(source: Source, root: Path, images: str, labels: str) -> tuple[torch.Tensor, torch.Tensor]:
    from torchvision.datasets.mnist import read_image_file, read_label_file
    folder = root / source.folder
    x = _guarded(source, folder / images, read_image_file)
    y = _guarded(source, folder / labels, read_label_file)
    if len(x) != len(y):
        raise UsageError(f"dataset={source.name}: {folder / images} holds {len(x)} images but "
                         f"{folder / labels} {len(y)} labels")
    return x.unsqueeze(1).contiguous(), y.long()


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays, lists, dicts and strings only: a CIFAR batch needs nothing else."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are expected)")


def _load_cifar_batch(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    import numpy as np
    with open(path, "rb") as f:
        entry = _ArrayUnpickler(io.BytesIO(f.read()), encoding="latin1").load()
    if not isinstance(entry, dict):
        raise ValueError("not a CIFAR batch (expected a dict)")
    entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
    labels = entry.get("labels", entry.get("fine_labels"))
    if "data" not in entry or labels is None:
        raise ValueError("not a CIFAR batch (no 'data' and 'labels'/'fine_labels')")
    data = np.asarray(entry["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != len(labels):
        raise ValueError(f"data of shape {data.shape} for {len(labels)} labels (expected (N, 3072))")
    x = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())  # channel-major, as the files store it
    return x, torch.as_tensor(list(labels), dtype=torch.long)


def _read_cifar(source: Source, root: Path, files: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [_guarded(source, root / source.folder / name, _load_cifar_batch) for name in files]
    return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])


def _guarded(source: Source, path: Path, reader):
    try:
        return reader(str(path))
    except PermissionError:
        raise UsageError(f"dataset={source.name}: cannot read {path}: permission denied") from None
    except (OSError, ValueError, TypeError, KeyError, IndexError, EOFError, RuntimeError, AssertionError,
            pickle.UnpicklingError) as err:  # torchvision's idx reader asserts on a bad header
        raise UsageError(f"dataset={source.name}: could not read {path} ({_first_line(err)}); is it a "
                         f"complete, uncompressed file in torchvision's format?") from None


def read(source: Source, root: Path):
    """(x_train, y_train), (x_test, y_test) as uint8 (N, C, H, W) and long labels."""
    if source.kind == "idx":
        return (_read_idx(source, root, *source.train_files), _read_idx(source, root, *source.test_files))
    return _read_cifar(source, root, source.train_files), _read_cifar(source, root, source.test_files)
