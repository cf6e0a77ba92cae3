"""docs/report.schema.json describes report.json: every field documented, nothing undocumented written. (The
session fixture in conftest.py also checks every report any test run wrote.)"""
from __future__ import annotations

import json

import pytest

import prune_cli
from conftest import SCHEMA, schema_errors, run_in_process


def test_the_schema_is_a_valid_json_schema():
    import jsonschema
    jsonschema.Draft202012Validator.check_schema(json.loads(SCHEMA.read_text()))


@pytest.mark.parametrize("overrides", [
    ["strategy=activation", "model=lenet5", "quantize=int8_dynamic",
     "dataset.val_fraction=0.1", "finetune.distill=true"],
    ["schedule=lottery", "schedule.rounds=2", "schedule.reinit=true", "sparsity=0.999", "export.sparse=true"],
    ["strategy=compress"],
], ids=["structured-int8-val-distill", "lottery-collapse-csr", "compress"])
def test_reports_of_every_kind_match_the_schema(tmp_path, overrides):
    report = prune_cli.run(["train.epochs=2", "finetune.epochs=1", "progress=false", "measure.latency_budget_s=0.01",
                            *overrides], tmp_path / "run")
    assert schema_errors(report) == []
    assert schema_errors(json.loads((tmp_path / "run" / "report.json").read_text())) == []


def test_a_failed_report_matches_and_an_undocumented_field_does_not(tmp_path, capsys, monkeypatch):
    code, _, _ = run_in_process(["train.lr=1e30", "train.epochs=1", f"hydra.run.dir={tmp_path / 'run'}"],
                                capsys, monkeypatch, tmp_path)
    failed = json.loads((tmp_path / "run" / "report.json").read_text())
    assert code == 1 and failed["status"] == "failed" and schema_errors(failed) == []
    assert schema_errors({"status": "failed", "error": "x", "surprise": 1}) == [
        "(top): Additional properties are not allowed ('surprise' was unexpected)"]


def test_the_environment_stamp_names_versions_commit_and_the_command_that_reruns_the_run(tmp_path, capsys,
                                                                                        monkeypatch):
    import platform
    import subprocess
    from importlib import metadata

    import torch
    from conftest import TINY, read_report
    repo = tmp_path / "project"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "notes.md").write_text("v1\n")
    subprocess.run([*git, "add", "notes.md"], check=True)
    subprocess.run([*git, "commit", "-qm", "first"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    code, _, _ = run_in_process([*TINY, "strategy.scope=layer", "hydra.run.dir=../run"], capsys, monkeypatch, repo)
    assert code == 0
    env = read_report(tmp_path / "run")["environment"]
    assert env == {"prune_cli": metadata.version("prune-cli"), "torch": torch.__version__,
                   "torchvision": metadata.version("torchvision"), "hydra": metadata.version("hydra-core"),
                   "python": platform.python_version(), "cuda": torch.version.cuda,
                   "device_name": env["device_name"], "host": env["host"], "git_commit": head, "git_dirty": False,
                   "command": "prune-run device=cpu train.epochs=3 finetune.epochs=2 checkpoint.every_s=0 "
                              "measure.latency_budget_s=0.01 strategy.scope=layer"}
    assert env["device_name"] and env["host"]
    markdown = (tmp_path / "run" / "report.md").read_text()
    assert f"```bash\n{env['command']}\n```" in markdown
    assert f"| launched at commit | {head[:12]} |" in markdown
    assert "| train | 3 epochs, adam lr 0.001, batch 64 |" in markdown
    (repo / "notes.md").write_text("v2\n")  # a tracked file changed: the stamp says so; outside a repository none
    code, _, _ = run_in_process([*TINY, "hydra.run.dir=../run2"], capsys, monkeypatch, repo)
    assert code == 0 and read_report(tmp_path / "run2")["environment"]["git_dirty"] is True
    code, _, _ = run_in_process([*TINY, "hydra.run.dir=run3"], capsys, monkeypatch, tmp_path)
    env3 = read_report(tmp_path / "run3")["environment"]
    assert code == 0 and (env3["git_commit"], env3["git_dirty"]) == (None, None)


def test_labels_say_what_the_accuracies_are(run_api, tmp_path):
    from prune_cli.report.render import accuracy_labels
    report, run_dir = run_api("finetune.epochs=0", name="no-finetune")
    assert accuracy_labels(report) == ("accuracy dense", "accuracy final (not fine-tuned)")
    assert "| accuracy final (not fine-tuned) |" in (run_dir / "report.md").read_text()
    started, _ = run_api(f"weights={run_dir / 'pruned.pt'}", "sparsity=0.95", name="from-weights")
    assert accuracy_labels(started) == ("accuracy starting model (weights=)", "accuracy fine-tuned")
