"""Train-loop throughput: prune_cli.training.loop.fit vs a minimal hand-written PyTorch loop.

Same model (lenet300 from prune_cli.models.build_for), same data (digits from prune_cli.data.load_dataset,
in-memory tensors), batch 64, Adam lr 1e-3, cross-entropy, same initial weights, same thread count, same
epochs. Also with masks: fit(masks=...) vs the hand loop re-masking in place after each optimizer step.
The unmasked pair trains from the initial weights (dense training); the masked pair fine-tunes a dense model
trained for 20 epochs and pruned to 90% by global magnitude (the fine-tuning prune_cli runs). Contenders run
interleaved; the table shows medians and ratios (fit / hand, in samples per second). One extra row,
"fit, 1 thread", is fit with torch.set_num_threads(1), for the thread question on a shared 2-core machine.

    python benchmarks/train_loop.py [--epochs 5] [--repeats 9]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from _common import (add_common_args, begin, digits_lenet300, interleaved, machine, median, spread, table,
                     trained_lenet300, write_results)


def hand_loop(model, x_all, y_all, epochs, batch_size, lr, seed, pairs=()):
    """What a researcher writes by hand: randperm batching of in-memory tensors, Adam, cross-entropy."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    n = len(y_all)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for start in range(0, n, batch_size):
            idx = perm[start:start + batch_size]
            loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if pairs:
                with torch.no_grad():
                    for param, mask in pairs:
                        param.mul_(mask)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="epochs per timed trial")
    parser.add_argument("--repeats", type=int, default=9, help="interleaved trials per contender")
    parser.add_argument("--sparsity", type=float, default=0.9, help="mask sparsity for the masked pair")
    add_common_args(parser)
    parser.add_argument("--no-one-thread-row", action="store_true", help="leave out the 'fit, 1 thread' row")
    args = parser.parse_args()
    contention = begin(args)

    from prune_cli.pruning.masks import prunable_names, topk_masks
    from prune_cli.training.loop import fit
    from prune_cli.training.settings import StageSettings

    data, model = digits_lenet300(seed=0)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    _, trained = trained_lenet300(epochs=20, seed=0)
    names = prunable_names(model)
    trained_params = dict(trained.named_parameters())
    masks = topk_masks({n: trained_params[n].detach().abs() for n in names}, args.sparsity)
    masks.apply_(trained)
    pruned_start = {k: v.clone() for k, v in trained.state_dict().items()}
    params = dict(model.named_parameters())
    batch_size, lr = 64, 1e-3
    settings = StageSettings(epochs=args.epochs, lr=lr, batch_size=batch_size, optimizer="adam")
    x_all, y_all = data.train.x, data.train.y
    n_train = len(y_all)

    def reset(with_masks):
        model.load_state_dict(pruned_start if with_masks else initial)

    def run_fit(with_masks):
        def go():
            reset(with_masks)
            start = time.perf_counter()
            fit(model, data.train, settings, stage="bench", seed=0, masks=masks if with_masks else None)
            return time.perf_counter() - start
        return go

    def run_hand(with_masks):
        def go():
            reset(with_masks)
            pairs = [(params[n], masks[n]) for n in names] if with_masks else ()
            start = time.perf_counter()
            hand_loop(model, x_all, y_all, args.epochs, batch_size, lr, seed=0, pairs=pairs)
            return time.perf_counter() - start
        return go

    contenders = {"fit": run_fit(False), "hand": run_hand(False),
                  "fit+masks": run_fit(True), "hand+masks": run_hand(True)}
    threads = torch.get_num_threads()
    if not args.no_one_thread_row and threads > 1:
        two = run_fit(False)

        def one_thread():
            torch.set_num_threads(1)
            try:
                return two()
            finally:
                torch.set_num_threads(threads)
        contenders["fit, 1 thread"] = one_thread
    # Warm-up: the first optimizer step pays ~1 s of lazy imports, once per process.
    for go in contenders.values():
        go()
    times = interleaved(contenders, args.repeats)

    samples = args.epochs * n_train
    rows, summary = [], {}
    for name, ts in times.items():
        summary[name] = {"median_s": median(ts), "samples_per_s": samples / median(ts), "iqr_rel": spread(ts),
                         "times_s": ts}
    pairs_out = {}
    pairings = [("fit", "hand"), ("fit+masks", "hand+masks")]
    if "fit, 1 thread" in times:
        pairings.append(("fit, 1 thread", "fit"))  # > 1: one thread is faster than the default
    for ours, theirs in pairings:
        # Ratio of medians, and the median of per-round ratios (each round ran both back to back).
        paired = [h / f for f, h in zip(times[ours], times[theirs])]
        pairs_out[ours] = {"versus": theirs, "ratio_of_medians": median(times[theirs]) / median(times[ours]),
                           "median_paired_ratio": median(paired)}
    for name in contenders:
        ratio = pairs_out.get(name)
        rows.append([name, f"{summary[name]['samples_per_s']:.0f}", f"{summary[name]['median_s'] * 1e3:.0f}",
                     f"{summary[name]['iqr_rel'] * 100:.0f}%", ratio["versus"] if ratio else "",
                     f"{ratio['ratio_of_medians']:.3f}" if ratio else "",
                     f"{ratio['median_paired_ratio']:.3f}" if ratio else ""])
    mask_cost = {"fit": median(times["fit+masks"]) / median(times["fit"]) - 1,
                 "hand": median(times["hand+masks"]) / median(times["hand"]) - 1}

    contention.__exit__(None, None, None)
    info = machine()
    info["contention"] = contention.result
    print(f"train loop: digits/lenet300, batch {batch_size}, Adam, {args.epochs} epochs x {n_train} samples "
          f"per trial, {args.repeats} interleaved trials, {info['threads']} threads, torch {info['torch']}")
    print(table(["loop", "samples/s", "median ms/trial", "IQR", "vs", "throughput ratio (medians)",
                 "(median of paired rounds)"], rows))
    print(contention.line())
    print(f"masked vs unmasked step time: fit +{mask_cost['fit'] * 100:.1f}%, "
          f"hand loop +{mask_cost['hand'] * 100:.1f}%")
    path = write_results("train_loop", {"machine": info, "settings": {
        "dataset": "digits", "model": "lenet300", "batch_size": batch_size, "optimizer": "adam", "lr": lr,
        "epochs_per_trial": args.epochs, "repeats": args.repeats, "train_samples": n_train,
        "mask_sparsity": args.sparsity, "masked_start": "dense trained 20 epochs, global magnitude"},
        "results": summary, "ratios": pairs_out, "mask_cost": mask_cost}, tag=args.tag)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
