"""docs/own-model.md, run as written: its files are saved under the names in their first lines, and its
commands are run in that directory, in order (prune-run through its console entry, in this process)."""
from __future__ import annotations

import json
import re
import runpy
import shlex
import sys
from pathlib import Path

import torch

from tests.conftest import run_in_process

DOC = Path(__file__).resolve().parents[1] / "docs" / "own-model.md"


def blocks(text: str) -> list[tuple[str, str]]:
    return re.findall(r"```(\w+)\n(.*?)```", text, flags=re.S)


def test_own_model_walkthrough_runs_as_written(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    commands = []
    for language, body in blocks(DOC.read_text()):
        if language == "bash":
            commands += [line for line in body.splitlines() if line.strip()]
            continue
        name = body.splitlines()[0].lstrip("# ").strip()
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(body)
    assert commands, "the walk-through has no commands"
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "mymodels", raising=False)  # another test's module of that name
    printed = []
    try:
        for command in commands:
            for part in command.split("&&"):
                words = shlex.split(part)
                if words[0] == "python":
                    runpy.run_path(words[1], run_name="__main__")
                    printed.append(capsys.readouterr().out)
                    continue
                assert words[0] == "prune-run", command
                code, _, err = run_in_process(words[1:], capsys, monkeypatch, tmp_path)
                assert code == 0, err
    finally:
        sys.modules.pop("mymodels", None)
    runs = {p.parent.name: json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*/report.json")}
    assert set(runs) == {"cnn80", "cnn80_ignore", "cnn90"}
    # What the doc says about each run.
    printed_accuracy = float(re.search(r"test accuracy (\d\.\d+)", "".join(printed)).group(1))
    assert round(runs["cnn80"]["accuracy"]["dense"], 4) == printed_accuracy
    assert runs["cnn80"]["cache"]["dense"] == "loaded"
    assert [l["name"] for l in runs["cnn80_ignore"]["layers"] if l.get("ignored")] == [
        "features.0.weight", "head.3.weight"]
    assert "SmallCNN" in "".join(printed)
    old = torch.load(tmp_path / "runs/cnn80/pruned.pt", weights_only=True)["state_dict"]
    new = torch.load(tmp_path / "runs/cnn90/pruned.pt", weights_only=True)["state_dict"]
    names = [l["name"] for l in runs["cnn90"]["layers"]]
    assert all(bool((new[n][old[n] == 0] == 0).all()) for n in names)
    assert runs["cnn90"]["sparsity"]["zeros"] == round(0.9 * runs["cnn90"]["sparsity"]["prunable_weights"])
