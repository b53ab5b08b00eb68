"""Names -> components, derived from the Hydra config groups.

`conf/<group>/<name>.yaml` with its `_target_` is the only wiring: there is no list of names to keep in sync.
`MODELS.get("patchcore")` reads `conf/model/patchcore.yaml` and imports the class its `_target_` names, so a
new model is one Python file plus one YAML file.
"""
from __future__ import annotations

import importlib
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, Iterator

CONF_DIR = (Path(__file__).resolve().parent / "conf").resolve()  # ad/conf: see ad.config.CONFIG_DIR


@lru_cache(maxsize=None)
def _target(group: str, name: str) -> str:
    import yaml

    path = CONF_DIR / group / f"{name}.yaml"
    data = yaml.safe_load(path.read_text()) if path.is_file() else None
    target = data.get("_target_") if isinstance(data, dict) else None
    if not target:
        raise KeyError(f"conf/{group}/{name}.yaml has no _target_")
    return str(target)


# Model modules moved into family packages (`ad.models.patchcore` -> `ad.models.memory.patchcore`): files
# written before the move (model.pt, checkpoints) name the old path, which still resolves to the same class.
_FAMILIES = ("memory", "flows", "distillation", "reconstruction", "foundation", "discriminative")


def current_target(target: str) -> str:
    """`target` as today's configs spell it: a pre-family model path (`ad.models.padim.Padim`) becomes its
    family path (`ad.models.memory.padim.Padim`); any other path is returned unchanged."""
    parts = target.split(".")
    if len(parts) != 4 or parts[:2] != ["ad", "models"] or parts[2] in _FAMILIES or parts[2] == "base":
        return target
    for family in _FAMILIES:
        if (Path(__file__).resolve().parent / "models" / family / f"{parts[2]}.py").is_file():
            return ".".join(["ad", "models", family, parts[2], parts[3]])
    return target


def import_target(target: str) -> Any:
    """The object a dotted `_target_` path names (`ad.models.memory.patchcore.PatchCore`)."""
    module, _, attr = current_target(target).rpartition(".")
    return getattr(importlib.import_module(module), attr)


class ConfigRegistry:
    """The options of one config group that build a component (`_target_`), by option name."""

    def __init__(self, group: str) -> None:
        self.group = group

    def names(self) -> list[str]:
        out = []
        for p in sorted((CONF_DIR / self.group).glob("*.yaml")):
            try:
                _target(self.group, p.stem)
            except KeyError:
                continue
            out.append(p.stem)
        return out

    def target(self, name: str) -> str:
        try:
            return _target(self.group, name)
        except KeyError:
            raise KeyError(f"unknown {self.group} '{name}'; available: {', '.join(self.names())}") from None

    def get(self, name: str) -> Any:
        return import_target(self.target(name))

    def create(self, name: str, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)

    def name_of(self, obj: Any) -> str:
        """The option name whose `_target_` builds `obj` (a class or an instance)."""
        cls = obj if isinstance(obj, type) else type(obj)
        path = f"{cls.__module__}.{cls.__qualname__}"
        for name in self.names():
            if self.target(name) == path:
                return name
        raise KeyError(f"no conf/{self.group}/*.yaml builds {path}")

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (CONF_DIR / self.group / f"{name}.yaml").is_file()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"ConfigRegistry({self.group!r}, {self.names()})"


MODELS = ConfigRegistry("model")
DATASETS = ConfigRegistry("dataset")
