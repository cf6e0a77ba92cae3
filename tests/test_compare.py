"""prune-compare on hand-written report.json files: no training, a fraction of a second."""

from __future__ import annotations

import csv
import importlib
import io
import json
import logging
import os
import stat
from pathlib import Path

import pytest

import prune_cli
from prune_cli.storage.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from prune_cli.errors import UsageError

STRATEGIES = ("magnitude", "random")
SPARSITIES = (0.5, 0.9)
SEEDS = (0, 1, 2)
# Fine-tuned accuracy of seed 0; seed s adds 0.01 * s, so each group's mean is BASE + 0.01 and its sample
# std is exactly 0.01 (the deviations are -0.01, 0, +0.01: sqrt(2e-4 / 2)).
BASE = {("magnitude", 0.5): 0.95, ("magnitude", 0.9): 0.90, ("random", 0.5): 0.85, ("random", 0.9): 0.40}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# The module behind `prune-compare` and the package-level `prune_cli.compare()`.
cmp = importlib.import_module("prune_cli.comparison")
cmp_plot = importlib.import_module("prune_cli.comparison.plot")


def make_report(run_dir: Path, strategy="magnitude", sparsity=0.5, seed=0, status="completed", **overrides):
    finetuned = BASE.get((strategy, sparsity), 0.5) + 0.01 * seed
    report = {
        "status": status,
        "experiment": {"model": "lenet300", "dataset": "digits", "strategy": strategy,
                       "schedule": "oneshot", "seed": seed, "run_dir": str(run_dir)},
        "sparsity": {"target": sparsity, "achieved": sparsity - 0.001 * seed},
        "accuracy": {"dense": 0.97 + 0.002 * seed, "pruned": finetuned - 0.2, "finetuned": finetuned},
        "params": {"total": 1000, "nonzero": round(1000 * (1 - sparsity))},
        "layers": [{"name": "fc1.weight", "shape": [300, 64], "sparsity": sparsity}],
        "timings": {"train": 1.0, "prune": 0.1, "finetune": 2.0, "total": 3.1},
        "rounds": [], "cache": {"dense": "reused"},
    }
    if status != "completed":
        report["error"] = "loss became NaN"
    report.update(overrides)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "report.json").write_text(json.dumps(report))
    return report


@pytest.fixture
def sweep(tmp_path):
    """2 strategies x 2 sparsities x 3 seeds, laid out like a Hydra multirun (nested job directories)."""
    root = tmp_path / "multirun"
    job = 0
    for strategy in STRATEGIES:
        for sparsity in SPARSITIES:
            for seed in SEEDS:
                make_report(root / "2024-01-01" / f"{job}_s={strategy},p={sparsity},seed={seed}",
                            strategy, sparsity, seed)
                job += 1
    return root


def by_group(rows):
    return {(r["strategy"], r["target_sparsity"]): r for r in rows}


# --- collecting -------------------------------------------------------------------------------------------

def test_collect_finds_nested_reports_and_report_paths(sweep):
    reports = cmp.collect_reports([sweep])
    assert len(reports) == 12
    assert all(Path(r["report_path"]).name == "report.json" for r in reports)
    one = reports[0]["report_path"]
    assert len(cmp.collect_reports([one])) == 1  # a report.json path works directly
    assert len(cmp.collect_reports([sweep, Path(one).parent])) == 12  # overlapping arguments: no duplicates


def test_corrupt_report_is_skipped_with_a_warning(sweep, caplog):
    bad = sweep / "broken" / "report.json"
    bad.parent.mkdir()
    bad.write_text('{"status": "completed", "accur')
    (sweep / "list" / "report.json").parent.mkdir()
    (sweep / "list" / "report.json").write_text("[1, 2]")
    with caplog.at_level(logging.WARNING, logger="prune_cli.comparison"):
        reports = cmp.collect_reports([sweep])
    assert len(reports) == 12
    assert str(bad) in caplog.text and "list" in caplog.text


@pytest.mark.parametrize("damage,why", [
    (lambda r: r["accuracy"].update(finetuned=[0.9, 0.8]), "accuracy.finetuned is list, not a number"),
    (lambda r: r["sparsity"].update(target="high"), "sparsity.target is str, not a number"),
    (lambda r: r.update(experiment=["magnitude"]), "'experiment' is not a mapping of plain values"),
    (lambda r: r["experiment"].update(strategy={"name": "x"}), "'experiment' is not a mapping of plain values"),
    (lambda r: r.update(accuracy=None), "'accuracy' is not a mapping"),
])
def test_a_malformed_report_is_skipped_with_one_warning_naming_it_and_the_rest_compared(sweep, tmp_path, caplog,
                                                                                         damage, why):
    good = next(sweep.rglob("report.json"))
    report = json.loads(good.read_text())
    damage(report)
    bad = sweep / "damaged" / "report.json"
    bad.parent.mkdir()
    bad.write_text(json.dumps(report))
    with caplog.at_level(logging.WARNING, logger="prune_cli.comparison"):
        code = cmp.main([str(sweep), "--out", str(tmp_path / "out")])
    assert code == 0
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        f"skipping {bad.resolve()}: {why}"]
    rows = list(csv.DictReader((tmp_path / "out" / "compare.csv").open()))
    assert sum(int(r["n"]) for r in rows) == 12  # every good run, and only those


def test_failed_and_interrupted_runs_are_excluded_by_default(sweep):
    make_report(sweep / "failed", "magnitude", 0.5, seed=7, status="failed", accuracy={"dense": 0.97})
    make_report(sweep / "interrupted", "magnitude", 0.5, seed=3, status="interrupted")
    assert len(cmp.collect_reports([sweep])) == 12
    assert len(cmp.collect_reports([sweep], include_failed=True)) == 14

    rows = by_group(cmp.compare([sweep], include_failed=True))
    row = rows[("magnitude", 0.5)]
    assert row["n"] == 5 and row["seeds"] == [0, 1, 2, 3, 7]
    # The failed run has no fine-tuned accuracy: it counts in n but not in that metric's mean.
    assert row["accuracy_finetuned_mean"] == pytest.approx((0.95 + 0.96 + 0.97 + 0.98) / 4)
    assert row["accuracy_dense_mean"] == pytest.approx((0.970 + 0.972 + 0.974 + 0.976 + 0.97) / 5)


def test_no_completed_run_names_the_reason(tmp_path):
    make_report(tmp_path / "run", status="failed")
    with pytest.raises(UsageError, match="no completed run under .*1 failed or interrupted.*--include-failed"):
        cmp.compare([tmp_path])


def test_missing_path_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no such file or directory: .*nowhere"):
        cmp.collect_reports([tmp_path / "nowhere"])


# --- summarising ------------------------------------------------------------------------------------------

def test_summary_means_and_sample_stds_match_hand_computation(sweep):
    rows = cmp.summarize(cmp.collect_reports([sweep]))
    assert [(r["strategy"], r["target_sparsity"]) for r in rows] == [
        ("magnitude", 0.5), ("magnitude", 0.9), ("random", 0.5), ("random", 0.9)]  # strategy, then sparsity
    for row in rows:
        base = BASE[(row["strategy"], row["target_sparsity"])]
        assert row["n"] == 3 and row["seeds"] == [0, 1, 2]
        assert (row["model"], row["dataset"], row["schedule"]) == ("lenet300", "digits", "oneshot")
        assert row["accuracy_finetuned_mean"] == pytest.approx(base + 0.01)
        assert row["accuracy_finetuned_std"] == pytest.approx(0.01)
        assert row["accuracy_pruned_mean"] == pytest.approx(base + 0.01 - 0.2)
        assert row["accuracy_pruned_std"] == pytest.approx(0.01)
        assert row["accuracy_dense_mean"] == pytest.approx(0.972)  # 0.970, 0.972, 0.974
        assert row["accuracy_dense_std"] == pytest.approx(0.002)
        assert row["sparsity_achieved_mean"] == pytest.approx(row["target_sparsity"] - 0.001)
        assert row["sparsity_achieved_std"] == pytest.approx(0.001)


def test_single_run_has_zero_std_and_custom_grouping(sweep):
    reports = cmp.collect_reports([sweep])
    one = cmp.summarize(reports[:1])
    assert one[0]["n"] == 1 and one[0]["accuracy_finetuned_std"] == 0.0

    rows = cmp.summarize(reports, by=("strategy",))
    assert [(r["strategy"], r["n"]) for r in rows] == [("magnitude", 6), ("random", 6)]
    assert set(rows[0]) >= {"strategy", "n", "accuracy_finetuned_mean"} and "model" not in rows[0]
    assert rows[0]["accuracy_finetuned_mean"] == pytest.approx((0.95 + 0.90) / 2 + 0.01)


def test_unknown_group_key_is_a_usage_error(sweep):
    with pytest.raises(UsageError, match="unknown group key stratgy"):
        cmp.summarize(cmp.collect_reports([sweep]), by=("stratgy",))


def test_null_metric_gives_none_not_a_crash(tmp_path):
    make_report(tmp_path / "a", accuracy={"dense": 0.9, "pruned": 0.5, "finetuned": None})
    rows = cmp.compare([tmp_path], out_dir=tmp_path / "out")
    assert rows[0]["accuracy_finetuned_mean"] is None and rows[0]["accuracy_finetuned_std"] is None
    assert "n/a" in (tmp_path / "out" / "compare.md").read_text()


# --- files and table --------------------------------------------------------------------------------------

def test_csv_numbers_match_the_reports(sweep, tmp_path):
    rows = cmp.compare([sweep], out_dir=tmp_path / "out")
    with open(tmp_path / "out" / "compare.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 4
    for line, row in zip(table, rows):
        base = BASE[(line["strategy"], float(line["target_sparsity"]))]
        assert float(line["target_sparsity"]) == row["target_sparsity"]
        assert int(line["n"]) == 3 and line["seeds"] == "0 1 2"
        assert float(line["accuracy_finetuned_mean"]) == pytest.approx(base + 0.01)
        assert float(line["accuracy_finetuned_std"]) == pytest.approx(0.01)
        assert float(line["accuracy_dense_mean"]) == pytest.approx(0.972)
        for key, value in row.items():  # full precision: the CSV round-trips the summary exactly
            if isinstance(value, float):
                assert float(line[key]) == value


def test_markdown_cells_are_percent_mean_pm_std(sweep, tmp_path):
    cmp.compare([sweep], out_dir=tmp_path)
    text = (tmp_path / "compare.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines[0].startswith("| model | dataset | strategy | schedule | target sparsity (%) | n |")
    assert lines[1].startswith("|---|---|---|---|---:|---:|")
    magnitude_50 = next(line for line in lines if "| magnitude |" in line and "| 50.00 |" in line)
    # 95% intervals: t(0.975, 2) * std / sqrt(3) = 4.3027 * std / 1.7321 = 2.4841 * std
    assert "| 96.00 ± 2.48 |" in magnitude_50  # fine-tuned: 0.95, 0.96, 0.97 (std 1.00)
    assert "| 97.20 ± 0.50 |" in magnitude_50  # dense (std 0.20)
    assert "| 49.90 ± 0.25 |" in magnitude_50  # achieved sparsity (std 0.10)
    assert sum(line.startswith("| ") for line in lines) == 5  # header + 4 rows


def test_print_table_shows_every_group(sweep):
    from rich.console import Console

    console = Console(file=io.StringIO(), width=200)
    cmp.print_table(cmp.compare([sweep]), console)
    out = console.file.getvalue()
    assert out.count("magnitude") == 2 and out.count("random") == 2
    assert "96.00 ± 2.48" in out and "41.00 ± 2.48" in out


def test_png_is_valid_and_readable(sweep, tmp_path):
    cmp.compare([sweep], out_dir=tmp_path)
    data = (tmp_path / "compare.png").read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    import matplotlib.image

    image = matplotlib.image.imread(tmp_path / "compare.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_plot_labels_series_by_schedule_when_several(tmp_path):
    for schedule in ("oneshot", "iterative"):
        for sparsity in SPARSITIES:
            report_dir = tmp_path / f"{schedule}_{sparsity}"
            make_report(report_dir, "magnitude", sparsity)
            report = json.loads((report_dir / "report.json").read_text())
            report["experiment"]["schedule"] = schedule
            (report_dir / "report.json").write_text(json.dumps(report))
    rows = cmp.compare([tmp_path])
    assert sorted(cmp_plot._series(rows)) == ["magnitude / iterative", "magnitude / oneshot"]
    assert list(cmp_plot._dense_references(rows)) == ["dense"]
    cmp.plot(rows, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes().startswith(PNG_SIGNATURE)


# --- console entry ----------------------------------------------------------------------------------------

def test_main_writes_files_and_prints_the_table(sweep, tmp_path, capsys):
    out = tmp_path / "out"
    assert cmp.main([str(sweep), "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"compare.csv", "compare.md", "compare.png"}
    stdout = capsys.readouterr().out
    assert "magnitude" in stdout and "random" in stdout


def test_main_default_out_dir_and_by_option(sweep, capsys):
    assert cmp.main([str(sweep), "--by", "strategy, schedule"]) == 0
    with open(sweep / "compare" / "compare.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [(t["strategy"], t["schedule"], t["n"]) for t in table] == [
        ("magnitude", "oneshot", "6"), ("random", "oneshot", "6")]
    assert cmp.main([str(sweep)]) == 0  # the output directory holds no report.json: rerunning is harmless
    capsys.readouterr()


def test_main_empty_dir_exits_2_with_one_line(tmp_path, capsys):
    empty = tmp_path / "empty_sweep"
    empty.mkdir()
    assert cmp.main([str(empty)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert lines == [f"prune-compare: no report.json found under {empty}"]
    assert captured.out == "" and not (empty / "compare").exists()


def test_main_bad_by_key_and_bad_arguments(sweep, capsys):
    assert cmp.main([str(sweep), "--by", "model,nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("prune-compare: unknown group key nope")
    assert cmp.main([]) == 2  # argparse: DIR is required
    assert "usage:" in capsys.readouterr().err


def test_an_out_directory_holding_a_users_files_is_refused_and_left_as_it_was(sweep, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    (mine / "compare.csv").write_text("my own table")
    assert cmp.main([str(sweep), "--out", str(mine)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"prune-compare: --out {mine}: holds files prune-compare did not write (notes.txt); choose a new or "
        f"empty directory (nothing was written)"]
    assert sorted(p.name for p in mine.iterdir()) == ["compare.csv", "notes.txt"]
    assert (mine / "compare.csv").read_text() == "my own table"
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert cmp.main([str(sweep), "--out", str(a_file)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"prune-compare: --out {a_file}: exists and is not a directory; choose another"]
    out = tmp_path / "out"  # an earlier comparison's directory is replaced, as a rerun should
    assert cmp.main([str(sweep), "--out", str(out)]) == 0
    assert cmp.main([str(sweep), "--out", str(out)]) == 0
    capsys.readouterr()


def test_main_write_error_is_one_line_exit_1(sweep, tmp_path, capsys, monkeypatch):
    def refuse(rows, path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(cmp, "write_csv", refuse)
    assert cmp.main([str(sweep), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("prune-compare: cannot write results to")


def test_package_level_compare_still_callable_after_module_import(sweep):
    # The package-level function is the public API for scripts.
    assert len(prune_cli.compare([sweep])) == 4


# --- atomic writes ----------------------------------------------------------------------------------------

def test_atomic_writes_replace_whole_files(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old\n")
    atomic_write_text(target, "new ±\n")
    assert target.read_text(encoding="utf-8") == "new ±\n"
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin"]


def test_atomic_path_keeps_the_old_file_on_error(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.exists()
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_atomic_files_get_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "x", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x").stat().st_mode) == 0o644


def test_runs_with_other_settings_are_not_averaged_as_seeds():
    def fake(variant, accuracy):
        return {"status": "completed",
                "experiment": {"model": "mlp", "dataset": "digits", "strategy": "magnitude",
                               "schedule": "oneshot", "seed": 0, "variant": variant},
                "sparsity": {"target": 0.9, "achieved": 0.9},
                "accuracy": {"dense": 0.97, "pruned": 0.5, "finetuned": accuracy}}
    rows = cmp.summarize([fake("aaaa", 0.9), fake("bbbb", 0.5), fake("aaaa", 0.8)])
    assert [(r["variant"], r["n"]) for r in rows] == [("aaaa", 2), ("bbbb", 1)]
    same = cmp.summarize([fake("aaaa", 0.9), fake("aaaa", 0.8)])
    assert len(same) == 1 and "variant" not in same[0]


def test_the_budget_of_each_row_is_shown_and_unequal_budgets_are_warned_about(tmp_path, caplog):
    for seed in (0, 1):
        make_report(tmp_path / f"m{seed}", "magnitude", 0.9, seed, budget={"epochs": {"finetune": 10},
                                                                             "total_epochs": 10})
        make_report(tmp_path / f"l{seed}", "l1", 0.9, seed, budget={"epochs": {"l1": 5, "finetune": 10},
                                                                      "total_epochs": 15})
    with caplog.at_level(logging.WARNING, logger="prune_cli.comparison"):
        rows = cmp.compare([tmp_path], out_dir=tmp_path / "out")
    assert {row["strategy"]: row["budget_epochs"] for row in rows} == {"magnitude": "10", "l1": "15"}
    assert "different training budgets after the dense stage (10, 15 epochs)" in caplog.text
    table = (tmp_path / "out" / "compare.md").read_text()
    assert "| epochs |" in table.splitlines()[0]
    csv_rows = list(csv.DictReader((tmp_path / "out" / "compare.csv").open()))
    assert sorted(r["budget_epochs"] for r in csv_rows) == ["10", "15"]


def test_equal_budgets_are_not_warned_about(tmp_path, caplog):
    for strategy in ("magnitude", "random"):
        make_report(tmp_path / strategy, strategy, 0.9, 0, budget={"epochs": {"finetune": 10}, "total_epochs": 10})
    with caplog.at_level(logging.WARNING, logger="prune_cli.comparison"):
        cmp.compare([tmp_path])
    assert "budget" not in caplog.text


def test_a_repeated_run_counts_once_and_failed_runs_are_named(tmp_path, caplog):
    make_report(tmp_path / "a", seed=0, fingerprint="f0")
    make_report(tmp_path / "a_again", seed=0, fingerprint="f0")     # the same config and seed, run twice
    make_report(tmp_path / "b", seed=1, fingerprint="f1")
    make_report(tmp_path / "broken", seed=2, status="failed")
    with caplog.at_level("WARNING", logger="prune_cli"):
        rows = cmp.compare([tmp_path], out_dir=tmp_path / "out")
    assert len(rows) == 1 and rows[0]["n"] == 2 and rows[0]["seeds"] == [0, 1]
    assert "1 run(s) repeat a config and seed already counted" in caplog.text and "a_again" in caplog.text
    assert "left out 1 failed or interrupted run(s)" in caplog.text and "broken" in caplog.text
    # Two seeds (0.95, 0.96): std 0.0070711, 95% interval t(0.975, 1) * std / sqrt(2) = 12.7062 * 0.005 = 0.0635.
    assert rows[0]["accuracy_finetuned_ci95"] == pytest.approx(12.7062047 * 0.005, rel=1e-6)


def test_a_single_run_says_n_1_instead_of_an_interval(tmp_path):
    make_report(tmp_path / "only", seed=0)
    cmp.compare([tmp_path], out_dir=tmp_path / "out")
    line = next(l for l in (tmp_path / "out" / "compare.md").read_text().splitlines() if "| magnitude |" in l)
    assert "(n=1)" in line and "±" not in line


def test_variants_are_labelled_by_what_differs_and_cost_plots_are_drawn(tmp_path):
    for epochs in (10, 30):
        for seed in (0, 1):
            make_report(tmp_path / f"e{epochs}_s{seed}", seed=seed, variant=f"v{epochs}",
                        config={"seed": seed, "sparsity": 0.5, "finetune": {"epochs": epochs, "lr": 0.001},
                                "progress": seed == 0},
                        flops={"dense": 1000, "nonzero": 500}, latency={"masked": {"batch_256_ms": 2.0 + seed}})
    for report in (tmp_path).glob("*/report.json"):  # make_report puts variant in the top level; move it
        data = json.loads(report.read_text())
        data["experiment"]["variant"] = data.pop("variant")
        report.write_text(json.dumps(data))
    rows = cmp.compare([tmp_path], out_dir=tmp_path / "out")
    assert [(row["variant"], row["n"]) for row in rows] == [("finetune.epochs=10", 2), ("finetune.epochs=30", 2)]
    assert rows[0]["macs_nonzero_mean"] == 500 and rows[0]["latency_ms_mean"] == 2.5
    for name in ("compare_macs.png", "compare_latency.png"):
        assert (tmp_path / "out" / name).read_bytes().startswith(PNG_SIGNATURE)
    import contextlib
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cmp.print_table(rows)  # not a terminal: as wide as the table needs
    assert "finetune.epochs=10" in out.getvalue() and "finetune.epochs=30" in out.getvalue()


# --- baseline and moments -----------------------------------------------------------------------------------

def test_baseline_differences_are_paired_by_seed_with_their_interval(sweep, tmp_path):
    rows = by_group(cmp.compare([sweep], out_dir=tmp_path / "out", baseline="magnitude"))
    worse = rows[("random", 0.5)]["vs_baseline"]
    # Every seed's random run is 10 points below its magnitude partner: no spread, a difference for certain.
    assert (worse["strategy"], worse["n"], worse["verdict"]) == ("magnitude", 3, "worse")
    assert worse["mean"] == pytest.approx(-0.10) and worse["low"] == pytest.approx(-0.10)
    assert "vs_baseline" not in rows[("magnitude", 0.5)]
    text = (tmp_path / "out" / "compare.md").read_text()
    assert "vs magnitude (points)" in text and "-10.00 [-10.00, -10.00] worse" in text
    assert "paired by seed" in text
    with pytest.raises(UsageError, match="--baseline nope: no compared run has strategy=nope; they have magnitude, "
                                         "random"):
        cmp.compare([sweep], baseline="nope")


def test_a_baseline_difference_inside_its_interval_is_a_tie(tmp_path):
    for seed, delta in enumerate((0.01, -0.01, 0.005)):
        make_report(tmp_path / f"m{seed}", "magnitude", 0.5, seed)
        make_report(tmp_path / f"g{seed}", "gradient", 0.5, seed,
                    accuracy={"dense": 0.97, "pruned": 0.5, "finetuned": 0.95 + 0.01 * seed + delta})
    rows = by_group(cmp.compare([tmp_path], baseline="magnitude"))
    versus = rows[("gradient", 0.5)]["vs_baseline"]
    assert versus["verdict"] == "tie" and versus["low"] < 0 < versus["high"]
    assert versus["mean"] == pytest.approx(0.005 / 3)


def test_pruned_accuracies_of_different_moments_get_their_own_columns(tmp_path):
    for seed in SEEDS:
        make_report(tmp_path / f"o{seed}", "magnitude", 0.5, seed,
                    accuracy={"dense": 0.97, "pruned": 0.6, "finetuned": 0.95,
                              "pruned_at": "after the last prune, before its fine-tuning"})
        report = make_report(tmp_path / f"g{seed}", "magnitude", 0.5, seed,
                             accuracy={"dense": 0.97, "pruned": 0.9, "finetuned": 0.96,
                                       "pruned_at": "at the last prune step, during the fine-tuning"})
        report["experiment"]["schedule"] = "gradual"
        (tmp_path / f"g{seed}" / "report.json").write_text(json.dumps(report))
    cmp.compare([tmp_path], out_dir=tmp_path / "out")
    lines = (tmp_path / "out" / "compare.md").read_text().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert "pruned acc. (%) [1]" in header and "pruned acc. (%) [2]" in header
    first, second = header.index("pruned acc. (%) [1]"), header.index("pruned acc. (%) [2]")
    rows = [[c.strip() for c in row.strip("|").split("|")] for row in lines[2:4]]
    cells = {row[header.index("schedule")]: row for row in rows}
    assert (cells["gradual"][first], cells["gradual"][second]) == ("90.00 ± 0.00", "-")
    assert (cells["oneshot"][first], cells["oneshot"][second]) == ("-", "60.00 ± 0.00")
    assert "[1] at the last prune step, during the fine-tuning; [2] after the last prune" in "\n".join(lines)
    assert list(csv.DictReader(io.StringIO((tmp_path / "out" / "compare.csv").read_text())))[0]["pruned_at"]


def test_a_mixed_directory_labels_variants_by_what_differs_within_their_rows_and_clips_intervals(tmp_path):
    models = {"lenet300": {"_target_": "prune_cli.models.MLP", "hidden": [300, 100]},
              "lenet5": {"_target_": "prune_cli.models.LeNet5", "channels": [6, 16]}}
    for model, model_cfg in models.items():
        for epochs in (10, 30):
            for seed in (0, 1):
                # Two seeds far apart: a t-interval would run past 100%; the range is shown instead.
                report = make_report(tmp_path / f"{model}_e{epochs}_s{seed}", seed=seed,
                                     accuracy={"dense": 0.97, "pruned": 0.5, "finetuned": 0.99 if seed else 0.30},
                                     config={"seed": seed, "sparsity": 0.5, "model": model_cfg,
                                             "finetune": {"epochs": epochs}})
                report["experiment"].update(model=model, variant=f"{model}{epochs}")
                (tmp_path / f"{model}_e{epochs}_s{seed}" / "report.json").write_text(json.dumps(report))
    rows = cmp.compare([tmp_path], out_dir=tmp_path / "out")
    assert sorted({row["variant"] for row in rows}) == ["finetune.epochs=10", "finetune.epochs=30"]
    row = rows[0]
    assert (row["accuracy_finetuned_low"], row["accuracy_finetuned_high"]) == (0.30, 0.99)
    text = (tmp_path / "out" / "compare.md").read_text()
    assert "64.50 [30.00, 99.00]" in text and "model._target_" not in text
    # Three seeds whose t-interval passes 100%: clipped there.
    from prune_cli.comparison.summary import interval
    assert interval([0.5, 0.99, 0.99], 0.7, True) == (pytest.approx(0.126666, abs=1e-5), 1.0)
