"""Name -> component registries.

Each component kind (model, dataset, backbone) has one `Registry`. Components register themselves with a
decorator; Hydra configs wire them up through `_target_`, and a test checks that every config option name
matches a registered name, so `conf/model/patchcore.yaml` is always one hop from `ad/models/patchcore.py`.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, TypeVar

T = TypeVar("T")


class Registry:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: Dict[str, Any] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator: `@MODELS.register("patchcore")` (defaults to the object's lower-cased name)."""

        def deco(obj: T) -> T:
            key = name or getattr(obj, "__name__", str(obj)).lower()
            if key in self._entries and self._entries[key] is not obj:
                raise KeyError(f"{self.kind} '{key}' is registered twice ({self._entries[key]} and {obj})")
            self._entries[key] = obj
            try:
                setattr(obj, "registry_name", key)
            except (AttributeError, TypeError):
                pass
            return obj

        return deco

    def get(self, name: str) -> Any:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(
                f"unknown {self.kind} '{name}'; available: {', '.join(sorted(self._entries))}"
            ) from None

    def create(self, name: str, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


MODELS = Registry("model")
DATASETS = Registry("dataset")
BACKBONES = Registry("backbone")

register_model = MODELS.register
register_dataset = DATASETS.register
register_backbone = BACKBONES.register


def import_submodules(package_name: str) -> None:
    """Import every module of a package so their `@register_*` decorators run.

    New components are picked up by dropping a file in the package; no list to edit.
    """
    import importlib
    import pkgutil

    package = importlib.import_module(package_name)
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package_name}.{info.name}")
