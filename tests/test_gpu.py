"""CUDA runs (skipped without a GPU): device placement through every stage, and a checkpoint that moves."""
import pytest
import torch

import prune_cli

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("strategy,schedule", [("magnitude", "oneshot"), ("gradient", "gradual"),
                                               ("activation", "iterative"), ("l0", "lottery"),
                                               ("compress", "oneshot"), ("wanda", "oneshot"),
                                               ("sparsegpt", "iterative")])
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


def test_cuda_row_scope_nm_pattern_and_int8_on_the_cpu(run_api):
    report, run_dir = run_api("device=cuda", "model=lenet300", "strategy=wanda", "strategy.pattern=2:4",
                              "sparsity=0.5", "finetune.epochs=1", "quantize=int8_dynamic", name="wanda-nm-int8")
    assert report["sparsity"]["zeros"] == report["sparsity"]["prunable_weights"] // 2
    assert "CPU" in report["quantized"]["note"] and report["quantized"]["latency"] is None
    model = prune_cli.load_checkpoint(run_dir / "quantized.pt", quantized=True, map_location="cuda")
    assert torch.isfinite(model(torch.rand(4, 1, 8, 8))).all()


def test_two_four_masks_are_timed_on_semi_structured_kernels(run_api):
    """Ampere or newer: the masked Linear layers become semi-structured sparse weights, timed against the same
    model in float16 on dense kernels; both compute the same outputs."""
    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("semi-structured sparse kernels need compute capability 8.0+")
    report, run_dir = run_api("device=cuda", "model=mlp", "model.hidden=[512,512]", "dataset=synthetic",
                              "dataset.shape=[1,16,16]", "strategy=magnitude", "strategy.pattern=2:4",
                              "sparsity=0.5", "finetune.epochs=1", "measure.latency_budget_s=0.2")
    info = report["semi_structured"]
    assert info["used"] and info["layers"], info
    assert {"semi_structured", "masked_fp16"} <= set(report["latency"])
    assert report["speedup"]["method"] == "semi-structured sparse kernel (2:4, float16)"
    assert report["speedup"]["baseline"] == "masked model in float16"
    assert all(v > 0 for v in report["speedup"]["measured"].values())
    from prune_cli.measure.semi_structured import semi_structured_pair
    model = prune_cli.load_checkpoint(run_dir / "pruned.pt", map_location="cuda")
    masks = torch.load(run_dir / "pruned.pt", weights_only=True)["masks"]
    from prune_cli.pruning.patterns import NMPattern
    pair, _ = semi_structured_pair(model, masks, NMPattern.parse("2:4"), "cuda")
    x = torch.rand(256, 1, 16, 16, device="cuda", dtype=torch.float16)
    with torch.inference_mode():
        assert torch.allclose(pair["semi_structured"](x), pair["masked_fp16"](x), atol=1e-2, rtol=1e-2)


def test_bf16_reduce_overhead_resnet20_completes_with_exact_sparsity(run_api):
    """The GPU-grade mode on a CIFAR-sized network: bf16 autocast, the whole step compiled and replayed as CUDA
    graphs, channels-last; sparsity still exact from the saved weights."""
    report, run_dir = run_api("device=cuda", "model=resnet20", "dataset=synthetic", "dataset.shape=[3,32,32]",
                              "dataset.train_size=512", "dataset.test_size=128", "train.batch_size=128",
                              "finetune.batch_size=128", "train.precision=bf16", "finetune.precision=bf16",
                              "train.compile=reduce-overhead", "finetune.compile=reduce-overhead", "sparsity=0.8",
                              name="resnet20-bf16-graphs")
    assert report["precision"]["train"] == "bf16" and report["precision"]["matmul"] == "high"
    assert report["timings"]["compile"] > 0
    saved = torch.load(run_dir / "pruned.pt", weights_only=True)
    zeros = sum(int((saved["state_dict"][n] == 0).sum()) for n in saved["masks"])
    assert zeros == report["sparsity"]["zeros"]


@pytest.mark.parametrize("precision, compile", [("fp32", False), ("bf16", False), ("fp16", False),
                                                ("bf16", "reduce-overhead"), ("fp16", "reduce-overhead")])
def test_nothing_inside_an_epoch_waits_on_the_device(precision, compile):
    """From the second step to the last, a training epoch on CUDA makes no host-device synchronisation:
    torch raises on any under sync debug mode "error" (the first step is allowed its lazy initialisations,
    and the epoch's end its one deliberate sync for the loss). fp16's scaler steps the fused optimizer with
    its found-inf flag on the device. A compiled step is checked in its second epoch, once compiling and
    recording (timed, with deliberate syncs) are behind it: what every later epoch does."""
    from prune_cli.data.splits import AugmentedSplit
    from prune_cli.models import CIFARResNet
    from prune_cli.pruning.masks import Masks
    from prune_cli.training.loop import fit
    from prune_cli.training.settings import StageSettings
    torch.manual_seed(0)
    model = CIFARResNet((3, 32, 32), 10, (0.5,) * 3, (0.25,) * 3, depth=20).cuda()
    masks = Masks({n: (torch.rand_like(p) > 0.5).float() for n, p in model.named_parameters() if p.dim() == 4})
    data = AugmentedSplit(torch.randint(0, 256, (1024, 3, 32, 32), dtype=torch.uint8, device="cuda"),
                          torch.randint(0, 10, (1024,), device="cuda"))
    steps = data.num_batches(128)
    epochs = 2 if compile else 1
    first = (epochs - 1) * steps + 1  # the checked epoch's first step (after which the checks begin)

    def guard(step):
        torch.cuda.set_sync_debug_mode("error" if first <= step < epochs * steps else "default")

    try:
        fit(model, data, StageSettings(epochs=epochs, lr=0.1, batch_size=128, optimizer="sgd", precision=precision,
                                       compile=compile), stage="t", seed=0, masks=masks, after_step=guard)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs (NCCL takes one GPU per process)")
def test_torchrun_on_two_gpus_runs_one_experiment_with_nccl(tmp_path):
    import json
    import os
    import subprocess
    import sys
    env = dict(os.environ, PRUNE_CLI_CACHE=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "prune_cli.app.cli", "device=cuda", "model=lenet5",
                           "train.epochs=2", "finetune.epochs=1", "sparsity=0.8", "train.precision=bf16",
                           "finetune.precision=bf16", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["distributed"] == {"world_size": 2, "backend": "nccl", "masks_checked": 1, "masks_differed": 0}
    assert report["sparsity"]["zeros"] == round(0.8 * report["sparsity"]["prunable_weights"])


def test_cuda_graph_latency_is_reported_beside_the_eager_one(run_api):
    report, _ = run_api("device=cuda", "model=lenet5", "strategy=activation", "sparsity=0.5", "finetune.epochs=1",
                        "measure.batch_sizes=[1,64]", name="graph-latency")
    graphs = report["latency_cuda_graph"]
    assert set(graphs) == {"dense", "masked", "shrunk"}
    assert all(set(entry) == {"batch_1_ms", "batch_64_ms"} and min(entry.values()) > 0 for entry in graphs.values())
    assert set(report["speedup"]["measured_cuda_graph"]) == {"batch_1", "batch_64"}


@pytest.mark.parametrize("optimizer,precision", [("sgd", "bf16"), ("adam", "bf16"), ("sgd", "fp16"),
                                                 ("adam", "fp16")])
def test_cuda_graph_steps_whose_state_is_made_on_the_first_step(optimizer, precision):
    """SGD's momentum buffers and fp16's loss scale are made on an optimizer's first step: before the compiled
    step, not inside a CUDA graph (whose outputs the next replay overwrites). Two stages in a row train with
    finite losses and masked weights exactly zero, and a stage resumed from a saved optimizer state (read onto
    the CPU, as resume reads it) completes; a compiled update (bf16) finds its lr, and Adam its step counts, on
    the GPU after the resume, an fp16 stage (eager update after the scaler) a float lr."""
    import io
    import math

    from prune_cli.data.splits import AugmentedSplit
    from prune_cli.models import CIFARResNet
    from prune_cli.pruning.masks import Masks
    from prune_cli.training.loop import fit
    from prune_cli.training.settings import StageSettings
    torch.manual_seed(0)
    model = CIFARResNet((3, 32, 32), 10, (0.5,) * 3, (0.25,) * 3, depth=20).cuda()
    masks = Masks({n: (torch.rand_like(p) > 0.5).float() for n, p in model.named_parameters() if p.dim() == 4})
    masks.apply_(model)
    data = AugmentedSplit(torch.randint(0, 256, (512, 3, 32, 32), dtype=torch.uint8, device="cuda"),
                          torch.randint(0, 10, (512,), device="cuda"))
    settings = StageSettings(epochs=3, lr=0.01, batch_size=128, optimizer=optimizer, precision=precision,
                             compile="reduce-overhead")
    stats, saved = [], {}

    def keep(epoch, opt, _masks, _scaler):
        buffer = io.BytesIO()
        torch.save(opt.state_dict(), buffer)
        buffer.seek(0)
        saved[epoch] = torch.load(buffer, map_location="cpu", weights_only=True)

    for stage in ("first", "second"):
        fit(model, data, settings, stage=stage, seed=0, masks=masks, on_epoch_stats=stats.append, on_epoch_end=keep)
    resumed = {}
    fit(model, data, settings, stage="second", seed=0, masks=masks, start_epoch=1, optimizer_state=saved[1],
        on_epoch_stats=stats.append, on_epoch_end=lambda epoch, opt, _masks, _scaler: resumed.setdefault("optimizer", opt))
    group = resumed["optimizer"].param_groups[0]
    if precision == "fp16":
        assert isinstance(group["lr"], float)
    else:
        assert group["lr"].is_cuda
        if optimizer == "adam":
            assert all(state["step"].is_cuda for state in resumed["optimizer"].state.values())
    assert len(stats) == 8 and all(math.isfinite(s["loss"]) for s in stats), stats
    for name, param in model.named_parameters():
        if name in masks:
            assert bool((param[masks[name] == 0] == 0).all()), name
