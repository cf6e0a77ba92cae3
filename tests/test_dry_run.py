"""The dry run computes its plan with the functions the run uses: what it says is what a run then does."""
import pytest

from prune_cli.app.dry_run import make_plan
from prune_cli.config import compose_config

from conftest import TINY

CASES = {
    "oneshot": ["sparsity=0.9"],
    "iterative": ["schedule=iterative", "schedule.rounds=3", "finetune.epochs=4"],
    "gradual": ["schedule=gradual", "schedule.frequency=9"],
    "lottery": ["schedule=lottery", "schedule.rounds=2", "schedule.rewind_epoch=1"],
    "compress": ["strategy=compress", "sparsity=0.75"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_dry_run_after_a_run_says_the_dense_model_would_be_reused_and_matches_the_run(run_api, tmp_path,
                                                                                     monkeypatch, case):
    monkeypatch.setenv("PRUNE_CLI_CACHE", str(tmp_path / "cache"))  # a cache of this test's own
    overrides = [*TINY, "measure.latency=false", *CASES[case]]
    before = make_plan(compose_config(overrides))
    assert before["dense"] == "not cached: would be trained"
    report, _ = run_api(*CASES[case], "measure.latency=false")
    after = make_plan(compose_config(overrides))
    assert after["dense"].startswith("cached (dense-") and after["dense"].endswith("would be reused")
    assert report["cache"]["key"] in after["dense"]
    plan = after["loop"]
    if plan["kind"] == "rounds":
        assert [(r["target"], r["finetune_epochs"]) for r in plan["rounds"]] == \
            [(r["target"], r["epochs"]) for r in report["rounds"]]
    elif plan["kind"] == "gradual":
        assert [(p["step"], p["target"]) for p in plan["prunes"]] == \
            [(r["step"], r["target"]) for r in report["rounds"]]
    else:
        assert plan["kind"] == "smaller_model"
        assert (plan["width"], plan["prunable_weights"], plan["dense_prunable_weights"]) == \
            (report["compress"]["width"], report["compress"]["prunable_weights"],
             report["compress"]["dense_prunable_weights"])


def test_dry_run_with_the_cache_disabled_says_so():
    plan = make_plan(compose_config(["cache.enabled=false"]))
    assert plan["dense"] == "cache disabled: the dense model would be trained"
