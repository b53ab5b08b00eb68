"""Check a composed config against the schemas: unknown keys (with the closest valid ones), missing required
values, types and ranges — one `ConfigError` line naming the key and what it may be, before anything runs.

Values are checked with `ad.values` (the same helper the components use), so a message reads the same whether
the schema or a constructor finds the mistake.
"""
from __future__ import annotations

import collections.abc
import difflib
import typing
from typing import Any, Dict, Iterable, List, Optional

from ad.errors import ConfigError
from ad.schema import nodes
from ad.schema.signature import REQUIRED, Signature, nested_target, signature_of
from ad.values import Check, Range, number

_SEQUENCES = (list, tuple, collections.abc.Sequence, collections.abc.Iterable, collections.abc.Collection)
_MAPPINGS = (dict, collections.abc.Mapping)


# --- describing a type (for messages) ----------------------------------------------------------------------
def describe(tp: Any) -> str:
    """'an integer >= 1', 'one of mean_std, quantile', 'a list of numbers'... for a schema type."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        if any(isinstance(m, Check) for m in tp.__metadata__) and args[0] is not None:
            return describe(args[0])
        rng = next((m for m in tp.__metadata__ if isinstance(m, Range)), None)
        return describe(args[0]) + (f" {rng.describe()}" if rng else "")
    if origin is typing.Union:
        parts = [describe(a) for a in args if a is not type(None)] + (["null"] if type(None) in args else [])
        return ", ".join(parts[:-1]) + f" or {parts[-1]}" if len(parts) > 1 else parts[0]
    if origin is typing.Literal:
        return str(args[0]) if len(args) == 1 else "one of " + ", ".join(str(a) for a in args)
    if origin in _SEQUENCES:
        inner = args[0] if args else Any
        return "a list" + ("" if inner is Any else f" of {_plural(describe(inner))}")
    if origin in _MAPPINGS or tp in (dict,):
        return "a mapping {key: value}"
    if nested_target(tp):
        return "a mapping {key: value}"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            type(None): "null", list: "a list", tuple: "a list"}.get(tp, "a value")


def _plural(text: str) -> str:
    for one, many in (("an integer", "integers"), ("a number", "numbers"), ("a string", "strings"),
                      ("a list", "lists")):
        if text.startswith(one):
            return many + text[len(one):]
    return text


# --- one value ---------------------------------------------------------------------------------------------
def check_value(value: Any, tp: Any, key: str) -> None:
    """Raise ConfigError (one line naming `key`) when `value` is not of schema type `tp`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is object:
        return
    if origin is typing.Annotated:
        custom = next((m for m in tp.__metadata__ if isinstance(m, Check)), None)
        if custom is not None:
            custom.func(value, key)
            return
        rng = next((m for m in tp.__metadata__ if isinstance(m, Range)), None)
        base = args[0]
        if rng is not None and base in (int, float):
            rng.check(value, key, base)
            return
        check_value(value, base, key)
        return
    if origin is typing.Union:
        _check_union(value, args, key)
        return
    if origin is typing.Literal:
        if value in args or str(value) in [str(a) for a in args if not isinstance(a, bool)]:
            return
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        hint = f"; did you mean {key}={close[0]}?" if close else ""
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(str(a) for a in args)}{hint}")
    if origin in _SEQUENCES or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} is not {describe(tp)}; set {key}=[...]")
        if origin is tuple and args and args[-1] is not Ellipsis:  # tuple[int, int]: fixed length
            if len(value) != len(args):
                raise ConfigError(f"{key}={value!r} must have {len(args)} items")
            for i, (v, t) in enumerate(zip(value, args)):
                check_value(v, t, f"{key}[{i}]")
            return
        inner = args[0] if args else Any
        for i, v in enumerate(value):
            check_value(v, inner, f"{key}[{i}]")
        return
    if origin in _MAPPINGS or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r} is not {describe(tp)}")
        return
    target = nested_target(tp)
    if target:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r} is not a mapping; set its keys as {key}.<key>=<value>")
        check_node(value, signature_of(target), key)
        return
    _check_plain(value, tp, key)


def _check_plain(value: Any, tp: Any, key: str) -> None:
    if tp in (int, float):
        number(value, key, tp)
    elif tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} is not true or false; set {key}=true or {key}=false")
    elif tp is str:
        # numbers pass: a category or name written 01 reaches here as an int, and str() of it is meant
        if value is None or isinstance(value, (dict, list, tuple, bool)):
            raise ConfigError(f"{key}={value!r} is not a string; set {key}=<text>")
    elif tp is type(None):
        if value is not None:
            raise ConfigError(f"{key}={value!r} must be null")


def _check_union(value: Any, args: tuple, key: str) -> None:
    if value is None and type(None) in args:
        return
    options = [a for a in args if a is not type(None)]
    errors: List[ConfigError] = []
    for a in options:
        try:
            check_value(value, a, key)
            return
        except ConfigError as e:
            errors.append(e)
    if len(options) == 1:  # Optional[X]: X's own message, saying that null is allowed too
        raise ConfigError(f"{errors[0]}{'' if 'null' in str(errors[0]) else ' or null'}")
    numeric = [e for a, e in zip(options, errors) if _is_number_type(a) and "must be" in str(e)]
    if numeric:  # the right kind but out of range: that message is the useful one
        raise numeric[0]
    raise ConfigError(f"{key}={value!r} is not {describe(typing.Union[tuple(args)])}")


def _is_number_type(tp: Any) -> bool:
    base = typing.get_args(tp)[0] if typing.get_origin(tp) is typing.Annotated else tp
    return base in (int, float)


# --- nodes -------------------------------------------------------------------------------------------------
def closest(name: str, candidates: Iterable[str], n: int = 3) -> List[str]:
    return difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.6)


def unknown_key(key: str, valid: Iterable[str], where: str) -> ConfigError:
    """'trainer.max_epoch is not a key of trainer; did you mean trainer.max_epochs?'."""
    prefix, _, name = key.rpartition(".")
    valid = sorted(valid)
    near = closest(name, valid)
    full = [f"{prefix}.{k}" if prefix else k for k in near]
    hint = (f"did you mean {' or '.join(full)}?" if near
            else f"valid keys: {', '.join(valid[:12])}{' ...' if len(valid) > 12 else ''}")
    return ConfigError(f"{key} is not a key of {where}; {hint}")


def check_node(node: Dict[str, Any], sig: Signature, prefix: str, exclude: Iterable[str] = ()) -> None:
    """Every key of `node` is a parameter of `sig`, every required parameter is set, every value fits."""
    exclude = set(exclude)
    params = {k: p for k, p in sig.params.items() if k not in exclude}
    for key, value in node.items():
        if key in nodes.HYDRA_KEYS:
            continue
        if key not in params:
            if sig.open:
                continue
            raise unknown_key(f"{prefix}.{key}", params, f"{prefix} ({sig.target})")
        check_value(value, params[key].type, f"{prefix}.{key}")
        if isinstance(value, dict) and value.get("_target_") and not nested_target(params[key].type):
            check_target_node(value, f"{prefix}.{key}")
    for key, p in params.items():
        if p.default is REQUIRED and (key not in node or node[key] == "???"):
            raise ConfigError(f"{prefix}.{key} is required; set {prefix}.{key}=<{describe(p.type)}>")


def check_target_node(node: Dict[str, Any], prefix: str) -> None:
    target = str(node["_target_"])
    check_node(node, signature_of(target), prefix, nodes.NOT_KEYS.get(target, ()))


def check_config(config: Dict[str, Any]) -> None:
    """Check a resolved config (a plain dict, `hydra` left out) against every node's schema."""
    root = signature_of(nodes.ROOT)
    allowed = set(nodes.root_keys()) | set(root.params)
    for key in config:
        if key != "hydra" and key not in allowed:
            raise unknown_key(key, allowed - {"hydra"}, "the config")
    for key in root.params:
        if key in config:
            check_value(config[key], root.params[key].type, key)
    for key, value in config.items():
        if key == "hydra" or key in root.params:
            continue
        target = nodes.node_target(key, value)
        if target is not None and isinstance(value, dict):
            check_node(value, signature_of(target), key, nodes.NOT_KEYS.get(target, ()))


# --- a composed DictConfig ---------------------------------------------------------------------------------
# Resolvers that are evaluated when a job starts and may import torch (a GPU count): not needed to check values.
_RUNTIME_RESOLVERS = ("ad_device:",)


def resolved(cfg: Any) -> Dict[str, Any]:
    """The config as plain data, `hydra` left out, interpolations resolved (one line when one cannot be)."""
    import copy

    from omegaconf import DictConfig, ListConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    body = copy.deepcopy(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]))
    body._set_parent(cfg)  # `${hydra:...}` and `${paths...}` still resolve against the whole config

    def neutralise(node: Any) -> None:
        keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
        for k in keys:
            child = node._get_node(k)
            if isinstance(child, (DictConfig, ListConfig)):
                if not child._is_none() and not child._is_missing() and not child._is_interpolation():
                    neutralise(child)
            elif child is not None and isinstance(child._value(), str) \
                    and any(r in child._value() for r in _RUNTIME_RESOLVERS):
                node[k] = "auto"

    neutralise(body)
    try:
        return OmegaConf.to_container(body, resolve=True, throw_on_missing=False)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise ConfigError(f"{key}: {first}" if key else first) from None


def validate(cfg: Any) -> Dict[str, Any]:
    """Check a composed config; returns it resolved (plain data, without `hydra`)."""
    config = resolved(cfg)
    check_config(config)
    return config


def check_instance(obj: Any, prefix: str) -> None:
    """Check a settings dataclass built in Python (not composed) against its own schema, e.g. in
    `__post_init__`: `TrainerSettings(num_threads="abc")` fails like `trainer.num_threads=abc` does."""
    import dataclasses

    cls = type(obj)
    values = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    values = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in values.items()}
    check_node(values, signature_of(f"{cls.__module__}.{cls.__qualname__}"), prefix)
