"""Write docs/report.schema.json, the JSON Schema of report.json (every field and what it means).

    python scripts/report_schema.py

Edit the descriptions here, not in the JSON. The tests validate every report a run writes against the file.
"""
from pathlib import Path

import json
N = {"type": "number"}
NN = {"type": ["number", "null"]}
I = {"type": "integer", "minimum": 0}
S = {"type": "string"}
FRAC = {"type": "number", "minimum": 0, "maximum": 1}
FRACN = {"type": ["number", "null"], "minimum": 0, "maximum": 1}
def obj(props, required=(), extra=False, desc=None):
    o = {"type": "object", "properties": props, "additionalProperties": extra}
    if required: o["required"] = list(required)
    if desc: o["description"] = desc
    return o
def d(schema, text):
    return dict(schema, description=text)
phases = obj({"dense": d(FRACN, "the dense model (or the loaded weights)"),
              "pruned": d(FRACN, "right after (the last) pruning, before its fine-tuning"),
              "finetuned": d(FRACN, "the final model")}, ["dense", "pruned", "finetuned"])
latency_entry = obj({"batch_1_ms": d(N, "median ms per forward pass at batch 1"),
                     "batch_256_ms": d(N, "median ms per forward pass at batch 256")})
history_entry = obj({"stage": d(S, "the training phase: train, round1.finetune, round2.l1, gradual.finetune, control, compress"),
                     "epoch": d(I, "1-based epoch of the phase"), "epochs": d(I, "the phase's epochs"),
                     "loss": d(N, "mean training loss of the epoch's steps"), "lr": d(N, "the epoch's learning rate"),
                     "seconds": d(N, "the epoch's wall time"),
                     "val_accuracy": d(FRAC, "validation accuracy after the epoch (with a validation split)"),
                     "cached": d({"type": "boolean"}, "true: an epoch of the run that trained the cached dense model")},
                    ["stage", "epoch", "epochs", "loss", "lr", "seconds"])
compression_row = obj({"model": d(S, "dense, pruned, shrunk or quantized (<method>)"),
                       "accuracy": d(FRACN, "test accuracy"), "val_accuracy": d(FRACN, "validation accuracy"),
                       "params_nonzero": d({"type": ["integer", "null"]}, "non-zero parameters"),
                       "bytes": obj({"dense": d({"type": ["integer", "null"]}, "torch.save of the float state dict"),
                                     "sparse": d({"type": ["integer", "null"]}, "the float weights in sparse encoding"),
                                     "quantized": d({"type": ["integer", "null"]}, "quantized.pt on disk")}),
                       "latency_ms": d({"anyOf": [latency_entry, {"type": "null"}]}, "timed side by side with the others")},
                      ["model", "accuracy", "params_nonzero", "bytes", "latency_ms"])
schema = {
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "$id": "https://github.com/prune-cli/prune-cli/docs/report.schema.json",
  "title": "prune-cli report.json",
  "description": "What prune-run writes to report.json. A failed or interrupted run writes only status and error. Fractions are in [0, 1]; accuracies are top-1 on the test split unless named val_; sparsity is counted from the saved weights.",
  "type": "object",
  "required": ["status"],
  "additionalProperties": False,
  "properties": {
    "status": d({"enum": ["completed", "failed", "interrupted"]}, "completed: every file of the run is written"),
    "error": d(S, "why a run failed or was interrupted (one line)"),
    "fingerprint": d(S, "hash of the whole config except result-neutral knobs: the run's identity for resuming and for prune-compare's duplicate check"),
    "experiment": obj({"model": S, "dataset": S, "strategy": S, "schedule": S, "seed": I,
                       "device": d(S, "the device it ran on (cpu, cuda:0)"), "threads": d(I, "CPU threads used"),
                       "run_dir": d(S, "absolute run directory"),
                       "variant": d(S, "hash of the config without seed and sparsity: runs prune-compare averages together")},
                      ["model", "dataset", "strategy", "schedule", "seed"], desc="what ran"),
    "strategy": d({"type": "object"}, "the strategy's settings (Strategy.describe(): name, scope, granularity, prune_classifier, and its own keys)"),
    "schedule": d({"type": "object"}, "the schedule's settings (Schedule.describe())"),
    "sparsity": obj({"target": FRAC, "achieved": d(FRAC, "zeros / prunable_weights, from the saved weights"),
                     "zeros": I, "prunable_weights": I, "prunable": d(S, "what counts as prunable in this run")},
                    ["target", "achieved", "zeros", "prunable_weights"]),
    "accuracy": d(phases, "test accuracy at each phase"),
    "val_accuracy": d(phases, "the same on the validation split (dataset.val_fraction > 0 or a val/ folder)"),
    "params": obj({"total": I, "nonzero": I, "shrunk": d({"type": ["integer", "null"]}, "parameters of the physically shrunk model")},
                  ["total", "nonzero"], desc="every parameter of the final model"),
    "layers": d({"type": "array", "items": obj({"name": S, "shape": {"type": "array", "items": I}, "sparsity": FRAC,
                                                  "units_kept": d({"type": "array", "items": I}, "[kept, total] output units (structured)"),
                                                  "ignored": d({"type": "boolean"}, "left dense by strategy.ignore; not counted in sparsity")},
                                                 ["name", "shape", "sparsity"])}, "one entry per prunable (or ignored) weight"),
    "rounds": d({"type": "array", "items": obj({"round": I, "target": FRAC, "sparsity": FRAC,
                                                  "accuracy_pruned": FRACN, "accuracy": FRACN,
                                                  "val_accuracy_pruned": FRACN, "val_accuracy": FRACN,
                                                  "epochs": I, "step": d(I, "optimizer step of a gradual prune"), "seconds": N},
                                                 ["round", "target", "sparsity"])}, "one entry per prune (a gradual run: per pruning step)"),
    "timings": d({"type": "object", "additionalProperties": N}, "seconds per stage (train, score, prune, shrink, finetune, evaluate, l1, l0, compress, quantize, total), synchronised on CUDA"),
    "budget": obj({"epochs": d({"type": "object", "additionalProperties": I}, "epochs per phase after the dense stage"),
                   "total_epochs": I}, ["epochs", "total_epochs"], desc="training after the dense stage: what an equal-budget comparison holds equal"),
    "history": d({"type": "array", "items": history_entry}, "one entry per epoch of every training phase"),
    "cache": obj({"dense": d({"enum": ["computed", "computed (cache disabled)", "reused", "loaded"]}, "where the dense model came from"),
                  "key": d(S, "the dense cache key"),
                  "scores": d({"enum": ["computed", "reused"]}, "first-round scores from the score cache"),
                  "weights": obj({"path": S, "sha256": S, "kind": S}, ["path", "sha256"], desc="weights=PATH: the file loaded")},
                 ["dense"]),
    "flops": d({"type": "object", "properties": {"dense": I, "nonzero": I, "shrunk": I, "theoretical_speedup": NN,
                                                 "layers": {"type": "array", "items": {"type": "object"}}}},
               "multiply-adds (MACs, not FLOPs) per image: dense, with the zeros skipped, and of the shrunk model"),
    "latency": d({"type": "object", "additionalProperties": latency_entry}, "per model (dense, masked, shrunk, sparse, quantized): timed side by side on the run's device; empty with measure.latency=false"),
    "size_bytes": obj({"dense": d({"type": ["integer", "null"]}, "the final float state dict, dense encoding"),
                       "sparse": d({"type": ["integer", "null"]}, "the same, sparse encoding of the masked weights"),
                       "shrunk": d({"type": ["integer", "null"]}, "the shrunk model's state dict"),
                       "checkpoint": d({"type": ["integer", "null"]}, "pruned.pt on disk")}),
    "speedup": obj({"theoretical": NN, "method": d(S, "how the measured speed-up was obtained: none, shrunk model, sparse kernel (CSR), smaller model (compress), semi-structured sparse kernel (2:4, float16)"),
                    "measured": d({"type": "object", "additionalProperties": N}, "baseline latency / fastest variant's, per batch size"),
                    "baseline": d(S, "what measured is relative to when not the dense model: the masked model in float16 (semi-structured kernels)"),
                    "note": d(S, "why no sparse kernel was used, e.g. 2:4 masks on the CPU")}),
    "semi_structured": obj({"used": {"type": "boolean"}, "layers": d({"type": "array", "items": S}, "Linear layers on semi-structured sparse weights"),
                            "skipped": d({"type": "object", "additionalProperties": S}, "layers left dense, with why"),
                            "note": {"type": ["string", "null"]}}, desc="strategy.pattern runs: 2:4 masks on PyTorch's semi-structured sparse kernels (CUDA, compute capability 8.0+)"),
    "shrunk": d({"anyOf": [{"type": "object"}, {"type": "null"}]}, "structured runs: the physically smaller model (shapes, params, units_kept, fallback: layers left masked, max_abs_diff and max_abs_output on the test split, matches_masked: the difference within 1e-5 of max(1, max_abs_output))"),
    "quantized": obj({"method": S, "library": d(S, "the library and version that quantized, e.g. torchao 0.18.0"), "int8_weights": {"type": "array", "items": S},
                      "kept_float": d({"type": "array", "items": S}, "prunable weights left in float, with why"),
                      "accuracy": FRAC, "val_accuracy": FRAC, "prunable_int8_zeros": I, "prunable_int8_weights": I,
                      "sparsity": FRACN, "params_nonzero": I,
                      "latency": d({"anyOf": [latency_entry, {"type": "null"}]}, "timed beside the float models (CPU runs)"),
                      "bytes": d(I, "serialised int8 state dict"), "file_bytes": d(I, "quantized.pt on disk"),
                      "note": S}, ["method", "library", "accuracy"], desc="quantize=int8_*: the int8 model (evaluated on the CPU)"),
    "compression": d({"type": "array", "items": compression_row}, "what each step bought: dense, pruned, shrunk, quantized"),
    "finetuned_on": d({"type": "array", "items": obj({
        "stage": d(S, "the fine-tune stage: round1.finetune, gradual.finetune, control"),
        "on": {"enum": ["shrunk", "masked"]},
        "params": d(I, "parameters of the model that stage trained"),
        "why": d(S, "why the full-size masked model was trained (finetune.on=masked, unstructured masks, ...)"),
        "note": d(S, "a stage resumed under the other finetune.on: which epochs trained the other form")},
        ["stage", "on", "params"])}, "which form each fine-tune stage trained (finetune.on)"),
    "distillation": obj({"teacher": S, "temperature": N, "alpha": N}, desc="finetune.distill=true"),
    "warnings": d({"type": "array", "items": S}, "e.g. a layer pruned to 100% (the network is disconnected)"),
    "export": d({"type": "object"}, "export.sparse=true: the CSR export's layers, timings and whether it was used"),
    "compress": d({"type": "object"}, "strategy=compress: the smaller model's width and weight counts"),
    "resumed_from": obj({"stage": S, "epoch": d({"type": ["integer", "null"]}, "null: at the stage boundary")}, desc="where the run continued from a saved state"),
    "checkpoint_saves": obj({"count": I, "seconds": N}, desc="resume-state saves of the process that finished the run"),
    "config": d({"type": "object"}, "the run's whole config, resolved (what prune-compare names variants by)"),
  },
  "if": {"properties": {"status": {"const": "completed"}}},
  "then": {"required": ["fingerprint", "experiment", "strategy", "schedule", "sparsity", "accuracy", "params", "layers",
                        "rounds", "timings", "budget", "history", "cache", "flops", "latency", "size_bytes", "speedup",
                        "shrunk", "compression", "checkpoint_saves"]},
  "else": {"required": ["error"]},
}
(Path(__file__).resolve().parents[1] / "docs" / "report.schema.json").write_text(json.dumps(schema, indent=2) + "\n")
