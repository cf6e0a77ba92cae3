"""CUDA runs (skipped without a GPU): device placement through every stage, and a checkpoint that moves."""
import pytest
import torch

import prune_cli

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("strategy,schedule", [("magnitude", "oneshot"), ("gradient", "gradual"),
                                               ("activation", "iterative"), ("l0", "lottery"),
                                               ("compress", "oneshot")])
def test_cuda_run_completes_and_reloads_on_cpu(run_api, strategy, schedule):
    overrides = ["device=cuda", f"strategy={strategy}", f"schedule={schedule}", "sparsity=0.8",
                 "model=lenet5", "finetune.epochs=2"]
    if schedule in ("iterative", "lottery"):
        overrides.append("schedule.rounds=2")
    if strategy == "l0":
        overrides.append("strategy.epochs=1")
    report, run_dir = run_api(*overrides, name=f"{strategy}-{schedule}")
    assert report["experiment"]["device"].startswith("cuda")
    assert report["latency"]["masked"]["batch_256_ms"] > 0
    model = prune_cli.load_checkpoint(run_dir / "pruned.pt", map_location="cpu")
    x = torch.rand(8, 1, 8, 8)
    assert torch.isfinite(model(x)).all()
