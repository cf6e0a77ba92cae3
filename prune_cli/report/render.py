"""The report for people: ``report.md`` and the console table, both from ``report.json``'s fields."""
from __future__ import annotations


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _bytes(n) -> str:
    return "-" if n is None else f"{n:,}"


def _ms(latency, batch) -> str:
    value = (latency or {}).get(f"batch_{batch}_ms")
    return "-" if value is None else f"{value:.3f}"


def batch_sizes(latencies) -> list[int]:
    """The batch sizes timed (``measure.batch_sizes``), from latency entries ``{"batch_N_ms": ...}``."""
    return sorted({int(key[len("batch_"):-len("_ms")]) for latency in latencies for key in (latency or {})
                   if key.startswith("batch_") and key.endswith("_ms")})


def _per_batch(latency, unit: str = " ms") -> str:
    """"batch 1: 0.123 ms, batch 256: 4.567 ms"."""
    return ", ".join(f"batch {size}: {latency[f'batch_{size}_ms']:.3f}{unit}" for size in batch_sizes([latency]))


def compression_lines(r: dict) -> list[str]:
    """The compression table (one row per model) as Markdown, with a column per batch size timed."""
    rows = r.get("compression") or []
    sizes = batch_sizes(row["latency_ms"] for row in rows)
    lines = ["| model | test acc. | val acc. | non-zero params | bytes (dense) | bytes (sparse) | bytes (int8) | "
             + "".join(f"ms batch {size} | " for size in sizes), "|---|---|---|---|---|---|---|" + "---|" * len(sizes)]
    for row in rows:
        b = row["bytes"]
        lines.append(f"| {row['model']} | {_pct(row['accuracy'])} | {_pct(row['val_accuracy'])} | "
                     f"{_bytes(row['params_nonzero'])} | {_bytes(b.get('dense'))} | {_bytes(b.get('sparse'))} | "
                     f"{_bytes(b.get('quantized'))} | " + "".join(f"{_ms(row['latency_ms'], size)} | " for size in sizes))
    return [line.rstrip() for line in lines]


def speedup_lines(speedup: dict) -> list[tuple[str, str]]:
    """(label, value) rows for the measured speed-ups: eager, then as CUDA graphs (on a GPU), then the note."""
    rows = []
    measured = speedup.get("method", "none") != "none" and speedup.get("measured")
    if measured:
        rows.append((f"measured speed-up ({speedup['method']}, eager)",
                     ", ".join(f"{k.replace('_', ' ')}: {v:.2f}x" for k, v in speedup["measured"].items())))
    if speedup.get("measured_cuda_graph"):
        rows.append((f"measured speed-up as CUDA graphs ({speedup.get('cuda_graph_of', 'shrunk')} model)",
                     ", ".join(f"{k.replace('_', ' ')}: {v:.2f}x" for k, v in speedup["measured_cuda_graph"].items())))
    if speedup.get("note"):
        rows.append(("speed-up note", speedup["note"]) if measured else ("measured speed-up", f"none: {speedup['note']}"))
    return rows


def heads_kept(shrunk: dict) -> str:
    """"7 of 8 (3/4, 4/4)": the heads left over all attention modules, then per module in model order."""
    counts = list(shrunk["heads_kept"].values())
    return (f"{sum(k for k, _ in counts)} of {sum(t for _, t in counts)} "
            f"({', '.join(f'{k}/{t}' for k, t in counts)})")


def finetuned_on(r: dict) -> str:
    """"shrunk model (25,335 params)", or per stage when the stages differ."""
    entries = r["finetuned_on"]
    said = [f"{e['on']} model ({e['params']:,} params)" + (f": {e['why']}" if e.get("why") else "") for e in entries]
    if len(set(said)) == 1 or len(entries) == 1:
        return said[0]
    return "; ".join(f"{e['stage']} {text}" for e, text in zip(entries, said))


def accuracy_labels(r: dict) -> tuple[str, str]:
    """What the dense and the last accuracy are: the starting model when weights= supplied it, the final model
    when nothing was fine-tuned (finetune.epochs=0)."""
    dense = "accuracy starting model (weights=)" if (r.get("cache") or {}).get("dense") == "loaded" \
        else "accuracy dense"
    finetune = ((r.get("config") or {}).get("finetune") or {}).get("epochs")
    final = "accuracy final (not fine-tuned)" if finetune == 0 else "accuracy fine-tuned"
    return dense, final


def markdown(r: dict) -> str:
    e, s, a = r["experiment"], r["sparsity"], r["accuracy"]
    dense_label, final_label = accuracy_labels(r)
    lines = [
        f"# Pruning report: {e['strategy']} / {e['schedule']} on {e['model']} / {e['dataset']} (seed {e['seed']})",
        "",
        f"Status: **{r['status']}**. Sparsity is the fraction of prunable weights ({s['prunable']}) that "
        f"are zero, counted from the saved weights. Accuracy is top-1 on the test split.",
        "",
        *[f"**Warning:** {w}" + "\n" for w in r.get("warnings", [])],
        "| metric | value |", "|---|---|",
        f"| target sparsity | {_pct(s['target'])} |",
        f"| achieved sparsity | {_pct(s['achieved'])} ({s['zeros']:,} of {s['prunable_weights']:,} zero) |",
        f"| {dense_label} | {_pct(a['dense'])} |",
        f"| accuracy pruned (before fine-tuning) | {_pct(a['pruned'])} |",
        f"| {final_label} | {_pct(a['finetuned'])} |",
        f"| parameters total / nonzero | {r['params']['total']:,} / {r['params']['nonzero']:,} |",
    ]
    flops = r.get("flops") or {}
    if flops:
        lines.append(f"| multiply-adds dense / nonzero | {flops.get('dense', 0):,} / {flops.get('nonzero', 0):,} |")
    if r.get("shrunk"):
        lines.append(f"| parameters after shrinking | {r['shrunk'].get('params', 0):,} |")
        if r["shrunk"].get("heads_kept"):
            lines.append(f"| attention heads kept | {heads_kept(r['shrunk'])} |")
    if r.get("finetuned_on"):
        lines.append(f"| fine-tuned on | {finetuned_on(r)} |")
    for timing, latencies in (("eager", r.get("latency")), ("CUDA graph", r.get("latency_cuda_graph"))):
        for name, lat in (latencies or {}).items():
            lines.append(f"| latency {name} ({timing}) | {_per_batch(lat)} |")
    for name, size in (r.get("size_bytes") or {}).items():
        if size is not None:
            lines.append(f"| size {name} | {size:,} bytes |")
    lines += [f"| {label} | {value} |" for label, value in speedup_lines(r.get("speedup") or {})]
    if r.get("resumed_from"):
        lines.append(f"| resumed from | {r['resumed_from']} |")
    units = any("units_kept" in l for l in r["layers"])
    lines += ["", "## Layers", "", "| layer | shape | sparsity |" + (" units kept |" if units else ""),
              "|---|---|---|" + ("---|" if units else "")]
    for layer in r["layers"]:
        kept = (f" {layer['units_kept'][0]} / {layer['units_kept'][1]} |" if "units_kept" in layer
                else " all |" if units else "")
        sparsity = "ignored (dense)" if layer.get("ignored") else _pct(layer["sparsity"])
        lines.append(f"| {layer['name']} | {'x'.join(map(str, layer['shape']))} | {sparsity} |{kept}")
    if r.get("compression"):
        lines += ["", "## Compression: what each step bought", "",
                  "Timed side by side on the run's device (an int8 model on the CPU, where its kernels run).", ""]
        lines += compression_lines(r)
        quantized = r.get("quantized")
        if quantized:
            lines += ["", f"Quantized ({quantized['method']}, {quantized['library']}): "
                          f"{_pct(quantized.get('sparsity'))} of the prunable int8 weights are zero "
                          f"({quantized['prunable_int8_zeros']:,} of {quantized['prunable_int8_weights']:,})."
                          + (f" Kept float: {', '.join(quantized['kept_float'])}." if quantized["kept_float"] else "")
                          + (f" {quantized['note']}." if quantized.get("note") else "")]
    if r.get("history"):
        lines += ["", "## Training history", "", "Per phase: epochs, mean training loss of the first and the last "
                  "epoch, and the last epoch's validation accuracy (every epoch is in report.json's `history` and "
                  "the logger's files).", "", "| phase | epochs | first loss | last loss | last val acc. |",
                  "|---|---|---|---|---|"]
        phases: dict = {}
        for entry in r["history"]:
            phases.setdefault(entry["stage"], []).append(entry)
        for stage, entries in phases.items():
            cached = " (cached)" if entries[0].get("cached") else ""
            lines.append(f"| {stage}{cached} | {len(entries)} | {entries[0]['loss']:.4f} | {entries[-1]['loss']:.4f} | "
                         f"{_pct(entries[-1].get('val_accuracy'))} |")
        lines += ["", "![training loss and validation accuracy per epoch](history.png)"]
    lines += ["", "## Rounds", "", "| round | target | achieved | acc. after pruning | acc. after fine-tuning |",
              "|---|---|---|---|---|"]
    for rd in r["rounds"]:
        lines.append(f"| {rd['round']} | {_pct(rd['target'])} | {_pct(rd['sparsity'])} | "
                     f"{_pct(rd.get('accuracy_pruned'))} | {_pct(rd.get('accuracy'))} |")
    lines += ["", "## Timings (seconds)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in r["timings"].items()]
    lines += reproduce_lines(r)
    return "\n".join(lines) + "\n"


def _stage_settings(stage: dict) -> str:
    text = f"{stage['epochs']} epochs, {stage['optimizer']} lr {stage['lr']:g}, batch {stage['batch_size']}"
    if stage.get("optimizer") == "sgd" and stage.get("momentum"):
        text += f", momentum {stage['momentum']:g}"
    if stage.get("weight_decay"):
        text += f", weight decay {stage['weight_decay']:g}"
    if stage.get("lr_decay", "none") != "none":
        text += f", {stage['lr_decay']} decay"
    return text


def reproduce_lines(r: dict) -> list[str]:
    """The command that reruns the run, its training settings and the environment it ran in."""
    env, config = r.get("environment"), r.get("config") or {}
    if not env:
        return []
    lines = ["", "## Reproduce", "", "```bash", env["command"], "```", "", "| setting | value |", "|---|---|"]
    for name in ("train", "finetune"):
        if isinstance(config.get(name), dict):
            lines.append(f"| {name} | {_stage_settings(config[name])} |")
    commit = env.get("git_commit")
    lines += [f"| seed / device | {config.get('seed')} / {r['experiment'].get('device')} ({env['device_name']}) |",
              f"| versions | prune-cli {env['prune_cli']}, torch {env['torch']}, torchvision {env['torchvision']}, "
              f"hydra-core {env['hydra']}, Python {env['python']}" + (f", CUDA {env['cuda']}" if env["cuda"] else "")
              + " |",
              f"| host | {env['host']} |"]
    if commit:
        lines.append(f"| launched at commit | {commit[:12]}{' (with uncommitted changes)' if env['git_dirty'] else ''} |")
    return lines


def console_table(r: dict, console) -> None:
    from rich.table import Table
    e, s, a = r["experiment"], r["sparsity"], r["accuracy"]
    table = Table(title=f"{e['strategy']} / {e['schedule']} on {e['model']} / {e['dataset']} (seed {e['seed']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("sparsity target / achieved", f"{_pct(s['target'])} / {_pct(s['achieved'])}")
    dense_label, final_label = accuracy_labels(r)
    table.add_row(dense_label, _pct(a["dense"]))
    table.add_row("accuracy pruned", _pct(a["pruned"]))
    table.add_row(final_label, _pct(a["finetuned"]))
    table.add_row("params total / nonzero", f"{r['params']['total']:,} / {r['params']['nonzero']:,}")
    if r.get("flops"):
        table.add_row("MACs dense / nonzero", f"{r['flops']['dense']:,} / {r['flops']['nonzero']:,}")
    if r.get("shrunk"):
        table.add_row("params after shrinking", f"{r['shrunk'].get('params', 0):,}")
        if r["shrunk"].get("heads_kept"):
            table.add_row("attention heads kept", heads_kept(r["shrunk"]))
    if any(entry["on"] == "shrunk" for entry in r.get("finetuned_on", [])):
        last = r["finetuned_on"][-1]
        table.add_row("fine-tuned on", f"{last['on']} model ({last['params']:,} params"
                                       + (f", last of {len(r['finetuned_on'])} stages)" if len(r["finetuned_on"]) > 1 else ")"))
    speedup = r.get("speedup") or {}
    rows = speedup_lines(speedup)
    if speedup and not any(label.startswith("measured") for label, _ in rows):
        rows.append(("measured speed-up", "none: masked weights still run dense kernels"))
    for label, value in rows:
        table.add_row(label, value)
    quantized = r.get("quantized")
    if quantized:
        table.add_row(f"accuracy quantized ({quantized['method']})", _pct(quantized["accuracy"]))
        table.add_row("int8 weights zero / file bytes", f"{_pct(quantized.get('sparsity'))} / "
                                                        f"{_bytes(quantized.get('file_bytes', quantized['bytes']))}")
        timed = quantized.get("latency") or {}
        if timed:
            table.add_row("latency int8", _per_batch(timed))
    table.add_row("cache (dense)", str(r.get("cache", {}).get("dense", "-")))
    table.add_row("total seconds", f"{r['timings'].get('total', 0):.2f}")
    console.print(table)
    for warning in r.get("warnings", []):
        console.print(f"[bold yellow]warning:[/] {warning}")
