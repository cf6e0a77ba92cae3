"""Wall time of sweeps run in-process through prune_cli.run(overrides, run_dir), and where the time goes.

A. The dense cache: a 4-strategy sweep (magnitude, gradient, random, activation; sparsity 0.9; digits/lenet300;
   seed 0) with the cache (fresh, empty cache dir: the dense model is trained once, then reused) vs without it
   (cache.enabled=false: trained four times). The two sweeps alternate, ``--cache-repeats`` times each.
B. The first comparison a researcher runs: every strategy (magnitude gradient random activation apoz l1 l0
   compress) x sparsities 0.5, 0.9, 0.95 x seeds 0, 1, 2 on digits/lenet300 with default epochs (72 runs, fresh
   cache), then prune_cli.compare(...) for the table and plot. Total wall time, and a per-stage profile from
   the reports' timings (train, l1, l0, compress, finetune, score, prune, evaluate) plus what lies outside
   the stages (config composition, data loading, measurements, checkpoint and report writing).
   ``--compare-threads`` runs B twice, threads=<cores> and threads=1 interleaved run by run.
C. (``--joblib``) the same 72 runs as one ``prune-run -m``, serially (Hydra's basic launcher) and with
   ``hydra/launcher=joblib`` at n_jobs = cores, alternating which goes first over ``--sweep-repeats``: wall
   time of each, and its ratio to the summed stage time (``timings.total``) of its own runs.
D. (``--finetune-on``) a structured result fine-tuned on its shrunk model against the full-size masked one:
   MLP 784-1024-1024-10 on synthetic 1x28x28 data, 50% structured magnitude pruning, 3 seeds, the two runs of
   a seed back to back (alternating which goes first) from the same cached dense model; fine-tune seconds
   (shrinking included) and accuracy side by side.

    python benchmarks/sweep.py [--skip-cache] [--skip-full] [--compare-threads] [--joblib] [--finetune-on]
                               [--extra measure.latency=false ...] [--tag NAME] [--keep]
"""
from __future__ import annotations

import argparse
import collections
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from _common import add_common_args, begin, machine, table, write_results

STRATEGIES_A = ["magnitude", "gradient", "random", "activation"]
STRATEGIES_B = ["magnitude", "gradient", "random", "activation", "apoz", "l1", "l0", "compress"]
SPARSITIES_B = [0.5, 0.9, 0.95]
SEEDS_B = [0, 1, 2]
BASE = ["model=lenet300", "dataset=digits", "progress=false"]


def run_one(overrides, run_dir):
    import prune_cli
    start = time.perf_counter()
    report = prune_cli.run(overrides, str(run_dir))
    wall = time.perf_counter() - start
    if report.get("status") != "completed":
        raise RuntimeError(f"{overrides}: {report.get('status')} {report.get('error')}")
    return report, wall


def sweep_a(work: Path, cached: bool, extra):
    """One 4-strategy sweep; returns (wall seconds, dense trainings)."""
    cache_dir = work / "cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    runs = work / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    start = time.perf_counter()
    trained = 0
    for strategy in STRATEGIES_A:
        report, _ = run_one(BASE + ["seed=0", "sparsity=0.9", f"strategy={strategy}", f"cache.dir={cache_dir}",
                                    f"cache.enabled={str(cached).lower()}"] + extra, runs / strategy)
        trained += report["cache"]["dense"] != "reused"
    return time.perf_counter() - start, trained


def full_sweep(work: Path, args) -> dict:
    """Part B. With ``--compare-threads`` every configuration runs twice in a row, with ``threads=<all cores>``
    and ``threads=1`` (alternating which goes first), into separate run and cache dirs, so both variants see
    the same load; each variant's total is the sum of its own runs plus its compare()."""
    import prune_cli
    from prune_cli.config import compose_config
    has_knob = "threads" in compose_config(BASE)
    cores = os.cpu_count() or 1
    if args.compare_threads:
        variants = [(f"threads={cores}", cores), ("threads=1", 1)]
    else:
        # --threads (if any) already travels in args.extra as a threads= override (see main)
        variants = [("threads=" + (str(args.threads) if args.threads else "auto" if has_knob else "torch default"),
                     None)]
    stats = {name: {"stages": collections.Counter(), "per_strategy": collections.Counter(), "outside": 0.0,
                    "walls": []} for name, _ in variants}
    started = time.perf_counter()
    k = 0
    for seed in SEEDS_B:
        for strategy in STRATEGIES_B:
            for sparsity in SPARSITIES_B:
                order = variants if k % 2 == 0 else variants[::-1]
                k += 1
                for name, threads in order:
                    knob = []
                    if threads:
                        torch.set_num_threads(threads)  # older prune_cli without the knob
                        knob = [f"threads={threads}"] if has_knob else []
                    tag = name.replace("=", "_").replace(" ", "_")
                    report, wall = run_one(BASE + [f"seed={seed}", f"strategy={strategy}", f"sparsity={sparsity}",
                                                   f"cache.dir={work / ('b_cache_' + tag)}"] + knob + args.extra,
                                           work / f"b_runs_{tag}" / f"{strategy}_{sparsity}_{seed}")
                    st = stats[name]
                    st.setdefault("threads_used", set()).add(report["experiment"].get("threads"))
                    st["walls"].append(wall)
                    timings = dict(report["timings"])
                    st["outside"] += wall - timings.pop("total")
                    st["stages"].update(timings)
                    st["per_strategy"][strategy] += wall
        print(f"  seed {seed} done at {time.perf_counter() - started:.0f} s", flush=True)
    result = {"elapsed_s": time.perf_counter() - started, "extra_overrides": args.extra, "variants": {}}
    for name, threads in variants:
        st = stats[name]
        tag = name.replace("=", "_").replace(" ", "_")
        t = time.perf_counter()
        rows = prune_cli.compare([work / f"b_runs_{tag}"], out_dir=work / f"b_compare_{tag}")
        compare_seconds = time.perf_counter() - t
        runs_seconds = sum(st["walls"])
        total = runs_seconds + compare_seconds
        profile = dict(st["stages"])
        profile["outside stages (compose, data, measure, save)"] = st["outside"]
        profile["compare (table + plot)"] = compare_seconds
        result["variants"][name] = {
            "threads": threads or args.threads, "threads_used": sorted(str(t) for t in st["threads_used"]),
            "runs": len(st["walls"]), "total_s": total, "runs_s": runs_seconds,
            "compare_s": compare_seconds, "profile_s": profile, "per_strategy_s": dict(st["per_strategy"]),
            "per_run_median_s": statistics.median(st["walls"]), "per_run_s": st["walls"],
            "compare_rows": len(rows), "compare_dir": str(work / f"b_compare_{tag}")}
        used = sorted(str(t) for t in st["threads_used"])
        print(f"\nB. full first comparison, {name} (runs used {used}): {len(STRATEGIES_B)} strategies x "
              f"{len(SPARSITIES_B)} sparsities x {len(SEEDS_B)} seeds = {len(st['walls'])} runs + compare: "
              f"{total:.1f} s ({'under' if total < 120 else 'OVER'} the 2-minute target); "
              f"median run {statistics.median(st['walls']):.2f} s")
        print(table(["where", "seconds", "share"],
                    [[k, f"{v:.1f}", f"{v / total:.0%}"] for k, v in sorted(profile.items(), key=lambda kv: -kv[1])]))
        print(table(["strategy", "wall s (9 runs)"], [[k, f"{v:.1f}"] for k, v in
                                                      sorted(st["per_strategy"].items(), key=lambda kv: -kv[1])]))
        print(f"compare wrote {len(rows)} rows to {work / f'b_compare_{tag}'} (deleted at the end unless --keep)")
    return result


def _sweep_command(sweep_dir: Path, launcher: list, extra) -> list:
    import sys
    return [sys.executable, "-m", "prune_cli.app.cli", "-m", *launcher, "model=lenet300", "dataset=digits",
            "progress=false", "strategy=" + ",".join(STRATEGIES_B), "sparsity=" + ",".join(map(str, SPARSITIES_B)),
            "seed=" + ",".join(map(str, SEEDS_B)), f"hydra.sweep.dir={sweep_dir}"] + list(extra)


def _one_sweep(work: Path, name: str, launcher: list, extra) -> dict:
    """One ``prune-run -m`` of the 72 runs in a subprocess (process start included), fresh cache; the summed
    stage time is ``timings.total`` over its own reports (what the runs themselves spent)."""
    import json
    import subprocess
    tag = name.replace(" ", "_").replace("=", "_")
    sweep_dir, cache = work / f"c_sweep_{tag}", work / f"c_cache_{tag}"
    shutil.rmtree(sweep_dir, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    command = _sweep_command(sweep_dir, launcher, extra)
    env = dict(os.environ, PRUNE_CLI_CACHE=str(cache))
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"prune-run -m failed ({done.returncode}): {done.stderr[-2000:]}")
    reports = [json.loads(p.read_text()) for p in sweep_dir.rglob("report.json")]
    stages = sum(r["timings"]["total"] for r in reports)
    return {"command": " ".join(command[2:]), "runs": len(reports), "wall_s": wall, "stage_sum_s": stages,
            "wall_over_stages": wall / stages, "sweep_dir": str(sweep_dir)}


def joblib_sweep(work: Path, args) -> dict:
    """Part C (``--joblib``): the 72 runs as one ``prune-run -m``, serially and with the joblib launcher at
    n_jobs = cores, alternating which goes first; then prune_cli.compare on the last parallel sweep."""
    import prune_cli
    cores = os.cpu_count() or 1
    variants = {"serial": [], f"joblib n_jobs={cores}": ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={cores}"]}
    results = {name: [] for name in variants}
    for r in range(args.sweep_repeats):
        for name in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
            results[name].append(_one_sweep(work, name, variants[name], args.extra))
            x = results[name][-1]
            print(f"  {name}: {x['runs']} runs in {x['wall_s']:.1f} s, their stages {x['stage_sum_s']:.1f} s "
                  f"({x['wall_over_stages']:.2f}x)", flush=True)
    parallel = f"joblib n_jobs={cores}"
    t = time.perf_counter()
    rows = prune_cli.compare([Path(results[parallel][-1]["sweep_dir"])], out_dir=work / "c_compare")
    compare_seconds = time.perf_counter() - t
    summary = {name: {"wall_s_median": statistics.median(x["wall_s"] for x in xs),
                      "stage_sum_s_median": statistics.median(x["stage_sum_s"] for x in xs),
                      "wall_over_stages_median": statistics.median(x["wall_over_stages"] for x in xs)}
               for name, xs in results.items()}
    speedup = summary["serial"]["wall_s_median"] / summary[parallel]["wall_s_median"]
    print(f"\nC. the 72-run comparison as one `prune-run -m` (subprocess, process start included), "
          f"{args.sweep_repeats} alternating repeats")
    print(table(["launcher", "wall s (median)", "summed stage s", "wall / stages"],
                [[name, f"{v['wall_s_median']:.1f}", f"{v['stage_sum_s_median']:.1f}",
                  f"{v['wall_over_stages_median']:.2f}x"] for name, v in summary.items()]))
    print(f"parallel / serial wall: {1 / speedup:.2f} ({speedup:.2f}x faster); compare {compare_seconds:.1f} s, "
          f"{len(rows)} rows")
    return {"sweeps": results, "summary": summary, "speedup": speedup, "compare_s": compare_seconds,
            "compare_rows": len(rows)}


WIDE = ["model=mlp", "model.hidden=[1024,1024]", "dataset=synthetic", "dataset.shape=[1,28,28]",
        "dataset.train_size=4096", "dataset.test_size=1024", "dataset.noise=1.0", "strategy=magnitude",
        "strategy.granularity=structured", "sparsity=0.5", "train.epochs=3", "finetune.epochs=5",
        "measure.latency=false", "progress=false"]


def finetune_on(work: Path, args) -> dict:
    """Part D: finetune.on=shrunk against finetune.on=masked, seed by seed."""
    seeds = [0, 1, 2]
    runs = {"shrunk": [], "masked": []}
    for k, seed in enumerate(seeds):
        order = ["shrunk", "masked"] if k % 2 == 0 else ["masked", "shrunk"]
        for on in order:
            report, wall = run_one(WIDE + [f"seed={seed}", f"finetune.on={on}", f"cache.dir={work / 'd_cache'}"]
                                   + args.extra, work / "d_runs" / f"{on}_{seed}")
            t = report["timings"]
            runs[on].append({"seed": seed, "finetune_s": t["finetune"] + t.get("shrink", 0.0),
                             "shrink_s": t.get("shrink", 0.0), "accuracy": report["accuracy"]["finetuned"],
                             "trained_params": report["finetuned_on"][0]["params"], "wall_s": wall})
    ratios = [m["finetune_s"] / s["finetune_s"] for s, m in zip(runs["shrunk"], runs["masked"])]
    result = {"overrides": WIDE, "seeds": seeds, "runs": runs, "speedup_per_seed": ratios,
              "speedup_median": statistics.median(ratios)}
    print("\nD. fine-tuning a 50% structured 784-1024-1024-10 MLP (synthetic 1x28x28, 4,096 images, 5 epochs): "
          "shrunk vs masked")
    rows = []
    for on in ("shrunk", "masked"):
        xs = runs[on]
        rows.append([on, f"{xs[0]['trained_params']:,}", ", ".join(f"{x['finetune_s']:.2f}" for x in xs),
                     ", ".join(f"{100 * x['accuracy']:.2f}" for x in xs),
                     f"{100 * statistics.mean(x['accuracy'] for x in xs):.2f}"])
    print(table(["fine-tuned on", "params trained", "fine-tune s (seeds 0, 1, 2)", "accuracy %", "mean %"], rows))
    print(f"speed-up (masked s / shrunk s) per seed: {', '.join(f'{r:.2f}x' for r in ratios)}; "
          f"median {result['speedup_median']:.2f}x")
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-repeats", type=int, default=4)
    parser.add_argument("--skip-cache", action="store_true", help="skip part A")
    parser.add_argument("--skip-full", action="store_true", help="skip part B")
    parser.add_argument("--extra", nargs="*", default=[], help="extra overrides for every run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary runs, caches and compare outputs")
    parser.add_argument("--joblib", action="store_true",
                        help="part C: the same sweep as one prune-run -m with the joblib launcher")
    parser.add_argument("--sweep-repeats", type=int, default=2, help="part C: repeats of each launcher")
    parser.add_argument("--finetune-on", action="store_true",
                        help="part D: structured fine-tuning on the shrunk vs the masked model")
    parser.add_argument("--compare-threads", action="store_true",
                        help="part B at the default threads and at 1 thread, interleaved run by run")
    add_common_args(parser)
    args = parser.parse_args()
    contention = begin(args)
    from prune_cli.config import compose_config
    if args.threads and "threads" in compose_config(BASE) and not args.compare_threads:
        args.extra = args.extra + [f"threads={args.threads}"]  # prune_cli sets its own threads otherwise
    work = Path(tempfile.mkdtemp(prefix="prune_cli_sweep_"))
    os.environ["PRUNE_CLI_CACHE"] = str(work / "cache")  # belt and braces: never the user's cache
    info = machine()
    out = {"machine": info, "settings": vars(args), "work_dir": str(work)}

    # Warm-up: the first run in a process pays the lazy imports (torch.optim/_dynamo, hydra, sklearn); paid
    # once by any sweep, so it is measured separately and kept out of the comparison.
    t = time.perf_counter()
    run_one(BASE + ["seed=0", "sparsity=0.5", "train.epochs=1", "finetune.epochs=1", "measure.latency=false",
                    f"cache.dir={work / 'warm_cache'}"], work / "warmup")
    out["first_run_in_process_s"] = time.perf_counter() - t
    print(f"warm-up run (imports, 1+1 epochs): {out['first_run_in_process_s']:.1f} s", flush=True)

    if not args.skip_cache:
        times = {"cache": [], "no cache": []}
        trained = {}
        for r in range(args.cache_repeats):
            for cached in ((True, False) if r % 2 == 0 else (False, True)):
                seconds, n = sweep_a(work / "a", cached, args.extra)
                name = "cache" if cached else "no cache"
                times[name].append(seconds)
                trained[name] = n
                print(f"  sweep A, {name}: {seconds:.1f} s ({n} dense trainings)", flush=True)
        a = {name: {"median_s": statistics.median(ts), "times_s": ts, "dense_trainings": trained[name]}
             for name, ts in times.items()}
        a["speedup"] = a["no cache"]["median_s"] / a["cache"]["median_s"]
        out["cache_sweep"] = a
        print(f"\nA. 4-strategy sweep (magnitude gradient random activation, sparsity 0.9, seed 0), "
              f"{args.cache_repeats} alternating repeats")
        print(table(["variant", "dense trainings", "median wall s", "all s"],
                    [[name, a[name]["dense_trainings"], f"{a[name]['median_s']:.1f}",
                      ", ".join(f"{x:.1f}" for x in a[name]["times_s"])] for name in times]))
        print(f"cache speed-up: {a['speedup']:.2f}x")

    if not args.skip_full:
        out["full_sweep"] = full_sweep(work, args)
    if args.joblib:
        out["joblib_sweep"] = joblib_sweep(work, args)
    if args.finetune_on:
        out["finetune_on"] = finetune_on(work, args)
    contention.__exit__(None, None, None)
    out["machine"]["contention"] = contention.result
    print(contention.line())
    path = write_results("sweep", out, tag=args.tag)
    print(f"wrote {path}")
    if args.keep:
        print(f"runs, caches and compare outputs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
