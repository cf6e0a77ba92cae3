"""The dense cache: keyed by content, atomic, locked across processes, and never trusting a bad entry."""
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from prune_cli.storage.cache import DenseCache, cache_key
from prune_cli.storage.safe_load import safe_load

ENTRY = {"trained": {"fc.weight": torch.ones(3, 2)}, "rewind": None, "accuracy": 0.5, "seconds": 1.0}


class NotATensor:  # pickled as a class reference: weights_only loading must refuse it
    pass


@pytest.fixture
def one_thread():
    """Tiny models on a shared machine run several times faster on one thread (no spinning on busy cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    torch.set_num_threads(before)


@pytest.fixture
def cache(tmp_path):
    return DenseCache(str(tmp_path / "cache"))


# --- keys -----------------------------------------------------------------------------------------------------

def test_key_is_stable_and_depends_on_every_value():
    parts = {"model": {"name": "mlp", "hidden": [256]}, "train": {"lr": 1e-3, "epochs": 20}, "seed": 0}
    reordered = {"seed": 0, "train": {"epochs": 20, "lr": 1e-3}, "model": {"hidden": [256], "name": "mlp"}}
    assert cache_key(parts) == cache_key(reordered)
    assert cache_key(parts) != cache_key(dict(parts, seed=1))
    assert cache_key(parts) != cache_key(dict(parts, train={"lr": 1e-3, "epochs": 21}))


# --- entries --------------------------------------------------------------------------------------------------

def test_store_then_load(cache):
    with cache.locked("k"):
        assert cache.load("k") is None
        cache.store("k", ENTRY)
    entry = cache.load("k")
    assert entry["key"] == "k" and entry["accuracy"] == 0.5
    assert torch.equal(entry["trained"]["fc.weight"], ENTRY["trained"]["fc.weight"])
    assert sorted(p.name for p in cache.dir.iterdir()) == ["dense-k.pt", "dense-k.pt.lock"]  # no temp files


def _truncated(path):
    torch.save(dict(ENTRY, key="k"), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


CORRUPT = {
    "garbage": lambda path: path.write_bytes(b"this is not a checkpoint" * 10),
    "empty": lambda path: path.write_bytes(b""),
    "truncated": _truncated,
    "not a dict": lambda path: torch.save([1, 2, 3], path),
    "missing field": lambda path: torch.save({"key": "k", "trained": {}}, path),
    "other key": lambda path: torch.save(dict(ENTRY, key="other"), path),
    "unsafe pickle": lambda path: torch.save(dict(ENTRY, key="k", extra=NotATensor()), path),
}


@pytest.mark.parametrize("damage", list(CORRUPT), ids=list(CORRUPT))
def test_a_bad_entry_is_never_trusted_and_is_removed(cache, caplog, damage):
    cache.dir.mkdir(parents=True)
    CORRUPT[damage](cache.path("k"))
    with caplog.at_level(logging.WARNING, logger="prune_cli.storage.cache"):
        assert cache.load("k") is None
    assert "cache entry dense-k.pt is unusable" in caplog.text and "rebuilding it" in caplog.text
    assert not cache.path("k").exists()


def test_a_dead_writers_temp_file_is_removed_under_the_lock(cache):
    cache.dir.mkdir(parents=True)
    orphan = cache.dir / ".dense-k.pt.1a2b3c4d.tmp"  # what atomic_torch_save leaves when killed mid-write
    orphan.write_bytes(b"half")
    other = cache.dir / ".dense-other.pt.1a2b3c4d.tmp"  # another entry's writer may be alive: not ours
    other.write_bytes(b"half")
    with cache.locked("k"):
        assert not orphan.exists() and other.exists()
        assert cache.load("k") is None


def test_a_failed_write_costs_reuse_not_the_run(cache, caplog, monkeypatch):
    def disk_full(obj, path):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr("prune_cli.storage.cache.atomic_torch_save", disk_full)
    with caplog.at_level(logging.WARNING, logger="prune_cli.storage.cache"), cache.locked("k"):
        cache.store("k", ENTRY)
    assert "could not write cache entry dense-k.pt (No space left on device)" in caplog.text
    assert cache.load("k") is None


def test_disabled_cache_touches_nothing(tmp_path):
    off = DenseCache(str(tmp_path / "cache"), enabled=False)
    with off.locked("k"):
        off.store("k", ENTRY)
        assert off.load("k") is None
    assert not (tmp_path / "cache").exists()


# --- in the pipeline ------------------------------------------------------------------------------------------

QUICK = ["device=cpu", "train.epochs=2", "finetune.epochs=1", "train.batch_size=256", "finetune.batch_size=256",
         "measure.latency=false", "checkpoint.every_s=0"]


def test_a_corrupt_entry_is_rebuilt_by_the_next_run(run_api, tmp_path, monkeypatch, caplog, one_thread):
    monkeypatch.setenv("PRUNE_CLI_CACHE", str(tmp_path / "cache"))
    first, _ = run_api(*QUICK, "sparsity=0.5", name="first", tiny=False)
    assert first["cache"]["dense"] == "computed"
    entry = tmp_path / "cache" / f"dense-{first['cache']['key']}.pt"
    data = entry.read_bytes()
    entry.write_bytes(data[: len(data) // 3])  # as if a writer had bypassed the temp file and died
    with caplog.at_level(logging.WARNING, logger="prune_cli.storage.cache"):
        second, _ = run_api(*QUICK, "sparsity=0.9", name="second", tiny=False)
    assert second["status"] == "completed" and second["cache"]["dense"] == "computed"
    assert "is unusable" in caplog.text
    assert second["accuracy"]["dense"] == first["accuracy"]["dense"]  # same config, same dense model
    rebuilt = DenseCache(str(tmp_path / "cache")).load(first["cache"]["key"])  # what the next run reuses
    assert rebuilt is not None and rebuilt["accuracy"] == first["accuracy"]["dense"]


@pytest.mark.parametrize("kind", ["dense", "scores"])
def test_an_entry_of_the_right_key_but_wrong_shapes_is_rebuilt(run_api, tmp_path, monkeypatch, caplog, one_thread,
                                                                kind):
    """A crafted (or stale-format) entry with the right name must cost one rebuild, never every later run."""
    monkeypatch.setenv("PRUNE_CLI_CACHE", str(tmp_path / "cache"))
    first, first_dir = run_api(*QUICK, "sparsity=0.5", name="first", tiny=False)
    entries = sorted((tmp_path / "cache").glob(f"{kind}-*.pt"))
    assert len(entries) == 1
    entry = torch.load(entries[0], weights_only=True)
    tensors = entry["trained"] if kind == "dense" else entry["scores"]
    name = sorted(tensors)[-1]
    tensors[name] = torch.zeros(3, 3)  # the right key, a tensor of the wrong shape
    torch.save(entry, entries[0])
    with caplog.at_level(logging.WARNING, logger="prune_cli.storage.cache"):
        second, second_dir = run_api(*QUICK, "sparsity=0.5", name="second", tiny=False)
    assert second["status"] == "completed" and second["cache"][kind] == "computed"
    assert "is unusable" in caplog.text and "another shape" in caplog.text
    third, _ = run_api(*QUICK, "sparsity=0.5", name="third", tiny=False)
    assert third["cache"][kind] == "reused"  # the rebuilt entry serves the next run
    a = safe_load(first_dir / "pruned.pt")["state_dict"]
    b = safe_load(second_dir / "pruned.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_job_killed_while_training_leaves_no_entry_and_no_stale_lock(run_api, tmp_path, monkeypatch,
                                                                      one_thread):
    """kill -9 in the middle of dense training: the lock dies with the process (flock), nothing half-done is
    left under the entry's name, and the next job with the same config trains the model and completes."""
    from filelock import FileLock, Timeout

    cache_dir = tmp_path / "cache"
    # 30 epochs of 3 steps: long enough to be caught training (its first step alone pays ~1 s of imports).
    overrides = ["train.epochs=30", "train.batch_size=512", "finetune.epochs=1", "measure.latency=false",
                 "checkpoint.every_s=0"]
    env = dict(os.environ, PRUNE_CLI_CACHE=str(cache_dir), PYTHONUNBUFFERED="1", **one_thread)
    victim = subprocess.Popen([sys.executable, "-m", "prune_cli.app.cli", *overrides,
                               f"hydra.run.dir={tmp_path / 'victim'}"], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:  # until the victim holds the lock of its (not yet existing) entry: it is training
            assert victim.poll() is None and time.monotonic() < deadline, "never saw the lock taken"
            locks = list(cache_dir.glob("dense-*.pt.lock"))
            if locks:
                probe = FileLock(str(locks[0]))
                try:
                    probe.acquire(timeout=0)
                    probe.release()  # it opened the file but has not locked it yet
                except Timeout:
                    break  # held by the victim: another process is excluded
            time.sleep(0.05)
        os.kill(victim.pid, signal.SIGKILL)
    finally:
        victim.kill()
        victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert not list(cache_dir.glob("dense-*.pt"))  # nothing a later job could trust
    started = time.monotonic()
    with FileLock(str(locks[0]), timeout=10):  # not stale: the kernel released it with the process
        assert time.monotonic() - started < 5
    monkeypatch.setenv("PRUNE_CLI_CACHE", str(cache_dir))
    report, _ = run_api(*overrides, name="after", tiny=False)
    assert report["status"] == "completed" and report["cache"]["dense"] == "computed"
    assert locks[0].name == f"dense-{report['cache']['key']}.pt.lock"
    assert not list(cache_dir.glob(".*.tmp"))


def test_a_reader_without_the_lock_leaves_a_bad_entry_to_its_writer(cache, caplog):
    """Across processes the ranks other than 0 read the entry rank 0 found; only rank 0, holding the lock,
    deletes an unusable one."""
    cache.dir.mkdir(parents=True)
    CORRUPT["garbage"](cache.path("k"))
    with caplog.at_level(logging.WARNING, logger="prune_cli.storage.cache"):
        assert cache.load("k", repair=False) is None
    assert "cache entry dense-k.pt is unusable" in caplog.text and "rebuilding it" not in caplog.text
    assert cache.path("k").read_bytes() == b"this is not a checkpoint" * 10
