"""Which constructor is the schema of which config node.

A node with a `_target_` (model, dataset, backbone, trainer, and any nested `_target_`) is described by the
class it names. The nodes without one are listed in `FIXED_NODES`. Top-level keys are the groups and keys of
`conf/config.yaml` plus the fields of `ad.engine.settings.ExperimentSettings`.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional

from ad.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent.parent.parent / "conf"

# Config nodes that build no object from a `_target_`: the class whose signature describes them.
FIXED_NODES = {
    "evaluation": "ad.engine.settings.EvalSettings",
    "setting": "ad.engine.settings.SettingSpec",
    "logger": "ad.loggers.tensorboard.TensorBoardLogger",
}
# Constructor parameters that the entry point passes itself (not config keys).
NOT_KEYS = {"ad.loggers.tensorboard.TensorBoardLogger": ("log_dir",)}
# Top-level values of the experiment (seed, tag): the fields of this class.
ROOT = "ad.engine.settings.ExperimentSettings"
# Groups whose options build a component and get a schema of their own (`schema/<group>/<option>`).
TARGET_GROUPS = ("model", "dataset", "backbone", "trainer")
# Hydra's own instantiation keys, allowed in every node with a `_target_`.
HYDRA_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_", "_args_")


def _load_yaml(path: Path) -> Any:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C parser: ~10x faster on the compose path
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=loader)


@lru_cache(maxsize=None)
def options(group: str) -> List[str]:
    """The options of a config group: `conf/<group>/*.yaml` (nested folders as `sub/name`)."""
    root = CONF_DIR / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


@lru_cache(maxsize=None)
def group_default(group: str) -> Optional[str]:
    """The option `conf/config.yaml` selects for `group` by default."""
    data = _load_yaml(CONF_DIR / "config.yaml") or {}
    for entry in data.get("defaults") or []:
        if isinstance(entry, dict) and group in entry:
            return entry[group]
    return None


@lru_cache(maxsize=None)
def root_keys() -> List[str]:
    """Top-level keys a composed config may have: the groups and own keys of conf/config.yaml."""
    data = _load_yaml(CONF_DIR / "config.yaml") or {}
    keys = [k for k in data if k != "defaults"]
    for entry in data.get("defaults") or []:
        if isinstance(entry, dict):
            keys += [str(k).split("@")[-1].split("/")[0].replace("optional ", "") for k in entry]
    return sorted(set(keys) - {"_self_"})


@lru_cache(maxsize=None)
def option_target(group: str, option: str) -> str:
    """The `_target_` of a group option; presets without one (`trainer=smoke`, `@package _global_`) build
    what the group's default option builds."""
    path = CONF_DIR / group / f"{option}.yaml"
    if not path.is_file():
        raise ConfigError(f"{group}={option} is not an option (no conf/{group}/{option}.yaml)")
    data = _load_yaml(path) or {}
    target = data.get("_target_") or (data.get(group) or {}).get("_target_") if isinstance(data, dict) else None
    if target:
        return str(target)
    default = group_default(group)
    if default and default != option:
        return option_target(group, default)
    raise ConfigError(f"conf/{group}/{option}.yaml has no _target_")


def node_target(name: str, node: Dict[str, Any]) -> Optional[str]:
    """The class that describes top-level node `name`: its `_target_`, or the fixed class, or None (free)."""
    if isinstance(node, dict) and node.get("_target_"):
        return str(node["_target_"])
    return FIXED_NODES.get(name)
