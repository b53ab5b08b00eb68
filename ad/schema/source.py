"""A Hydra config source that serves each node's schema defaults, made from its constructor on demand.

`conf/config.yaml` lists `optional schema/<group>@<group>: ${<group>}` before the group itself, so the composed
node starts from every key of the chosen option's constructor with its default, and the option's YAML then
sets its own values on top. A key the constructor has is therefore always composable (`evaluation.objective=
always`, `model.nprobe=4`), whatever the YAML lists; only the chosen options are read (lazily, no torch).

Paths served: `schema/<group>/<option>` for the groups of `nodes.TARGET_GROUPS`, `schema/<node>/default` for the
nodes of `nodes.FIXED_NODES`.
"""
from __future__ import annotations

from typing import List, Optional

from hydra.core.object_type import ObjectType
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
from omegaconf import OmegaConf

from ad.errors import ADError
from ad.schema import nodes
from ad.schema.signature import signature_of

SCHEME = "adschema"
_GROUPS = tuple(nodes.TARGET_GROUPS) + tuple(nodes.FIXED_NODES)


def schema_defaults(target: str, exclude: tuple = ()) -> dict:
    """Every literal-default key of `target`'s constructor, with its default."""
    return {k: v for k, v in signature_of(target).literal_defaults().items() if k not in exclude}


def _split(config_path: str) -> List[str]:
    path = config_path[:-5] if config_path.endswith(".yaml") else config_path
    return [p for p in path.strip("/").split("/") if p]


class SchemaSource(ConfigSource):
    @staticmethod
    def scheme() -> str:
        return SCHEME

    def available(self) -> bool:
        return True

    def _target(self, parts: List[str]) -> Optional[str]:
        if len(parts) < 3 or parts[0] != "schema":
            return None
        group, option = parts[1], "/".join(parts[2:])
        if group in nodes.FIXED_NODES:
            return nodes.FIXED_NODES[group] if option == "default" else None
        if group in nodes.TARGET_GROUPS and option in nodes.options(group):
            try:
                return nodes.option_target(group, option)
            except ADError:
                return None
        return None

    def load_config(self, config_path: str) -> ConfigResult:
        target = self._target(_split(config_path))
        if target is None:
            raise ConfigLoadError(f"no schema for {config_path}")
        node = schema_defaults(target, nodes.NOT_KEYS.get(target, ()))
        return ConfigResult(provider="ad-schema", path=f"{SCHEME}://{self.path}", config=OmegaConf.create(node),
                            header={"package": None})

    def is_group(self, config_path: str) -> bool:
        parts = _split(config_path)
        return parts == ["schema"] or (len(parts) == 2 and parts[0] == "schema" and parts[1] in _GROUPS)

    def is_config(self, config_path: str) -> bool:
        return self._target(_split(config_path)) is not None

    def list(self, config_path: str, results_filter: Optional[ObjectType]) -> List[str]:
        parts = _split(config_path)
        if parts == ["schema"]:
            return sorted(_GROUPS) if results_filter in (None, ObjectType.GROUP) else []
        if len(parts) == 2 and parts[0] == "schema" and results_filter in (None, ObjectType.CONFIG):
            return ["default"] if parts[1] in nodes.FIXED_NODES else nodes.options(parts[1])
        return []


def register() -> None:
    """Make the `adschema://` scheme known to Hydra (idempotent)."""
    from hydra.core.plugins import Plugins

    Plugins.instance().register(SchemaSource)
