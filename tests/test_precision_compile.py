"""Mixed precision and compiled steps: bf16 and fp16 end to end on the CPU with exact sparsity, masked weights
exactly zero in every mode, compiled steps close to eager and not recompiled when only the masks change."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from prune_cli.data.splits import TensorSplit
from prune_cli.pruning.masks import Masks
from prune_cli.training import step as step_module
from prune_cli.training.evaluate import evaluate
from prune_cli.training.loop import fit
from prune_cli.training.settings import StageSettings


def counting_backend(calls: list):
    """A torch.compile backend (any callable is one) that counts the graphs it is given and runs them as
    captured: the compile path without inductor's minutes of C++ on two cores."""
    def backend(graph_module, example_inputs, **options):  # options: torch.compile passes mode=
        calls.append(len(graph_module.graph.nodes))
        symbolic.extend(i for i in example_inputs if isinstance(i, torch.SymInt))
        return graph_module.forward
    symbolic: list = []
    backend.symbolic = symbolic  # the symbolic sizes graphs were compiled for (none: every shape is static)
    return backend


def data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    return TensorSplit(x, (x.flatten(1).mean(1) > 0.5).long())


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 2))


def lenet5():
    from prune_cli.models import LeNet5
    torch.manual_seed(0)
    return LeNet5((1, 8, 8), 2, (0.5,), (0.25,))


def half_masks(model):
    g = torch.Generator().manual_seed(1)
    return Masks({name: (torch.rand(p.shape, generator=g) > 0.5).float()
                  for name, p in model.named_parameters() if name.endswith("weight")})


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_run_in_reduced_precision_completes_with_exact_sparsity(run_api, precision):
    report, run_dir = run_api(f"train.precision={precision}", f"finetune.precision={precision}", "sparsity=0.8")
    assert report["status"] == "completed"
    assert report["precision"] == {"train": precision, "finetune": precision, "eval": precision,
                                   "matmul": torch.get_float32_matmul_precision()}
    saved = torch.load(run_dir / "pruned.pt", weights_only=True)
    prunable = [name for name in saved["masks"]]
    zeros = sum(int((saved["state_dict"][name] == 0).sum()) for name in prunable)
    total = sum(saved["state_dict"][name].numel() for name in prunable)
    assert (zeros, total) == (report["sparsity"]["zeros"], report["sparsity"]["prunable_weights"])
    assert report["sparsity"]["achieved"] == zeros / total and round(total * 0.8) == zeros
    assert all(t.dtype == torch.float32 for t in saved["state_dict"].values() if t.is_floating_point())


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_masked_weights_stay_exactly_zero_in_every_precision(precision):
    model = mlp()
    masks = half_masks(model)
    masks.apply_(model)
    settings = StageSettings(epochs=2, lr=0.05, batch_size=16, optimizer="sgd", precision=precision)
    fit(model, data(), settings, stage="t", seed=0, masks=masks)
    for name, param in model.named_parameters():
        if name in masks:
            assert bool((param[masks[name] == 0] == 0).all()) and bool((param[masks[name] == 1] != 0).all())


@pytest.mark.parametrize("build", [mlp, lenet5], ids=["mlp", "lenet5"])
def test_a_compiled_step_matches_eager_and_keeps_masked_weights_zero(monkeypatch, build):
    calls: list = []
    monkeypatch.setattr(step_module, "BACKEND", counting_backend(calls))
    trained = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        model = build()
        masks = half_masks(model)
        masks.apply_(model)
        settings = StageSettings(epochs=3, lr=1e-2, batch_size=32, compile=compiled)
        fit(model, data(), settings, stage="t", seed=0, masks=masks)
        for name, param in model.named_parameters():
            if name in masks:
                assert bool((param[masks[name] == 0] == 0).all())
        trained[compiled] = (model, evaluate(model, data(64, seed=1)))
    assert calls, "the compiled step never reached the backend"
    assert trained[True][1] == pytest.approx(trained[False][1], abs=1 / 64)  # at most one image apart
    for (name, eager), compiled in zip(trained[False][0].state_dict().items(), trained[True][0].state_dict().values()):
        assert torch.allclose(eager, compiled, atol=1e-5), name


@pytest.mark.parametrize("build", [mlp, lenet5], ids=["mlp", "lenet5"])
def test_a_stage_compiles_once_per_batch_shape_whatever_its_masks_do(monkeypatch, build):
    """Gradual pruning hands new masks to the running stage every few steps: they are arguments of the
    compiled step, so nothing is compiled again. An epoch's shorter last batch is one more static graph (not a
    recompile with a symbolic batch size that every later full batch would then run)."""
    calls: list = []
    backend = counting_backend(calls)
    monkeypatch.setattr(step_module, "BACKEND", backend)
    settings = StageSettings(epochs=2, lr=1e-2, batch_size=32, compile=True)
    model = build()
    fit(model, data(96), settings, stage="t", seed=0, masks=half_masks(model))  # 3 full batches per epoch
    one_shape = len(calls)
    model = build()
    fit(model, data(100), settings, stage="t", seed=0, masks=half_masks(model))  # and one of 4: another shape
    per_stage = len(calls) - one_shape
    assert 0 < one_shape < per_stage  # the short batch's graphs (those that depend on the batch's size)

    def prune_more(step):
        return Masks({name: (p.detach().abs() > p.detach().abs().median()).float()
                      for name, p in model.named_parameters() if name.endswith("weight")})

    for stage in range(2):  # two rounds of a schedule: each stage compiles its own step, once per shape
        before = len(calls)
        model = build()
        fit(model, data(100), settings, stage=f"round{stage}", seed=0, masks=half_masks(model),
            after_step=prune_more)  # new masks after every step
        assert len(calls) - before == per_stage
    assert backend.symbolic == []


def test_compile_time_is_reported_and_a_compiled_run_completes(run_api, monkeypatch):
    calls: list = []
    monkeypatch.setattr(step_module, "BACKEND", counting_backend(calls))
    report, run_dir = run_api("train.compile=true", "finetune.compile=reduce-overhead", "schedule=iterative",
                              "schedule.rounds=2")
    assert report["status"] == "completed" and calls
    assert report["compile"] == {"train": True, "finetune": "reduce-overhead"}
    assert 0 < report["timings"]["compile"] < report["timings"]["train"] + report["timings"]["finetune"]
    saved = torch.load(run_dir / "pruned.pt", weights_only=True)
    for name, mask in saved["masks"].items():
        assert bool((saved["state_dict"][name][mask == 0] == 0).all())


def test_inductor_compiles_a_real_step_on_the_cpu():
    """The default backend once, for real (about ten seconds of compiling on two cores)."""
    model = mlp()
    masks = half_masks(model)
    masks.apply_(model)
    eager = mlp()
    eager.load_state_dict(model.state_dict())
    settings = StageSettings(epochs=2, lr=1e-2, batch_size=32)
    fit(eager, data(), settings, stage="t", seed=0, masks=masks)
    fit(model, data(), StageSettings(epochs=2, lr=1e-2, batch_size=32, compile=True), stage="t", seed=0,
        masks=masks)
    for name, param in model.named_parameters():
        if name in masks:
            assert bool((param[masks[name] == 0] == 0).all())
    for (name, a), b in zip(eager.state_dict().items(), model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-4), name


def test_sgd_momentum_made_before_a_compiled_step_gives_the_same_steps():
    """SGD makes its momentum buffers on its first step; a compiled step gets them made first (inside a CUDA
    graph they would be outputs whose memory the next replay reuses). Zero buffers give the same steps, bit
    for bit, Nesterov included; a loaded buffer is kept."""
    models = [mlp(), mlp()]
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True) for m in models]
    step_module._state_made_eagerly(optimizers[1], None, torch.device("cpu"))
    buffers = [optimizers[1].state[p]["momentum_buffer"] for p in models[1].parameters()]
    assert all(b.shape == p.shape and not b.any() for b, p in zip(buffers, models[1].parameters()))
    x, y = data(32).x, data(32).y
    for _ in range(3):
        for model, optimizer in zip(models, optimizers):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(a, b)
    kept = optimizers[1].state[next(models[1].parameters())]["momentum_buffer"]
    step_module._state_made_eagerly(optimizers[1], None, torch.device("cpu"))
    assert optimizers[1].state[next(models[1].parameters())]["momentum_buffer"] is kept


@pytest.mark.parametrize("saved_compiled", [False, True], ids=["eager-saved", "compiled-saved"])
def test_a_resumed_optimizer_keeps_this_runs_lr_kind_and_kernels(saved_compiled):
    """A run resumes its optimizer's state, not the saved run's choices of how to step it: a compiled step
    needs its lr as a tensor (on the run's device), an eager one (fp16's compiled stages too) a float,
    whatever the saved run used."""
    import copy

    from prune_cli.training.settings import load_optimizer_state, make_optimizer
    model = mlp()
    saver = make_optimizer(model, StageSettings(epochs=1, lr=0.03, batch_size=32, compile=saved_compiled))
    nn.functional.cross_entropy(model(data(32).x), data(32).y).backward()
    saver.step()
    saver.param_groups[0]["foreach"] = True  # a kernel choice the resumed run must not take over
    saved = copy.deepcopy(saver.state_dict())
    for compiled, precision in ((False, "fp32"), (True, "fp32"), (True, "fp16")):
        settings = StageSettings(epochs=1, lr=0.01, batch_size=32, compile=compiled, precision=precision)
        optimizer = make_optimizer(model, settings)
        load_optimizer_state(optimizer, copy.deepcopy(saved))
        group = optimizer.param_groups[0]
        as_tensor = compiled and precision != "fp16"
        # 0.03 as saved; a float32 tensor on either side holds it as float32
        lr = float(torch.tensor(0.03)) if as_tensor or saved_compiled else 0.03
        assert isinstance(group["lr"], torch.Tensor) is as_tensor and float(group["lr"]) == lr
        assert group["foreach"] is None
        assert len(optimizer.state) == len(saved["state"]) == 4
        for param, index in zip(model.parameters(), range(4)):
            for name, value in saved["state"][index].items():
                assert torch.equal(optimizer.state[param][name], value), (index, name)


def test_a_compiled_stage_compiles_however_many_stages_came_before(monkeypatch):
    """Each stage builds its own step; without clearing the last stages' compiled code, dynamo stops
    compiling a function after a few entries (8 in torch 2.14) and quietly runs it eagerly. A lottery
    schedule has twice as many stages as rounds."""
    calls: list = []
    monkeypatch.setattr(step_module, "BACKEND", counting_backend(calls))
    model = mlp()
    settings = StageSettings(epochs=1, lr=1e-2, batch_size=32, compile=True)
    reached = []
    for stage in range(12):
        before = len(calls)
        fit(model, data(64), settings, stage=f"round{stage}", seed=0, masks=half_masks(model))
        reached.append(len(calls) > before)
    assert reached == [True] * 12


def test_an_fp16_stage_resumes_with_its_loss_scale():
    """fp16's gradient scaler starts at 2**16 and halves on each overflowing step, which it skips: a stage
    resumed with a fresh scaler would skip other steps than the uninterrupted one. With the saved scaler
    state it ends on the same weights, bit for bit."""
    import copy
    settings = StageSettings(epochs=3, lr=0.1, batch_size=32, precision="fp16")
    whole = mlp()
    fit(whole, data(), settings, stage="s", seed=0)
    first = mlp()
    saved = {}

    def keep(epoch, optimizer, _masks, scaler):
        if epoch == 1:
            saved.update(model=copy.deepcopy(first.state_dict()), optimizer=copy.deepcopy(optimizer.state_dict()),
                         scaler=scaler.state_dict())
    fit(first, data(), settings, stage="s", seed=0, on_epoch_end=keep)
    assert saved["scaler"]["scale"] < 2.0 ** 16  # the first epoch overflowed: the test can tell the two apart

    def resumed(scaler_state):
        model = mlp()
        model.load_state_dict(saved["model"])
        fit(model, data(), settings, stage="s", seed=0, start_epoch=1,
            optimizer_state=copy.deepcopy(saved["optimizer"]), scaler_state=scaler_state)
        return model.state_dict()
    expected = whole.state_dict()
    assert all(torch.equal(value, expected[name]) for name, value in resumed(saved["scaler"]).items())
    assert not all(torch.equal(value, expected[name]) for name, value in resumed(None).items())


def test_a_stopped_fp16_run_resumes_to_the_uninterrupted_weights(run_api, tmp_path, monkeypatch):
    """The run state keeps the scaler's state with the optimizer's. A large lr makes the fine-tuning's first
    epoch overflow (its saved scale is below the fresh 2**16), so a fresh scaler would skip another step."""
    from conftest import stopped_after_the_first_finetune_epoch

    from prune_cli.storage.safe_load import safe_load
    args = ["train.precision=fp16", "finetune.precision=fp16", "train.lr=1.0", "finetune.epochs=3",
            "measure.latency=false"]
    whole, whole_dir = run_api(*args, name="whole")
    with stopped_after_the_first_finetune_epoch(monkeypatch):
        run_api(*args, name="stopped")
    position = safe_load(tmp_path / "stopped" / "state.pt")["position"]
    assert (position["stage"], position["epoch"]) == ("round1.finetune", 1)
    assert position["scaler"]["scale"] < 2.0 ** 16
    resumed, resumed_dir = run_api(*args, name="stopped")
    assert resumed["resumed_from"] == {"stage": "round1.finetune", "epoch": 1}
    assert resumed["accuracy"] == whole["accuracy"]
    a = safe_load(whole_dir / "pruned.pt")["state_dict"]
    b = safe_load(resumed_dir / "pruned.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
