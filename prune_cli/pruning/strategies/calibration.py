"""One-shot criteria from calibration inputs: Wanda (Sun et al. 2023) and SparseGPT (Frantar & Alistarh 2023).

Both read what each prunable layer receives on ``calibration_batches`` shuffled *training* batches (never test
data), in eval mode. A Linear layer's inputs are its input features; a Conv layer's are its unfolded patches
(``F.unfold``), ordered (kernel row, kernel column, input channel) so that N:M groups run along input channels
as in ``patterns.to_groups``.

- Wanda scores |W_ij| * ||X_j||_2 and is compared within each output row (``scope: row``, the paper's).
- SparseGPT prunes layer by layer, in the order the forward pass reaches them, each on the inputs the already
  pruned layers before it produce. For each layer it solves the layer-wise reconstruction with the inverse of
  H = 2 X X^T / n (plus ``dampening`` times its mean diagonal), in column blocks of ``block_size``: within a
  block, the mask is chosen by w^2 / [H^-1]_jj^2 and each pruned weight's error is spread over the columns not
  yet processed (the paper's Algorithm 1). The surviving weights change; that is the method.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prune_cli.pruning.masks import CONVOLUTIONS, Masks
from prune_cli.pruning.strategies.base import ScoringContext, Strategy
from prune_cli.schema import Bool, Int, Num
from prune_cli.training.evaluate import eval_mode


def _module_of(model: nn.Module, weight_name: str) -> nn.Module:
    return model.get_submodule(weight_name.rpartition(".")[0])


def _column_order(module: nn.Module) -> torch.Tensor | None:
    """For a Conv, the permutation from F.unfold's (channel, kh, kw) order to (kh, kw, channel)."""
    if not isinstance(module, CONVOLUTIONS):
        return None
    c, kernel = module.in_channels, module.kernel_size
    return torch.arange(c * int(torch.tensor(kernel).prod())).view(c, *kernel).permute(
        *range(1, len(kernel) + 1), 0).flatten()


def _inputs_as_columns(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(samples, columns) rows of what the layer multiplies its weight with."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise ValueError(f"grouped convolutions (groups={module.groups}) are not supported")
        patches = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=module.padding,
                           stride=module.stride)                      # (N, C*kh*kw, L)
        columns = patches.transpose(1, 2).reshape(-1, patches.shape[1])
        return columns[:, _column_order(module).to(x.device)]
    raise ValueError(f"{type(module).__name__} layers are not supported (Linear and Conv2d are)")


def _weight_columns(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """The weight as (out, columns), columns in the order ``_inputs_as_columns`` gives."""
    order = _column_order(module)
    flat = weight.flatten(1)
    return flat if order is None else flat[:, order.to(weight.device)]


def _from_columns(module: nn.Module, columns: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    order = _column_order(module)
    if order is None:
        return columns.reshape(like.shape)
    flat = torch.empty_like(columns)
    flat[:, order.to(columns.device)] = columns
    return flat.reshape(like.shape)


def _capture(model: nn.Module, names: list[str], batches, each) -> list[str]:
    """Run the batches through the model, calling ``each(name, columns)`` with every named layer's inputs;
    returns the names in the order the forward pass reached them."""
    order: list[str] = []
    hooks = []
    for name in names:
        module = _module_of(model, name)

        def hook(module, args, _output, name=name):
            if name not in order:
                order.append(name)
            each(name, _inputs_as_columns(module, args[0].detach()))
        hooks.append(module.register_forward_hook(hook))
    try:
        with eval_mode(model), torch.no_grad():
            for x, _ in batches:
                model(x)
    finally:
        for handle in hooks:
            handle.remove()
    return order


class _Calibrated(Strategy):
    config_schema = {"calibration_batches": Int(1, 1_000_000)}

    def __init__(self, calibration_batches: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.calibration_batches = int(calibration_batches)

    def _check_layers(self, ctx: ScoringContext) -> None:
        for name in ctx.prunable:
            module = _module_of(ctx.model, name)
            if not isinstance(module, (nn.Linear, nn.Conv2d)) or getattr(module, "groups", 1) != 1:
                from prune_cli.errors import UsageError
                raise UsageError(f"strategy={self.name}: {name} is a {type(module).__name__}"
                                 f"{' with groups' if isinstance(module, nn.Conv2d) else ''}; it calibrates Linear "
                                 f"and ungrouped Conv2d layers (leave it dense with strategy.ignore=[{name}])")

    def _check_reached(self, ctx: ScoringContext, reached: list[str]) -> None:
        """Every layer must be called as a module in the forward pass: its inputs are what is measured. (A
        ``nn.MultiheadAttention``'s ``out_proj`` is not: the attention uses its weight directly.)"""
        missing = [name for name in ctx.prunable if name not in reached]
        if missing:
            from prune_cli.errors import UsageError
            modules = [name.rsplit(".", 1)[0] for name in missing]
            leaves = {module.rsplit(".", 1)[-1] for module in modules}
            pattern = f"'.*{leaves.pop()}'" if len(leaves) == 1 and len(modules) > 1 else ",".join(modules)
            raise UsageError(f"strategy={self.name}: {missing[0]} is never called as a module in the forward pass "
                             f"(its weight is used directly), so its inputs cannot be measured; leave "
                             f"{'it' if len(missing) == 1 else f'these {len(missing)} layers'} dense with "
                             f"strategy.ignore=[{pattern}]")

    def describe(self) -> dict:
        return {**super().describe(), "calibration_batches": self.calibration_batches}


class Wanda(_Calibrated):
    """|W_ij| * ||X_j||_2 over the calibration inputs (Sun et al. 2023), compared within each output row.

    ``sequential`` (the reference code's order, the default): layers in forward order, each one's input norms
    measured with the layers before it already pruned to the target, so later layers see the inputs the
    pruned model gives them. ``false``: every layer's norms from the dense model in one pass (faster; a
    departure, stated in docs/methods.md). Pruning as it goes fixes each layer's own sparsity, so sequential
    Wanda compares within a row or a layer and takes no per-layer rates."""
    name = "wanda"
    config_schema = {"sequential": Bool()}

    def __init__(self, sequential: bool = True, **kwargs):
        kwargs.setdefault("scope", "row")  # the paper's comparison group
        super().__init__(**kwargs)
        self.sequential = bool(sequential)
        # Pruning as it scores, sequential Wanda's scores depend on the target: never shared across sparsities.
        self.scores_depend_on_target = self.sequential
        if self.sequential:
            if self.scope == "global":
                raise ValueError("strategy.scope=global: sequential wanda prunes each layer as it goes, so it "
                                 "compares within a row or a layer (set strategy.sequential=false to rank globally)")
            self.takes_layer_rates = False

    def describe(self) -> dict:
        return {**super().describe(), "sequential": self.sequential}

    def _norms(self, ctx: ScoringContext, names: list[str]) -> tuple[dict, list[str]]:
        """{name: ||X_j||_2 per input column} of the named layers, and the order the forward pass reached them."""
        squares: dict[str, torch.Tensor] = {}

        def add(name, columns):
            total = (columns.float() ** 2).sum(dim=0)
            squares[name] = squares[name] + total if name in squares else total

        order = _capture(ctx.model, names, ctx.calibration_batches(self.calibration_batches), add)
        return {name: total.sqrt() for name, total in squares.items()}, order

    def _score(self, ctx: ScoringContext, name: str, norms: dict) -> torch.Tensor:
        module, weight = _module_of(ctx.model, name), ctx.model.get_parameter(name).detach()
        norm = norms.get(name, torch.zeros(_weight_columns(module, weight).shape[1], device=weight.device))
        return _from_columns(module, _weight_columns(module, weight).abs() * norm[None, :], weight)

    def score(self, ctx: ScoringContext):
        self._check_layers(ctx)
        norms, order = self._norms(ctx, ctx.prunable)
        self._check_reached(ctx, order)
        if not self.sequential:
            return {name: self._score(ctx, name, norms) for name in ctx.prunable}
        scores, dense = {}, {}
        try:
            for name in order:
                if scores:  # the layers before this one are pruned now: measure what this one receives
                    norms, _ = self._norms(ctx, [name])
                scores[name] = self._score(ctx, name, norms)
                # The same thresholding the pipeline applies to these scores afterwards (this layer alone).
                mask = self._layer_mask(name, scores[name], ctx)
                weight = ctx.model.get_parameter(name)
                dense[name] = weight.detach().clone()
                with torch.no_grad():
                    weight.mul_(mask.to(weight.dtype))
        finally:
            with torch.no_grad():
                for name, values in dense.items():
                    ctx.model.get_parameter(name).copy_(values)
        return scores

    def _layer_mask(self, name: str, score: torch.Tensor, ctx: ScoringContext) -> torch.Tensor:
        previous = Masks({name: ctx.masks[name]}) if ctx.masks is not None and name in ctx.masks else None
        if self.pattern is not None:
            from prune_cli.errors import UsageError
            from prune_cli.pruning.patterns import nm_masks
            try:
                return nm_masks({name: score}, self.pattern, self.pattern.kept_at(ctx.target), previous=previous)[name]
            except ValueError as err:  # a pruned.pt whose zeros do not fit the pattern
                raise UsageError(f"strategy.pattern={self.pattern}: {err}") from None
        from prune_cli.errors import UsageError
        from prune_cli.pruning.masks import topk_masks
        try:
            return topk_masks({name: score}, ctx.target, self.scope, previous=previous)[name]
        except ValueError as err:  # a pruned.pt with more zeros in this layer than the target gives it
            raise UsageError(f"sparsity={ctx.target:.6g}: {err}") from None


class SparseGPT(_Calibrated):
    """Layer-wise pruning with OBS weight reconstruction (Frantar & Alistarh 2023), layers in forward order."""
    name = "sparsegpt"
    reconstructs = True
    takes_layer_rates = False  # every layer is reconstructed at the target itself
    config_schema = {"dampening": Num(0.0, 10.0), "block_size": Int(1, 1 << 20)}

    def __init__(self, dampening: float = 0.01, block_size: int = 128, **kwargs):
        super().__init__(**kwargs)
        if self.scope != "layer":
            raise ValueError(f"strategy.scope={self.scope}: sparsegpt prunes every layer to the target on its "
                             f"own (scope: layer)")
        self.dampening, self.block_size = float(dampening), int(block_size)

    def describe(self) -> dict:
        return {**super().describe(), "dampening": self.dampening, "block_size": self.block_size}

    def score(self, ctx: ScoringContext):
        raise NotImplementedError("sparsegpt gives its masks through reconstruct(), not scores")

    def reconstruct(self, ctx: ScoringContext) -> Masks:
        self._check_layers(ctx)
        params = dict(ctx.model.named_parameters())
        # The order the forward pass reaches the layers: one pass, before anything is pruned.
        order = _capture(ctx.model, ctx.prunable, ctx.calibration_batches(1), lambda *_: None)
        self._check_reached(ctx, order)
        masks = {}
        for name in order:
            module, weight = _module_of(ctx.model, name), params[name]
            hessian = {"H": None, "n": 0}

            def add(layer, columns, name=name):
                if layer != name:
                    return
                columns = columns.double()
                h = hessian["H"]
                hessian["H"] = (h if h is not None else 0) + 2.0 * columns.T @ columns
                hessian["n"] += len(columns)

            _capture(ctx.model, [name], ctx.calibration_batches(self.calibration_batches), add)
            previous = ctx.masks.get(name) if ctx.masks is not None else None
            w = _weight_columns(module, weight.detach()).double()
            prev = None if previous is None else _weight_columns(module, previous.to(w.device)) == 0
            h = (hessian["H"] / max(1, hessian["n"])) if hessian["H"] is not None else torch.zeros(
                w.shape[1], w.shape[1], dtype=torch.float64, device=w.device)
            new_w, pruned = self._prune_layer(w, h, ctx.target, prev, name)
            with torch.no_grad():
                weight.copy_(_from_columns(module, new_w.to(weight.dtype), weight))
            masks[name] = _from_columns(module, (~pruned).float(), weight).to(weight.device)
        return Masks(masks)

    def _prune_layer(self, w: torch.Tensor, h: torch.Tensor, target: float, prev, name: str):
        """Algorithm 1 of the paper on one layer: (new weights, bool mask of the pruned entries)."""
        rows, cols = w.shape
        h = h.clone()
        dead = torch.diag(h) == 0
        h[dead, dead] = 1.0  # inputs that are always zero: decoupled, and free to prune
        h += self.dampening * torch.mean(torch.diag(h)) * torch.eye(cols, dtype=h.dtype, device=h.device)
        try:
            hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
        except torch.linalg.LinAlgError:
            from prune_cli.errors import UsageError
            raise UsageError(f"strategy.dampening={self.dampening}: the calibration Hessian of {name} is not "
                             f"positive definite with it; use a larger dampening (e.g. 0.01)") from None
        pattern = self.pattern
        block = self.block_size if pattern is None else max(pattern.m, self.block_size // pattern.m * pattern.m)
        counts = None if pattern is not None else _block_counts(
            round(target * rows * cols), [min(block, cols - s) * rows for s in range(0, cols, block)],
            [int(prev[:, s:s + block].sum()) if prev is not None else 0 for s in range(0, cols, block)])
        w = w.clone()
        pruned = torch.zeros_like(w, dtype=torch.bool)
        for b, start in enumerate(range(0, cols, block)):
            end = min(start + block, cols)
            w1, hinv1 = w[:, start:end].clone(), hinv[start:end, start:end]
            err1 = torch.zeros_like(w1)
            mask1 = torch.zeros_like(w1, dtype=torch.bool)
            if pattern is None:
                loss = self._loss(w1, hinv1, dead[start:end], prev, start, end)
                order = torch.sort(loss.flatten(), stable=True).indices[:counts[b]]
                mask1.view(-1)[order] = True
            for i in range(end - start):
                if pattern is not None and i % pattern.m == 0:
                    group = slice(i, i + pattern.m)
                    loss = self._loss(w1[:, group], hinv1[group, group], dead[start:end][group], prev,
                                      start + i, start + i + pattern.m)
                    drop = pattern.m - pattern.kept_at(target)
                    chosen = torch.sort(loss, dim=1, stable=True).indices[:, :drop]
                    if prev is not None and bool((prev[:, start + i:start + i + pattern.m].sum(1) > drop).any()):
                        raise ValueError(f"{name} already has more than {drop} zeros in a group of {pattern.m}")
                    mask1[:, group].scatter_(1, chosen, True)
                column, d = w1[:, i], hinv1[i, i]
                q = torch.where(mask1[:, i], torch.zeros_like(column), column)
                e = (column - q) / d
                w1[:, i:] -= e[:, None] @ hinv1[i, i:][None, :]
                w1[:, i] = q
                err1[:, i] = e
            w[:, start:end] = w1
            w[:, end:] -= err1 @ hinv[start:end, end:]
            pruned[:, start:end] = mask1
        return w.masked_fill(pruned, 0.0), pruned

    @staticmethod
    def _loss(w1, hinv1, dead, prev, start, end):
        """w^2 / [H^-1]_jj^2 per entry; 0 for always-zero inputs, -inf for weights already pruned."""
        loss = w1 ** 2 / torch.diag(hinv1)[None, :] ** 2
        loss[:, dead] = 0.0
        if prev is not None:
            loss = loss.masked_fill(prev[:, start:end], float("-inf"))
        return loss


def _block_counts(goal: int, sizes: list[int], minimums: list[int]) -> list[int]:
    """Zeros per column block: in proportion to the blocks' sizes, summing exactly to ``goal``, each at least
    what the block already has pruned (masks only shrink) and at most its size."""
    if sum(minimums) > goal:
        raise ValueError(f"the layer already has {sum(minimums)} zeros, more than the {goal} its target gives it "
                         f"(sparsegpt prunes every layer to the target; masks only shrink)")
    edges = [0]
    for size in sizes:
        edges.append(edges[-1] + size)
    total = edges[-1]
    counts = [max(lo, round(goal * b / total) - round(goal * a / total)) for a, b, lo in
              zip(edges, edges[1:], minimums)]
    excess = sum(counts) - goal
    for i in sorted(range(len(counts)), key=lambda i: counts[i] - minimums[i], reverse=True):
        if excess <= 0:
            break
        take = min(excess, counts[i] - minimums[i])
        counts[i] -= take
        excess -= take
    return [min(c, s) for c, s in zip(counts, sizes)]
