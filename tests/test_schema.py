"""The config schema (ad.schema): one source for every node's keys, types, ranges and defaults — the signature
of the constructor the node builds — read without importing torch, and the compose-time checks built on it."""
from __future__ import annotations

import importlib
import inspect
import json
import typing

import pytest
from ad.config import compose
from ad.errors import ConfigError
from ad.schema import nodes
from ad.schema.check import validate
from ad.schema.signature import NOT_LITERAL, REQUIRED, signature_of


def _all_targets():
    groups = {nodes.option_target(g, o) for g in nodes.TARGET_GROUPS for o in nodes.options(g)}
    return sorted(groups | set(nodes.FIXED_NODES.values()) | {nodes.ROOT})


def _import(target: str):
    module, _, name = target.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("target", _all_targets())
def test_source_reading_agrees_with_inspect(target):
    """The AST reader (no imports) gives the same names, order, required-ness and defaults as
    inspect.signature of the imported class, and the same range-carrying annotations as typing does."""
    cls = _import(target)
    ref = {k: p for k, p in inspect.signature(cls).parameters.items()
           if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    sig = signature_of(target)
    assert [k for k in sig.params if k in ref] == list(ref)
    assert set(ref) <= set(sig.params)
    hints = typing.get_type_hints(cls.__init__ if "__init__" in vars(cls) else cls, include_extras=True) \
        if not any(isinstance(p.annotation, str) and "BackboneConfig" in p.annotation for p in ref.values()) else {}
    for name, p in ref.items():
        want = REQUIRED if p.default is inspect.Parameter.empty else p.default
        got = sig.params[name].default
        if got is not NOT_LITERAL:
            assert got == want or (isinstance(want, tuple) and tuple(got) == want), name
        if name in hints and "Annotated" in str(hints[name]):
            assert str(hints[name]) == str(sig.params[name].type), name


@pytest.mark.parametrize("target", _all_targets())
def test_every_default_satisfies_its_own_schema(target):
    from ad.schema.check import check_node

    sig = signature_of(target)
    skip = nodes.NOT_KEYS.get(target, ())
    values = {k: "/a/path" if v == "???" else v for k, v in sig.literal_defaults().items() if k not in skip}
    check_node(values, sig, "node", skip)  # a required value (a dataset root) gets a path


def test_readme_keys_compose_through_the_schema():
    """These keys are not in conf/config.yaml; they compose because EvalSettings has them (was: 'Key
    objective is not in struct')."""
    cfg = compose(["evaluation.objective=always", "evaluation.min_val_images=3", "evaluation.cross_fit_folds=5",
                   "evaluation.objective_max_images=8"])
    validate(cfg)
    assert cfg.evaluation.objective == "always" and cfg.evaluation.min_val_images == 3
    assert cfg.evaluation.cross_fit_folds == 5 and cfg.evaluation.objective_max_images == 8


def _key_overrides():
    """`<node>.<key>=<its default>` for every key of every node schema, under the option that has it."""
    cases = []
    for group in nodes.TARGET_GROUPS:
        for option in nodes.options(group):
            sig = signature_of(nodes.option_target(group, option))
            for key, value in sig.literal_defaults().items():
                if value == "???" or key in nodes.NOT_KEYS.get(sig.target, ()) or isinstance(value, dict):
                    continue
                cases.append((f"{group}={option}", f"{group}.{key}", value))
    for node, target in nodes.FIXED_NODES.items():
        for key, value in signature_of(target).literal_defaults().items():
            if key not in nodes.NOT_KEYS.get(target, ()):
                cases.append((None, f"{node}.{key}", value))
    return cases


def test_every_schema_key_composes():
    """Every constructor key of every option is a config key, whatever its YAML lists (one compose per option,
    all of its keys at once)."""
    by_option = {}
    for choice, key, value in _key_overrides():
        by_option.setdefault(choice, []).append(f"{key}={json.dumps(value)}")
    for choice, overrides in by_option.items():
        extra = ["model.teacher_weights=random"] if choice == "model=efficientad" else []
        cfg = compose(([choice] if choice else []) + overrides + extra)
        validate(cfg)


# model, category, dataset, backbone, trainer and launcher options are composed and validated once, in
# tests/test_config.py (each instantiated there too); the setting group has no test of its own there.
@pytest.mark.parametrize("group", ["setting"])
def test_every_option_passes_its_schema(group):
    from tests.test_config import _plugin_missing

    for option in nodes.options(group):
        if _plugin_missing(group, option):
            continue
        validate(compose([f"{group}={option}"]))


@pytest.mark.parametrize("overrides,message", [
    (["+trainer.max_epoch=3"], "trainer.max_epoch is not a key of trainer (ad.engine.settings.TrainerSettings); "
                               "did you mean trainer.max_epochs or trainer.max_steps?"),
    (["+model.nprobes=2"], "model.nprobes is not a key of model (ad.models.memory.patchcore.PatchCore); did you mean "
                           "model.nprobe?"),
    (["+trainer.early_stopping.patiense=3"], "trainer.early_stopping.patiense is not a key of "
                                             "trainer.early_stopping (ad.engine.settings.EarlyStoppingSettings); "
                                             "did you mean trainer.early_stopping.patience?"),
    (["+foo=1"], "foo is not a key of the config; valid keys: "),
    (["dataset.image_size=12x"], "dataset.image_size='12x' is not a positive integer side or [height, width]; set "
                                 "e.g. dataset.image_size=256 or dataset.image_size=[256,320]"),
    (["dataset.cache=mem"], "dataset.cache='mem' is not one of auto, memory, disk, off; did you mean "
                            "dataset.cache=memory?"),
    (["model.coreset_ratio=abc"], "model.coreset_ratio='abc' is not a number; set model.coreset_ratio=<number> "
                                  "in (0, 1]"),
    (["model.coreset_ratio=0"], "model.coreset_ratio=0.0 must be in (0, 1]"),
    (["model=padim", "model.epsilon=0"], "model.epsilon=0.0 must be > 0"),
    (["model=stfpm", "model.lr=-0.1"], "model.lr=-0.1 must be > 0"),
    (["model=stfpm", "model.momentum=1"], "model.momentum=1.0 must be in [0, 1)"),
    (["model=patchcore", "model.search=fast"], "model.search='fast' is not one of exact, flat, ivf"),
    (["model=dfm", "model.n_components=1.5"], "model.n_components=1.5 must be in (0, 1)"),
    (["model=ae", "model.widths=[32,0]"], "model.widths[1]=0 must be >= 1"),
    (["model.layers=[a]"], "model.layers[0]='a' is not an integer; set model.layers[0]=<integer>"),
    (["evaluation.objective=alway"], "evaluation.objective='alway' is not one of auto, always, never; did you mean "
                                     "evaluation.objective=always?"),
    (["evaluation.quantile=1"], "evaluation.quantile=1.0 must be in (0, 1)"),
    (["trainer.early_stopping.patience=0"], "trainer.early_stopping.patience=0 must be >= 1"),
    (["trainer.max_epochs=abc"], "trainer.max_epochs='abc' is not an integer; set trainer.max_epochs=<integer> >= 1 "
                                 "or null"),
    (["trainer.precision=fp16"], "trainer.precision='fp16' is not one of auto, fp32, amp"),
    (["setting.categories=bottle"], "setting.categories='bottle' is not all, a list of strings or null"),
    (["seed=-1"], "seed=-1 must be in [0, 4294967295]"),
    (["dataset.image_size=${foo}"], "dataset.image_size: Interpolation key 'foo' not found"),
])
def test_config_mistakes_are_one_line(overrides, message):
    with pytest.raises(ConfigError) as e:
        validate(compose(overrides))
    assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)


def test_settings_built_in_python_are_checked_by_the_same_schema():
    from ad.engine.settings import TrainerSettings

    with pytest.raises(ConfigError, match=r"^trainer.early_stopping.patience=0 must be >= 1$"):
        TrainerSettings(early_stopping={"patience": 0})
    loop = TrainerSettings(limit_test=3, num_visualizations=1, num_threads=2, deterministic=True).loop()
    assert "limit_test" not in loop and "num_threads" not in loop and "deterministic" not in loop
    assert "num_visualizations" not in loop


def test_the_trainer_takes_only_the_loop_settings():
    """The Trainer's keywords are exactly TrainerSettings.loop()'s, with the same defaults (one schema)."""
    from ad.engine.settings import TrainerSettings
    from ad.engine.trainer import Trainer

    params = inspect.signature(Trainer).parameters
    loop = TrainerSettings().loop()
    assert set(params) == set(loop)
    for name, p in params.items():
        if name not in ("early_stopping", "callbacks"):
            assert p.default == loop[name], name
    assert len(params) <= 18


def test_smoke_preset_size_follows_the_backbone_patch():
    assert compose(["trainer=smoke"]).dataset.image_size == 64
    assert compose(["trainer=smoke", "backbone=vit_small_patch14_dinov2"]).dataset.image_size == 70
    assert compose(["trainer=smoke", "model=anomalydino"]).dataset.image_size == 70  # its default is a ViT
    assert compose(["trainer=smoke", "model=ae", "backbone=vit_small_patch14_dinov2"]).dataset.image_size == 64


# --- the command line: one line, no traceback, no run folder, no torch -------------------------------------
_CLI = """
import resource, sys, time
t0 = time.perf_counter()
sys.argv = ["ad.train"] + sys.argv[1:]
from ad.train import main
try:
    main()
except SystemExit as e:
    code = e.code
usage = resource.getrusage(resource.RUSAGE_SELF)
print(f"RESULT rc={code} torch={'torch' in sys.modules} numpy={'numpy' in sys.modules} wall={time.perf_counter() - t0:.3f} "
      f"cpu={usage.ru_utime + usage.ru_stime:.3f}")
"""


def _cli(tmp_path, *args):
    import os
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HYDRA_FULL_ERROR": "0"}
    out = subprocess.run([sys.executable, "-c", _CLI, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    result = dict(kv.split("=") for kv in out.stdout.strip().splitlines()[-1].split()[1:])
    return out.stderr.strip().splitlines(), result


@pytest.mark.parametrize("args,message", [
    (["dataset.image_size=12x"], "error: dataset.image_size='12x' is not a positive integer side"),
    (["+trainer.max_epoch=3"], "error: trainer.max_epoch is not a key of trainer (ad.engine.settings.TrainerSettings);"
                               " did you mean trainer.max_epochs"),
    (["trainer.max_epoch=3"], "error: trainer.max_epoch is not a key of trainer (ad.engine.settings.TrainerSettings);"
                              " did you mean trainer.max_epochs"),
    (["model=patchcor"], "error: model=patchcor is not an option of model (conf/model/); did you mean model=patchcore?"),
    (["model.coreset_ratio=abc"], "error: model.coreset_ratio='abc' is not a number"),
    (["model=padim", "model.epsilon=0"], "error: model.epsilon=0.0 must be > 0"),
    (["model=stfpm", "model.lr=-1"], "error: model.lr=-1.0 must be > 0"),
    # (checked first by ad.launch.overrides, the quoting rules of issue 22)
    (["model.layers=[1,2"], "error: model.layers=[1,2: Hydra's override grammar"),
    (["model=patchcore,padim"], "error: model=patchcore,padim: a comma separates sweep values"),
    (["hydra.run.dri=x"], "error: hydra.run.dri is not a key of hydra.run; did you mean hydra.run.dir?"),
    (["+sweep=mvtc"], "error: sweep=mvtc is not an option of sweep (conf/sweep/); did you mean sweep=mvtec or sweep=mvtec_ad2?"),
    (["-m", "model=patchcore,padim", "model.coreset_ratio=0.2"],
     "error: sweep job 1 (model=padim): model.coreset_ratio is not a key of model (ad.models.memory.padim.Padim)"),
    (["-m", "seed=1,2,-3"], "error: sweep job 2 (seed=-3): seed=-3 must be in [0, 4294967295]; no job was started"),
])
def test_cli_config_mistakes(tmp_path, args, message):
    """One line on stderr, exit 2, no outputs/ or multirun/ folder, torch never imported (was: a traceback
    after ~4 s of imports and a failed run folder the aggregator listed)."""
    err, result = _cli(tmp_path, *args)
    assert len(err) == 1 and err[0].startswith(message), err
    assert result["rc"] == "2" and result["torch"] == "False", result
    assert result["numpy"] == "False", result  # the check runs on Hydra alone (numpy costs ~0.2 s of the second)
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()
    assert float(result["cpu"]) < 5.0, result  # ~0.5 s of CPU on an idle core: imports + one or two composes


# --- every documented command and key composes --------------------------------------------------------------
def _documented_commands():
    """`python -m ad.train ...` command lines of README.md and docs/*.md (continuation lines joined), without
    placeholders; this page's own examples of mistakes are left out."""
    import re
    import shlex

    from tests.conftest import REPO_ROOT

    out = []
    for path in [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]:
        if path.name == "configuration_errors.md":
            continue
        text = path.read_text().replace("\\\n", " ")
        for m in re.finditer(r"python -m ad\.train([^`#\n|]*)", text):
            args = m.group(1).strip()
            if any(t in args for t in ("<", "…", "...", "--help", "--cfg")) or args.endswith((",", "=")):
                continue
            try:
                tokens = shlex.split(args)
            except ValueError:
                continue
            out.append((path.name, tokens))
    return out


_OPTIONAL_PLUGINS = {"hparams_search": "hydra_plugins.hydra_optuna_sweeper", "launcher=slurm":
                     "hydra_plugins.hydra_submitit_launcher", "launcher=joblib": "hydra_plugins.hydra_joblib_launcher"}


def _large_sweep(tokens) -> bool:
    """A dataset preset (+sweep=mvtec: every category) or more than 12 jobs: each job is composed (~0.3 s), so
    these run with -m slow; tests/test_docs.py composes the first job of every documented command by default."""
    if any(t.startswith("+sweep=") and t != "+sweep=synthetic" for t in tokens):
        return True
    jobs = 1
    for t in tokens:
        key, _, value = t.partition("=")
        if value and not key.startswith("hydra.") and "," in value and not value.startswith(("[", "{", "'", '"')):
            jobs *= len(value.split(","))
    return jobs > 12


@pytest.mark.parametrize("doc,tokens", [pytest.param(d, t, marks=[pytest.mark.slow] if _large_sweep(t) else [])
                                        for d, t in _documented_commands()],
                         ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_documented_commands_pass_the_preflight(doc, tokens):
    import importlib.util

    from ad.launch.preflight import check_command

    for needle, module in _OPTIONAL_PLUGINS.items():
        if any(needle in t for t in tokens):
            try:
                if importlib.util.find_spec(module) is None:
                    pytest.skip(f"{module} not installed")
            except ModuleNotFoundError:
                pytest.skip(f"{module} not installed")
    multirun = "-m" in tokens or "--multirun" in tokens
    jobs, _ = check_command([t for t in tokens if not t.startswith("-")], multirun)
    assert jobs >= 1


def test_documented_keys_compose():
    """Every `group.key=value` written in backticks in README.md and docs/ composes and passes its schema
    (README's `evaluation.objective=always` and `evaluation.min_val_images=3` did not compose before)."""
    import re

    from tests.conftest import REPO_ROOT

    keys = set()
    for path in [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]:
        if path.name == "configuration_errors.md":
            continue
        for m in re.finditer(r"`((?:evaluation|trainer|dataset|model|setting|backbone|logger)\.[a-z_.]+=[^`\s,]+)`",
                             path.read_text()):
            if "<" not in m.group(1) and "..." not in m.group(1):
                keys.add(m.group(1))
    assert "evaluation.objective=always" in keys or not (REPO_ROOT / "README.md").read_text().count("objective")
    from omegaconf import OmegaConf

    from ad.registry import DATASETS, MODELS

    composed: dict = {}

    def base(extra: tuple):
        if extra not in composed:
            composed[extra] = compose(list(extra))
        return composed[extra]

    def options_for(key: str) -> list:
        # a model's or dataset's own key composes with that option selected: the options whose constructor
        # takes it (the schema, read without composing), or the defaults when they have the key
        if OmegaConf.select(base(()), key, default="<absent>", throw_on_missing=False) != "<absent>":
            return [()]
        group, registry = {"model": ("model", MODELS), "dataset": ("dataset", DATASETS)}.get(key.split(".")[0], (None, None))
        having = [(f"{group}={name}",) for name in (registry or [])
                  if key.split(".")[1] in signature_of(nodes.option_target(group, name)).params]
        return having or [()]  # no option has it: composed with the defaults, where it fails as an unknown key

    import copy

    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()

    def value_error(kv: str, extra: tuple):
        """None when `kv` passes the schema in the config composed with `extra` (Hydra's override of an
        existing key sets its parsed value: done here on a copy rather than composing once per key)."""
        key = kv.partition("=")[0]
        cfg = copy.deepcopy(base(extra))
        OmegaConf.update(cfg, key, parser.parse_override(kv).value(), merge=False)
        try:
            validate(cfg)
            return None
        except Exception as exc:  # noqa: BLE001 - a documented bad value shows its one-line error: fine
            return str(exc).splitlines()[0]

    failures, good = [], {}
    for kv in sorted(keys):
        key, _, value = kv.partition("=")
        if value in ("…", "N", "k") or value.startswith("/"):
            continue  # a placeholder, not a value
        has_key = False
        for extra in options_for(key):  # the first option that takes the key and the value
            if OmegaConf.select(base(extra), key, default="<absent>", throw_on_missing=False) == "<absent>":
                continue
            has_key = True
            if value_error(kv, extra) is None:
                good.setdefault(extra, []).append(kv)
                break
        # documented bad values (pages showing their one-line error) are fine; an unknown key is not
        if not has_key:
            failures.append(f"{kv}: not a key of the config with any option")
    # the good values through Hydra itself: one compose per option and batch of distinct keys
    for extra, kvs in good.items():
        batches: list = []
        for kv in kvs:
            target = next((b for b in batches if kv.partition("=")[0] not in {k.partition("=")[0] for k in b}), None)
            if target is None:
                batches.append(target := [])
            target.append(kv)
        for batch in batches:
            try:
                validate(compose([*batch, *extra]))
            except Exception as exc:  # noqa: BLE001
                failures.append(f"{' '.join(batch)} {' '.join(extra)}: {str(exc).splitlines()[0]}")
    assert not failures, failures
