"""Every config option composes and instantiates; config option names equal registry names."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ad.config import CONFIG_DIR, compose
from ad.backbones._specs import KNOWN_BACKBONES
from ad.registry import DATASETS, MODELS
from ad.schema.check import validate

CONF = Path(CONFIG_DIR)


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


# Options whose default does minutes of one-time work (EfficientAD distils its teacher) get the cheap alternative.
MODEL_TEST_OVERRIDES = {
    "efficientad": ["model.teacher_weights=random"],
}


def test_groups_exist():
    for group in ("model", "dataset", "category", "trainer", "backbone", "logger", "paths", "launcher", "sweep"):
        assert options(group), f"conf/{group} has no options"


@pytest.mark.parametrize("kind,registry,base", [("model", MODELS, "ad.models.base.AnomalyModel"),
                                               ("dataset", DATASETS, "ad.data._base.AnomalyDataModule")])
def test_registry_is_derived_from_the_config_group(kind, registry, base):
    """No second name list: every option of the group is a registry name, built from its own `_target_`."""
    import importlib

    from ad.registry import import_target

    assert options(kind) == registry.names()
    base_cls = import_target(base)
    for name in options(kind):
        target = OmegaConf.load(CONF / kind / f"{name}.yaml")["_target_"]
        module, _, attr = target.rpartition(".")
        cls = getattr(importlib.import_module(module), attr)
        assert registry.get(name) is cls and issubclass(cls, base_cls), f"conf/{kind}/{name}.yaml"
        assert registry.name_of(cls) == name


def test_backbone_options_have_known_normalisation():
    assert set(options("backbone")) <= set(KNOWN_BACKBONES)


def _same_keys_as_the_preflight_hint(group: str, option: str, node) -> None:
    """The config check names the valid keys of a component from its schema, without composing again: they
    must be the composed node's keys."""
    from ad.launch.preflight import _component_keys

    known = _component_keys(group, [f"{group}={option}"])
    if known is not None:
        assert sorted(known[1]) == sorted(k for k in node if not str(k).startswith("_")), (group, option)


@pytest.mark.parametrize("name", options("model"))
def test_every_model_option_instantiates(name):
    cfg = compose([f"model={name}", "backbone.pretrained=false", *MODEL_TEST_OVERRIDES.get(name, [])])
    validate(cfg)  # the option's YAML agrees with its constructor's schema
    _same_keys_as_the_preflight_hint("model", name, cfg.model)
    model = instantiate(cfg.model)
    assert MODELS.name_of(model) == name


@pytest.mark.parametrize("name", options("category"))
def test_every_category_pins_its_dataset(name):
    cfg = compose([f"category={name}"])
    validate(cfg)
    assert str(cfg.dataset.category) == name
    dataset = cfg.hydra.runtime.choices.dataset
    assert dataset in options("dataset")
    data = instantiate(cfg.dataset)  # constructing must not touch the disk
    assert data.category == name


LAUNCHER_PLUGINS = {"joblib": "hydra_plugins.hydra_joblib_launcher", "slurm": "hydra_plugins.hydra_submitit_launcher",
                    "submitit_local": "hydra_plugins.hydra_submitit_launcher"}


def _plugin_missing(group: str, name: str) -> bool:
    import importlib.util

    module = LAUNCHER_PLUGINS.get(name) if group == "launcher" else None
    try:
        return module is not None and importlib.util.find_spec(module) is None
    except ModuleNotFoundError:
        return True


@pytest.mark.parametrize("group", ["trainer", "backbone", "launcher", "logger", "sweep", "dataset"])
def test_every_option_composes(group):
    for name in options(group):
        if _plugin_missing(group, name):
            continue  # an optional extra (pip install -e ".[slurm]"); test_sweep.py covers it when installed
        prefix = "+" if group == "sweep" else ""
        cfg = compose([f"{prefix}{group}={name}"])
        validate(cfg)  # every node of the composed config passes its schema
        if group in ("trainer", "backbone", "dataset"):
            _same_keys_as_the_preflight_hint(group, name, cfg[group])
        if group == "trainer":
            instantiate(cfg.trainer)
        if group == "backbone":
            instantiate(cfg.backbone)


def test_sweep_presets_cover_all_categories():
    def cats(sweep):
        cfg = compose([f"+sweep={sweep}"])
        return str(cfg.hydra.sweeper.params.category).split(",")

    mvtec, visa, btad = cats("mvtec"), cats("visa"), cats("btad")
    assert len(mvtec) == 15 and len(visa) == 12 and btad == ["01", "02", "03"]
    assert sorted(cats("all")) == sorted(mvtec + visa + btad)
    assert set(cats("synthetic")) == {"syn_tiles", "syn_weave", "syn_disc"}
    for c in mvtec + visa + btad:
        assert (CONF / "category" / f"{c}.yaml").is_file()


def test_smoke_trainer_shrinks_the_run():
    cfg = compose(["trainer=smoke"])
    assert cfg.trainer.max_steps == 2 and cfg.dataset.image_size == 64
    assert cfg.trainer._target_ == compose([]).trainer._target_
