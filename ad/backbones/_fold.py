"""Fold inference-mode batch norms into the convolutions that feed them (frozen backbones only).

A frozen backbone's BatchNorm is a fixed per-channel affine map y = γ·(x − μ)/√(σ² + ε) + β, so it can be
absorbed into the preceding convolution's weights and bias. On CPU the separate BN passes over every
activation cost ~1/3 of an EfficientNet-Lite forward; folding removes them (lite0, 32×256², 2 threads:
0.69 s → 0.44 s per batch) with identical outputs up to float rounding.
"""
from __future__ import annotations

import copy
import logging
from typing import Any, List, Tuple

import torch
from torch import nn

log = logging.getLogger(__name__)


def _replacement(bn: nn.Module):
    """What stays of a BN layer once its affine map lives in the conv, or None for unknown BN variants."""
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    try:
        from timm.layers import BatchNormAct2d
    except ImportError:  # pragma: no cover - timm is a dependency
        return None
    if type(bn) is BatchNormAct2d:  # timm's BN + dropout + activation: keep the latter two
        return nn.Sequential(bn.drop, bn.act)
    return None


def _conv_bn_pairs(model: nn.Module, example: torch.Tensor) -> Tuple[List[Tuple[str, str]], Any]:
    """(conv, bn) module names where the BN consumes exactly the tensor the conv just produced, found by
    running `example` through the model (works for any architecture, no tracing), and the model's output."""
    calls, hooks = [], []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.BatchNorm2d)):
            def hook(mod, inputs, output, name=name):
                calls.append((name, inputs[0], output))  # tensors kept alive so identities stay unique
            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            output = model(example)
    except Exception as exc:  # e.g. a fixed-size transformer: nothing to fold there anyway
        log.debug("batch-norm folding skipped: the example input does not run (%s)", exc)
        return [], None
    finally:
        for h in hooks:
            h.remove()
    modules = dict(model.named_modules())
    times_called = {}
    for name, _, _ in calls:
        times_called[name] = times_called.get(name, 0) + 1
    pairs = []
    for (a, _, out_a), (b, in_b, _) in zip(calls, calls[1:]):
        if (isinstance(modules[a], nn.Conv2d) and isinstance(modules[b], nn.BatchNorm2d) and in_b is out_a
                and times_called[a] == times_called[b] == 1):  # a shared module must not be folded twice
            pairs.append((a, b))
    return pairs, output


def fold_batchnorms(model: nn.Module, example: torch.Tensor, rtol: float = 1e-3) -> Tuple[nn.Module, int]:
    """A copy of `model` (in eval mode, not to be trained further) with every conv→BN pair folded, and how
    many were folded.

    The folded copy is checked against `model` on `example`; if any output differs by more than `rtol`
    relative to its largest magnitude (for instance because a conv's output was also used elsewhere),
    `model` itself is returned with 0.
    """
    model.eval()
    pairs, want = _conv_bn_pairs(model, example)
    if not pairs:
        return model, 0
    fused = copy.deepcopy(model)
    modules = dict(fused.named_modules())
    folded = 0
    with torch.no_grad():
        for conv_name, bn_name in pairs:
            conv, bn = modules[conv_name], modules[bn_name]
            repl = _replacement(bn)
            if repl is None or bn.running_mean is None or bn.running_var is None:
                continue
            scale = bn.running_var.add(bn.eps).rsqrt()
            if bn.weight is not None:
                scale = scale * bn.weight
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            new_bias = (bias - bn.running_mean) * scale + (bn.bias if bn.bias is not None else 0.0)
            conv.weight.mul_(scale.view(-1, *([1] * (conv.weight.dim() - 1))).to(conv.weight.dtype))
            conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype), requires_grad=False)
            parent, _, child = bn_name.rpartition(".")
            setattr(modules[parent] if parent else fused, child, repl)
            folded += 1
        got = fused(example)
    want = list(want) if isinstance(want, (list, tuple)) else [want]
    got = list(got) if isinstance(got, (list, tuple)) else [got]
    ok = len(want) == len(got) and all(
        w.shape == g.shape and float((w - g).abs().max()) <= rtol * max(float(w.abs().max()), 1e-6)
        for w, g in zip(want, got)
    )
    if not ok:
        log.warning("batch-norm folding changed the backbone's outputs; keeping the unfolded backbone")
        return model, 0
    return fused, folded


__all__ = ["fold_batchnorms"]
