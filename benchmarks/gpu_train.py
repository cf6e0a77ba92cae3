"""GPU-grade training throughput: prune_cli's fit() in each precision/compile setting against hand-written
loops of the same kind, in images per second.

ResNet-20 (prune_cli.models.CIFARResNet) on a synthetic CIFAR-shaped set already on the device, SGD with
Nesterov momentum, lr 0.1, cross-entropy, every contender from the same initial weights. Each contender first
runs one warm-up epoch (for compiled ones: the compile, reported as warm-up seconds), then its timed epochs,
synchronised. Contenders:

- hand eager fp32: what a researcher writes (randperm batches, the optimizer, nothing else);
- hand bf16 channels_last: autocast bf16 and NHWC;
- hand compiled: the same step under torch.compile (mode reduce-overhead: CUDA graphs on a GPU);
- fit fp32, fit bf16, fit bf16 + compile: prune_cli.training.loop.fit with train.precision / train.compile.

Ratios compare fit with its hand-written kind (the targets: eager fp32 >= 0.97x, bf16 + reduce-overhead
>= 0.9x the hand compiled loop). On the CPU, ``--tiny`` runs small sizes so a test keeps the script working.

    python benchmarks/gpu_train.py [--arch resnet20] [--n 50000] [--batch 128] [--epochs 2]
    python benchmarks/gpu_train.py --tiny --compile-backend eager     # CPU smoke run (seconds)
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from _common import machine, quiet_logs, table, write_results


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def hand(model, x, y, batch, precision="fp32", channels_last=False, compile_mode=None, backend="inductor"):
    """A hand-written loop: returns a callable that trains ``epochs`` epochs."""
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                                **({"fused": True} if x.is_cuda and compile_mode is None else {}))
    dtype = {"fp32": None, "bf16": torch.bfloat16}[precision]

    def step(xb, yb):
        with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = F.cross_entropy(model(xb), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    if compile_mode is not None:
        # SGD makes its momentum buffers on its first step: made here first (zeros give the same step), or
        # inside a CUDA graph they would be outputs whose memory the next replay reuses.
        for p in model.parameters():
            optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p)
        step = torch.compile(step, mode=compile_mode, backend=backend)
    g = torch.Generator().manual_seed(0)

    def train(n_epochs):
        model.train()
        for _ in range(n_epochs):
            order = torch.randperm(len(y), generator=g).to(x.device)
            for start in range(0, len(y), batch):
                index = order[start:start + batch]
                step(x[index], y[index])
    return train


def with_fit(model, x, y, batch, epochs, precision="fp32", compile_=False, backend="inductor"):
    """fit() as a run calls it: one stage of 1 + ``epochs`` epochs (a stage compiles once). Returns (warm-up
    seconds, timed seconds) from fit's own epoch times, which end with the epoch's one synchronisation."""
    from prune_cli.data.splits import TensorSplit
    from prune_cli.training import step as step_module
    from prune_cli.training.loop import fit
    from prune_cli.training.settings import StageSettings
    step_module.BACKEND = backend
    settings = StageSettings(epochs=1 + epochs, lr=0.1, batch_size=batch, optimizer="sgd", precision=precision,
                             compile=compile_)
    seconds = []
    fit(model, TensorSplit(x, y), settings, stage="bench", seed=0,
        on_epoch_stats=lambda entry: seconds.append(entry["seconds"]))
    return seconds[0], sum(seconds[1:])


def timed_hand(train, device, epochs):
    sync(device)
    started = time.perf_counter()
    train(1)  # warm-up: lazy initialisation, and for compiled contenders the compile
    sync(device)
    warmup = time.perf_counter() - started
    started = time.perf_counter()
    train(epochs)
    sync(device)
    return warmup, time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=("resnet8", "resnet20", "resnet56"), default="resnet20")
    parser.add_argument("--n", type=int, default=50_000, help="training images")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs after the warm-up epoch")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend for the compiled contenders (eager: a quick CPU check)")
    parser.add_argument("--tiny", action="store_true", help="ResNet-8, 64 images, batch 32, 1 timed epoch (CPU smoke run)")
    parser.add_argument("--tag", default="", help="results go to results/gpu_train_<tag>.json")
    parser.add_argument("--no-save", action="store_true", help="print the table only (the test's run)")
    args = parser.parse_args()
    if args.tiny:
        args.arch, args.n, args.batch, args.epochs = "resnet8", 64, 32, 1
    quiet_logs()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    from prune_cli.models import CIFARResNet
    depth = {"resnet8": 8, "resnet20": 20, "resnet56": 56}[args.arch]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.n, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (args.n,), generator=g).to(device)
    torch.manual_seed(0)
    initial = CIFARResNet((3, 32, 32), 10, (0.5,) * 3, (0.25,) * 3, depth=depth).state_dict()
    graphs = "reduce-overhead"
    backend = args.compile_backend
    e = args.epochs
    contenders = {
        "hand eager fp32": lambda m: timed_hand(hand(m, x, y, args.batch), device, e),
        "fit fp32": lambda m: with_fit(m, x, y, args.batch, e),
        "hand bf16 channels_last": lambda m: timed_hand(hand(m, x, y, args.batch, "bf16", True), device, e),
        "fit bf16": lambda m: with_fit(m, x, y, args.batch, e, "bf16"),
        "hand compiled bf16 channels_last": lambda m: timed_hand(hand(m, x, y, args.batch, "bf16", True, graphs,
                                                                      backend), device, e),
        "fit bf16 compile=reduce-overhead": lambda m: with_fit(m, x, y, args.batch, e, "bf16", graphs, backend),
    }
    results = {}
    for name, run in contenders.items():
        model = CIFARResNet((3, 32, 32), 10, (0.5,) * 3, (0.25,) * 3, depth=depth).to(device)
        model.load_state_dict(initial)
        warmup, seconds = run(model)
        results[name] = {"images_per_s": args.n * args.epochs / seconds, "seconds": seconds, "warmup_s": warmup}
        print(f"{name}: {results[name]['images_per_s']:.0f} images/s (warm-up {warmup:.1f} s)", flush=True)
    pairs = {"fit fp32": "hand eager fp32", "fit bf16": "hand bf16 channels_last",
             "fit bf16 compile=reduce-overhead": "hand compiled bf16 channels_last"}
    rows = []
    for name, r in results.items():
        versus = pairs.get(name)
        ratio = r["images_per_s"] / results[versus]["images_per_s"] if versus else None
        r["ratio"] = ratio
        r["versus"] = versus
        rows.append([name, f"{r['images_per_s']:.0f}", f"{r['warmup_s']:.1f}", versus or "",
                     f"{ratio:.3f}" if ratio else ""])
    info = machine()
    info["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{args.arch}, {args.n} images, batch {args.batch}, SGD Nesterov, {args.epochs} timed epochs, "
          f"{info['device']}, torch {torch.__version__}, compile backend {backend}")
    print(table(["contender", "images/s", "warm-up s", "vs", "ratio"], rows))
    if not args.no_save:
        path = write_results("gpu_train", {"machine": info, "args": vars(args), "results": results}, args.tag)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
