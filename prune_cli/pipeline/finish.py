"""The last stage: measure the final model, save ``pruned.pt``, then write the report (last, so that
``status: completed`` means everything else is on disk)."""
from __future__ import annotations

import logging

import torch
from omegaconf import OmegaConf

from prune_cli.config import variant
from prune_cli.measure.final import measure_final
from prune_cli.measure.timing import Timer
from prune_cli.models import build
from prune_cli.pipeline.outcome import Outcome
from prune_cli.report.build import build_report
from prune_cli.report.environment import environment
from prune_cli.report.files import write_report
from prune_cli.storage.checkpoint import save_checkpoint, save_quantized
from prune_cli.storage.run_dir import remove_leftovers

log = logging.getLogger("prune_cli")


def finish(exp, outcome: Outcome) -> dict:
    if exp.state.weights_pending:
        raise RuntimeError("the loop never restored the saved weights of the run it resumed")
    model, masks = outcome.model, outcome.masks
    quantized = _quantize(exp, outcome)
    measured = measure_final(model, masks=masks, structured=exp.record.structured,
                             compressed=exp.record.compress is not None, example=exp.example, test=exp.data.test,
                             device=exp.device, dense_twin=_dense_twin(outcome.spec, exp.device), measure_cfg=exp.cfg.get("measure", {}),
                             export_cfg=exp.cfg.get("export", {}),
                             quantized=quantized.model if quantized is not None else None,
                             pattern=exp.strategy.pattern)
    if quantized is not None:
        measured["quantized"] = _quantized_facts(exp, quantized, measured, outcome.prunable)
    state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    extra = {"fingerprint": exp.fingerprint, "variant": variant(exp.cfg), "device": str(exp.device),
             "threads": exp.threads,
             "gpu_memory_fraction": exp.gpu_memory_fraction, "run_dir": str(exp.run_dir.resolve()),
             "checkpoint_saves": {"count": exp.state.saves, "seconds": exp.state.save_seconds}}
    report = build_report(exp.record, state_dict=state_dict, prunable=outcome.prunable, ignored=exp.ignored,
                          parameters={name for name, _ in model.named_parameters()}, measured=measured,
                          target=float(exp.cfg.sparsity), run=extra)
    report["config"] = OmegaConf.to_container(exp.cfg, resolve=True)  # what prune-compare labels variants by
    report["environment"] = environment(exp.device, exp.overrides)
    train, finetune = exp.settings.train, exp.settings.finetune
    report["precision"] = {"train": train.precision, "finetune": finetune.precision, "eval": finetune.precision,
                           "matmul": torch.get_float32_matmul_precision()}
    report["compile"] = {"train": train.compile, "finetune": finetune.compile}
    import prune_cli.distributed as distributed
    report["distributed"] = distributed.describe(exp.device)
    path = exp.run_dir / "pruned.pt"
    save_checkpoint(path, state_dict=state_dict, masks=masks.cpu_state() if masks else {}, spec=outcome.spec,
                    config=OmegaConf.to_container(exp.cfg, resolve=True), report=report,
                    shrunk=measured.get("shrunk_payload"))
    report["size_bytes"]["checkpoint"] = path.stat().st_size
    if quantized is not None:
        qpath = exp.run_dir / "quantized.pt"
        save_quantized(qpath, quantized, spec=outcome.spec, config=OmegaConf.to_container(exp.cfg, resolve=True), report=report)
        report["quantized"]["file_bytes"] = qpath.stat().st_size
        report["compression"][-1]["bytes"]["quantized"] = qpath.stat().st_size
    write_report(exp.run_dir, report)
    exp.state.remove()
    remove_leftovers(exp.run_dir, completed=True)
    return report


def _dense_twin(spec: dict, device):
    """A dense model of the same architecture at full width, timed beside the result for fair speed-ups."""
    spec = {"target": spec["target"], "kwargs": dict(spec["kwargs"])}
    spec["kwargs"].pop("width", None)
    return build(spec).to(device).eval()


def _quantize(exp, outcome: Outcome):
    """The optional last stage: int8 post-training quantization of the fine-tuned model (``quantize``)."""
    method = str(exp.cfg.quantize.name)
    if method == "none":
        return None
    from prune_cli.measure.quantized import quantize
    with Timer(exp.device) as t:
        quantized = quantize(outcome.model, method, outcome.prunable)
    exp.record.add_time("quantize", t.seconds)
    for line in quantized.skipped:
        log.warning("quantize=%s: %s", method, line)
    return quantized


def _quantized_facts(exp, quantized, measured, prunable) -> dict:
    """What the report says of the quantized model: accuracy (test, validation) measured on the CPU, where
    its int8 kernels run, and the zeros of its int8 weights."""
    from prune_cli.measure.quantized import zero_counts, nonzero_params
    from prune_cli.training.evaluate import evaluate
    batch = int(exp.cfg.eval_batch_size)
    facts = {"method": quantized.method, "library": quantized.library, "int8_weights": quantized.layers,
             "kept_float": quantized.skipped,
             "accuracy": evaluate(quantized.model, exp.data.test.to("cpu"), batch)}
    if exp.data.val is not None:
        facts["val_accuracy"] = evaluate(quantized.model, exp.data.val.to("cpu"), batch)
    zeros, total = zero_counts(quantized.model, prunable)
    facts.update(prunable_int8_zeros=zeros, prunable_int8_weights=total,
                 sparsity=zeros / total if total else None, params_nonzero=nonzero_params(quantized.model))
    facts["latency"] = measured["latency"].get("quantized")
    if exp.device.type != "cpu":
        facts["note"] = (f"int8 kernels run on the CPU: accuracy measured there; latency not compared with the "
                         f"{exp.device.type} models")
        log.warning("quantize=%s: %s", quantized.method, facts["note"])
    return facts
