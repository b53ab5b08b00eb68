"""Config helpers: the path to `conf/`, OmegaConf resolvers used by the configs, composing in code."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def _params_suffix(override_dirname: str) -> str:
    """Swept parameters for a job directory name: "" or "_lr=0.1,k=3" (slashes made safe)."""
    return f"_{override_dirname}".replace("/", "-") if override_dirname else ""


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("ad_params"):
        OmegaConf.register_new_resolver("ad_params", _params_suffix)


def compose(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """Compose the real configs outside a Hydra app (tests, notebooks), with `hydra:` resolvers available."""
    from hydra import compose as _compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_resolvers()
    GlobalHydra.instance().clear()
    from hydra.core.hydra_config import HydraConfig

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = _compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # so ${hydra:...} interpolations resolve outside an app
    return cfg


register_resolvers()
