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
