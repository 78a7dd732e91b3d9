"""Freezing: parameters by name pattern or by backbone stage, BatchNorm statistics, and what is left to train.

    freeze_parameters(model, patterns=["net.layer1.*"])      # glob patterns on parameter names
    freeze_stages(model, 2)                                  # the stem and the first stage of the timm trunk
    freeze_batchnorm(model, "frozen")                        # BN layers whose parameters are all frozen
    print(trainable_summary(model))

A frozen parameter has ``requires_grad=False``: no gradient is computed for it and the optimiser never sees
it. That alone does not freeze a BatchNorm layer: in training mode it still normalises with the batch's
statistics and updates its running mean and variance. :func:`freeze_batchnorm` puts such layers in
evaluation mode for good (a forward pre-hook, so ``model.train()`` cannot undo it and the state dict keeps
its keys).
"""

from __future__ import annotations

import fnmatch
from collections import OrderedDict

from torch import nn

from models.utils import first_n

BN_MODES = ("none", "frozen", "all")


def freeze_parameters(model: nn.Module, patterns: list[str] | tuple[str, ...]) -> list[str]:
    """Set ``requires_grad=False`` on parameters whose name matches any glob pattern; returns their names.

    A pattern that matches no parameter is an error (a typo would otherwise silently train everything).
    """
    names = [n for n, _ in model.named_parameters()]
    frozen: list[str] = []
    params = dict(model.named_parameters())
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            tops = sorted({n.rsplit(".", 2)[0] for n in names})
            raise ValueError(f"freeze pattern {pattern!r} matches no parameter (train.freeze); patterns are globs "
                             f"on parameter names such as {names[0]!r}; modules: {first_n(tops, 12)}")
        for n in hits:
            params[n].requires_grad_(False)
        frozen += hits
    return sorted(set(frozen), key=names.index)


def stage_parameter_names(model: nn.Module) -> tuple[str, list[list[str]]]:
    """The timm trunk inside ``model`` and its parameters split by feature level (timm's ``feature_info``).

    Returns ``(prefix, stages)``: ``prefix`` is the trunk's module name in ``model`` and ``stages[i]`` the
    (full) parameter names up to and including level ``i`` that are not in an earlier level: level 0 also
    holds the stem (everything before the first level's module).
    """
    for prefix, module in model.named_modules():
        info = getattr(module, "feature_info", None)
        if info is None:
            continue
        if isinstance(info, list):                 # a full timm model: a list of dicts
            levels = [d["module"] for d in info]
        elif hasattr(info, "info"):                # features_only: all levels, not only the returned ones
            levels = [d["module"] for d in info.info]
        else:
            continue
        names = [n for n, _ in module.named_parameters()]
        ends = []
        for i, level in enumerate(levels):
            # features_only wrappers rename "stages.0" to "stages_0"
            starts = (level + ".", level.replace(".", "_") + ".")
            own = [k for k, n in enumerate(names) if n.startswith(starts)]
            if own:
                ends.append(own[-1])
            else:   # a level with no parameters of its own (an activation): it ends where the next begins
                later = [k for k, n in enumerate(names)
                         for nxt in levels[i + 1:] if n.startswith((nxt + ".", nxt.replace(".", "_") + "."))]
                ends.append(min(later) - 1 if later else len(names) - 1)
        full = [f"{prefix}.{n}" if prefix else n for n in names]
        stages, start = [], 0
        for end in ends:
            stages.append(full[start:end + 1])
            start = max(start, end + 1)
        return prefix, stages
    raise ValueError("freezing by stage needs a timm model inside the network (a module with feature_info); "
                     "use train.freeze name patterns instead")


def freeze_stages(model: nn.Module, num_stages: int) -> list[str]:
    """Freeze the first ``num_stages`` feature levels of the timm trunk (level 0 includes the stem)."""
    if num_stages <= 0:
        return []
    prefix, stages = stage_parameter_names(model)
    if num_stages > len(stages):
        raise ValueError(f"train.freeze_stages={num_stages}, but the trunk {prefix or 'model'!r} has only "
                         f"{len(stages)} feature levels")
    params = dict(model.named_parameters())
    names = [n for stage in stages[:num_stages] for n in stage]
    for n in names:
        params[n].requires_grad_(False)
    return names


def _bn_eval_hook(module: nn.Module, inputs) -> None:
    # Runs before every forward: whatever model.train() did, this layer uses (and keeps) its running stats.
    module.training = False


def freeze_batchnorm(model: nn.Module, mode: str = "frozen") -> list[str]:
    """Keep BatchNorm layers in evaluation mode (running statistics used and not updated).

    mode: ``"none"``; ``"frozen"``: the BN layers whose parameters are all frozen;
    ``"all"``: every BN layer (its scale and shift still train unless frozen), e.g. for small batches or
    for results that must not depend on how a batch is split across processes. Returns the layer names.
    """
    if mode not in BN_MODES:
        raise ValueError(f"train.freeze_bn={mode!r} is not one of {BN_MODES}")
    if mode == "none":
        return []
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.modules.batchnorm._BatchNorm):
            continue
        own = list(module.parameters())
        if mode == "frozen" and (not own or any(p.requires_grad for p in own)):
            continue
        if not getattr(module, "_bn_frozen", False):
            module.register_forward_pre_hook(_bn_eval_hook)
            module._bn_frozen = True
        module.eval()
        names.append(name)
    return names


def trainable_summary(model: nn.Module, max_groups: int = 30) -> str:
    """Trainable and total parameter counts, overall and by module, as printable lines."""
    params = list(model.named_parameters())
    total = sum(p.numel() for _, p in params)
    trainable = sum(p.numel() for _, p in params if p.requires_grad)
    depth = 1
    for d in (2, 3, 4):
        if len({_prefix(n, d) for n, _ in params}) <= max_groups:
            depth = d
    groups: OrderedDict[str, list[int]] = OrderedDict()
    for n, p in params:
        g = groups.setdefault(_prefix(n, depth), [0, 0])
        g[1] += p.numel()
        if p.requires_grad:
            g[0] += p.numel()
    lines = [f"trainable parameters: {trainable:,} of {total:,} ({100.0 * trainable / max(total, 1):.1f}%)"]
    width = max((len(k) for k in groups), default=10)
    for name, (t, n) in groups.items():
        state = "trainable" if t == n else ("frozen" if t == 0 else "partly frozen")
        lines.append(f"  {name:<{width}}  {t:>12,} / {n:<12,} {state}")
    return "\n".join(lines)


def _prefix(name: str, depth: int) -> str:
    parts = name.split(".")[:-1] or [name]
    return ".".join(parts[:depth])
