"""Costs of a run's final model: multiply-adds, latency, sizes, and the physically shrunk model of a
structured result. Models are timed side by side (dense twin, masked, shrunk, CSR) for fair ratios."""
from __future__ import annotations

import logging

import torch

from prune_cli.measure.flops import count_flops
from prune_cli.measure.latency import measure_latency
from prune_cli.measure.sizes import checkpoint_sizes
from prune_cli.training.evaluate import eval_mode
from prune_cli.training.float32 import ieee_fp32
from prune_cli.training.step import prepare

log = logging.getLogger("prune_cli")
# Largest output difference between masked and shrunk models that counts as the same model, relative to the
# largest output (at least 1): summing the same products in another order moves float32 results by ~1e-7 of
# their size, wide layers with large logits included; a wrongly kept or dropped unit moves them far more.
EXACT = 1e-5


def measure_final(model, *, masks, structured: bool, compressed: bool, example: torch.Tensor, test, device,
                  dense_twin, measure_cfg, export_cfg, quantized=None, pattern=None) -> dict:
    """``{"flops", "latency", "shrunk", "size_bytes", "speedup", ["export"], ["shrunk_payload"]}``.
    ``quantized``: an int8 model (CPU) timed beside the others when the run is on the CPU. ``pattern``: the
    strategy's N:M pattern; 2:4 on a CUDA GPU is also timed on semi-structured sparse kernels."""
    with eval_mode(model):
        return _measure(model, masks, structured, compressed, example, test, device, dense_twin, measure_cfg,
                        export_cfg, quantized, pattern)


def _measure(model, masks, structured, compressed, example, test, device, dense_twin, measure_cfg,
             export_cfg, quantized=None, pattern=None) -> dict:
    example_shape = tuple(example.shape[1:])
    masks = dict(masks) if masks else None
    out = {"flops": count_flops(model, example_shape, masks)}
    for timed_model in (model, dense_twin):  # every model timed in one memory layout, so ratios are of pruning
        prepare(timed_model)
    timed = {"masked": model, "dense": dense_twin}
    shrunk_info = None
    if structured and masks:
        from prune_cli.pruning.shrink import shrink
        shrunk_model, shrunk_info = shrink(model, masks, example)
        shrunk_model.eval()
        prepare(shrunk_model)  # the layout the masked model trained in (channels-last conv nets on a GPU)
        diff, scale = _max_output_diff(model, shrunk_model, test)
        shrunk_info["max_abs_diff"], shrunk_info["max_abs_output"] = diff, scale
        shrunk_info["matches_masked"] = bool(diff <= EXACT * max(1.0, scale))
        if not shrunk_info["matches_masked"]:
            log.warning("shrunk model differs from the masked one by %.3g (outputs up to %.3g)", diff, scale)
        timed["shrunk"] = shrunk_model
        out["flops"]["shrunk"] = count_flops(shrunk_model, example_shape)["dense"]
        shrunk_state = {k: v.detach().cpu().clone() for k, v in shrunk_model.state_dict().items()}
        out["shrunk_payload"] = {"state_dict": shrunk_state, "shapes": shrunk_info["shapes"]}
    if export_cfg.get("sparse") and not structured:
        from prune_cli.measure.csr import sparse_layer_names, to_sparse
        sparse_model = to_sparse(model, float(export_cfg.get("min_sparsity", 0.8)))
        layers = sparse_layer_names(sparse_model)
        out["export"] = {"sparse": {"sparse_layers": layers, "used": False}}
        if layers:
            timed["sparse"] = sparse_model
    if quantized is not None and torch.device(device).type == "cpu":
        timed["quantized"] = quantized
    if pattern is not None and masks:
        from prune_cli.measure.semi_structured import semi_structured_pair
        pair, out["semi_structured"] = semi_structured_pair(model, masks, pattern, device)
        if pair is not None and measure_cfg.get("latency", True):
            timed.update(pair)
    latency, graphs = {}, {}
    batch_sizes = [int(b) for b in measure_cfg.get("batch_sizes", (1, 256))]
    if measure_cfg.get("latency", True):
        budget = float(measure_cfg.get("latency_budget_s", 0.5))
        latency = measure_latency(timed, example_shape, device, batch_sizes=batch_sizes, max_time_s=budget)
        if torch.device(device).type == "cuda":
            from prune_cli.measure.latency import measure_graph_latency
            graphs = measure_graph_latency({k: v for k, v in timed.items() if k in ("dense", "masked", "shrunk")},
                                           example_shape, device, batch_sizes=batch_sizes, max_time_s=budget)
    if "sparse" in latency:
        from prune_cli.measure.csr import sparse_is_faster
        info = out["export"]["sparse"]
        info.update(dense_ms=latency["masked"], sparse_ms=latency["sparse"])
        info["used"] = sparse_is_faster(latency["masked"], latency["sparse"])
        if not info["used"]:
            latency.pop("sparse")
    out["latency"] = latency
    out["latency_cuda_graph"] = graphs
    out["shrunk"] = shrunk_info
    out["size_bytes"] = checkpoint_sizes(model.state_dict(), masks or {},
                                         out.get("shrunk_payload", {}).get("state_dict"))
    from prune_cli.measure.sizes import serialized_size
    out["dense_model"] = {"params": sum(p.numel() for p in dense_twin.parameters()),
                          "bytes": serialized_size(dense_twin.state_dict())}
    if quantized is not None:
        out["quantized_bytes"] = serialized_size(quantized.state_dict())
    out["speedup"] = _speedups(out, compressed)
    if graphs.get("dense") and (graphs.get("shrunk") or graphs.get("masked")):
        # The same speed-up without launch overhead: what the shrunk model saves in arithmetic on a GPU.
        fast = "shrunk" if graphs.get("shrunk") else "masked"
        out["speedup"]["measured_cuda_graph"] = _ratios(graphs["dense"], graphs[fast])
        out["speedup"]["cuda_graph_of"] = fast  # the model those ratios are of (a shrunk one not captured: masked)
    return out


@torch.inference_mode()
def _max_output_diff(a, b, split) -> tuple[float, float]:
    """(largest |a(x) - b(x)|, largest |a(x)|) over the split, in IEEE float32 (TF32 moves outputs by far more
    than ``EXACT``)."""
    worst, scale = 0.0, 0.0
    with ieee_fp32():
        for x, _ in split.batches(1024):
            out = a(x)
            worst = max(worst, float((out - b(x)).abs().max()))
            scale = max(scale, float(out.abs().max()))
    return worst, scale


def _speedups(out: dict, compressed: bool) -> dict:
    """How a speed-up was obtained: measured on a shrunk model, or only theoretical (dense kernels)."""
    latency = out["latency"]
    result = {"theoretical": out["flops"].get("theoretical_speedup"), "method": "none", "measured": {}}
    if latency.get("semi_structured") and latency.get("masked_fp16"):
        # Against the same masked model in the same precision (float16) on dense kernels: the kernels' gain
        # alone, not float16's.
        base, fast = latency["masked_fp16"], latency["semi_structured"]
        result.update(method="semi-structured sparse kernel (2:4, float16)", baseline="masked model in float16",
                      measured=_ratios(base, fast))
        slower = [key for key, ratio in result["measured"].items() if ratio < 1.0]
        if slower:
            result["note"] = (f"the semi-structured kernel is slower than dense float16 at {', '.join(slower)} "
                              f"(its fixed cost outweighs the halved arithmetic at these sizes)")
        return result
    if out.get("semi_structured", {}).get("note"):
        result["note"] = out["semi_structured"]["note"]
    base = latency.get("dense")
    fastest = latency.get("shrunk") or latency.get("sparse") or latency.get("masked")
    if base and fastest:
        # A masked model runs dense kernels: its ratio is ~1 and is reported as such, not as a speed-up.
        result["method"] = ("shrunk model" if latency.get("shrunk") else
                            "sparse kernel (CSR)" if latency.get("sparse") else
                            "smaller model (compress)" if compressed else "none")
        result["measured"] = _ratios(base, fastest)
    return result


def _ratios(base: dict, fast: dict) -> dict:
    """Speed-ups per batch size, named as the ratios they are: ``{"batch_256": 2.1}`` from the latencies'
    ``batch_256_ms`` (baseline / fast; above 1 is faster)."""
    return {key.removesuffix("_ms"): base[key] / fast[key] for key in base if fast.get(key)}
