"""Watching a run: one history entry per epoch of every phase, per-epoch log lines off a terminal, loggers."""
from __future__ import annotations

import csv
import importlib
import importlib.util
import json

import pytest

import prune_cli
from conftest import run_in_process

RUN = ["device=cpu", "train.epochs=3", "finetune.epochs=2", "schedule=iterative", "schedule.rounds=2", "sparsity=0.8",
       "dataset.val_fraction=0.1", "measure.latency=false", "progress=false"]


def test_history_has_every_epoch_of_every_phase_and_the_csv_matches(tmp_path):
    report = prune_cli.run([*RUN, f"cache.dir={tmp_path / 'cache'}"], tmp_path / "a")
    stages = [(h["stage"], h["epoch"]) for h in report["history"]]
    assert stages == [("train", 1), ("train", 2), ("train", 3), ("round1.finetune", 1), ("round2.finetune", 1)]
    assert all(0.0 <= h["val_accuracy"] <= 1.0 and h["loss"] > 0 and h["lr"] == 1e-3 for h in report["history"])
    # The last fine-tune epoch's validation accuracy is the report's final one: measured on the same weights.
    assert report["history"][-1]["val_accuracy"] == report["val_accuracy"]["finetuned"]
    with open(tmp_path / "a" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["stage"], int(r["epoch"])) for r in rows] == stages
    assert [float(r["loss"]) for r in rows] == [h["loss"] for h in report["history"]]
    # A second run reusing the dense model still shows its training epochs, marked as cached.
    again = prune_cli.run([*RUN, "sparsity=0.5", f"cache.dir={tmp_path / 'cache'}"], tmp_path / "b")
    assert again["cache"]["dense"] == "reused"
    assert [h["loss"] for h in again["history"][:3]] == [h["loss"] for h in report["history"][:3]]
    assert all(h["cached"] for h in again["history"][:3]) and "cached" not in again["history"][3]
    assert "| train (cached) | 3 |" in (tmp_path / "b" / "report.md").read_text()


def test_a_run_off_a_terminal_logs_one_line_per_epoch(tmp_path, capsys, monkeypatch):
    code, out, err = run_in_process([*RUN, f"hydra.run.dir={tmp_path / 'run'}", f"cache.dir={tmp_path / 'c'}"],
                                    capsys, monkeypatch, tmp_path)
    assert code == 0, err
    log = (tmp_path / "run" / "prune-run.log").read_text()
    for stage, total in (("train", 3), ("round1.finetune", 1), ("round2.finetune", 1)):
        for epoch in range(1, total + 1):
            assert f"{stage} epoch {epoch}/{total}: loss " in log


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard not installed")
def test_tensorboard_and_csv_loggers_write_their_files(tmp_path):
    prune_cli.run([*RUN, "logger=[csv,tensorboard]", f"cache.dir={tmp_path / 'c'}"], tmp_path / "run")
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "run" / "metrics.csv").read_text().startswith("stage,epoch,epochs,loss,lr,seconds")


@pytest.mark.parametrize("overrides, message", [
    (["+logger.wandb={}"], "logger.wandb: unknown logger; there are csv, tensorboard, mlflow"),
    (["logger.csv.filename=../escape.csv"], "logger.csv.filename='../escape.csv': must be a plain file name"),
])
def test_bad_logger_settings_are_one_line(tmp_path, capsys, monkeypatch, overrides, message):
    code, _, err = run_in_process([*overrides, f"hydra.run.dir={tmp_path / 'run'}"], capsys, monkeypatch, tmp_path)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"prune-run: {message}"), err


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is not None, reason="mlflow is installed")
def test_a_missing_logger_package_names_its_extra(tmp_path, capsys, monkeypatch):
    code, _, err = run_in_process(["logger=mlflow", f"hydra.run.dir={tmp_path / 'run'}"], capsys, monkeypatch,
                                  tmp_path)
    assert code == 2
    assert err.strip() == ("prune-run: logger=mlflow: the mlflow package is not installed; pip install "
                           "'prune-cli[mlflow]' (or choose logger=csv)")


def _colours(path):
    from PIL import Image
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (800, 500)
        return {colour for _, colour in image.convert("RGB").getcolors(maxcolors=1 << 20)}


def _rgb(hex_colour):
    return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))


def test_history_png_draws_loss_and_accuracies_only_when_there_are_some(tmp_path):
    from prune_cli.report.history_plot import LOSS, TRAIN, VALIDATION, draw_history, phases
    history = [{"stage": "train", "epoch": i + 1, "epochs": 3, "loss": 2.0 / (i + 1), "lr": 1e-3, "seconds": 0.1}
               for i in range(3)]
    assert draw_history(history, tmp_path / "loss.png", title="magnitude / oneshot")
    colours = _colours(tmp_path / "loss.png")
    assert _rgb(LOSS) in colours and _rgb(TRAIN) not in colours and _rgb(VALIDATION) not in colours
    both = [dict(h, train_accuracy=0.8 + 0.05 * i, val_accuracy=0.9) for i, h in enumerate(history)]
    both += [dict(h, stage="round1.finetune") for h in both[:2]]
    assert draw_history(both, tmp_path / "both.png")
    assert {_rgb(LOSS), _rgb(TRAIN), _rgb(VALIDATION)} <= _colours(tmp_path / "both.png")
    # Phases are separate segments, in run order; a phase that comes back is a new one.
    assert phases(both) == [("train", [0, 1, 2]), ("round1.finetune", [3, 4])]
    assert phases([{"stage": "a"}, {"stage": "b"}, {"stage": "a", "cached": True}]) == [
        ("a", [0]), ("b", [1]), ("a (cached)", [2])]
    assert not draw_history([], tmp_path / "none.png") and not (tmp_path / "none.png").exists()


def test_training_accuracy_per_epoch_is_what_the_steps_predicted(tmp_path):
    import torch
    from torch import nn
    from prune_cli.data.splits import TensorSplit
    from prune_cli.training.loop import fit
    from prune_cli.training.settings import StageSettings
    torch.manual_seed(0)
    x, y = torch.rand(40, 5), torch.randint(0, 3, (40,))
    model = nn.Linear(5, 3)
    stats = []
    # lr 0: the weights never change, so the epoch's training accuracy is the model's accuracy on the split.
    fit(model, TensorSplit(x, y), StageSettings(epochs=1, lr=0.0, batch_size=16, optimizer="sgd"), stage="t", seed=0,
        on_epoch_stats=stats.append)
    expected = float((model(x).argmax(dim=1) == y).float().mean())
    assert stats[0]["train_accuracy"] == pytest.approx(expected)


def test_a_run_writes_history_png_and_report_md_shows_it(tmp_path):
    prune_cli.run(["train.epochs=2", "finetune.epochs=1", "measure.latency=false", "progress=false",
                   f"cache.dir={tmp_path / 'cache'}"], tmp_path / "run")
    assert _colours(tmp_path / "run" / "history.png")
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert all(0 <= entry["train_accuracy"] <= 1 for entry in report["history"])
    assert "train_accuracy" in (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert "![training loss and validation accuracy per epoch](history.png)" in (tmp_path / "run" / "report.md").read_text()
