"""Check a `python -m ad.train` command line before Hydra starts: compose it (every job of a `-m` sweep) and
check every node against its schema, so that a config mistake is one line on stderr — no traceback, no run
or sweep folder, no torch import.

Hydra's own messages for these mistakes are long (a 30-line option list, a search path, a stack trace); here
each becomes one line with the closest valid keys or options. A sweep with one bad job fails as a whole,
before any job starts. Sweepers that choose values while they run (Optuna) are checked on their fixed
values here; each sampled job is checked again when it starts and, when bad, recorded as a failed job.
"""
from __future__ import annotations

import re
from typing import Any, List, Optional, Sequence, Tuple

from ad.errors import ADError, ConfigError
from ad.schema.check import closest, unknown_key, validate

# Flags after which Hydra prints something and exits without composing a run (nothing to check).
_NO_RUN_FLAGS = ("help", "hydra_help", "info", "shell_completion")


def _parse_args(argv: Sequence[str]) -> Any:
    from hydra._internal.utils import get_args_parser

    return get_args_parser().parse_args(list(argv))


def _job_label(overrides: Sequence[str]) -> str:
    return " ".join(overrides)


def explain(exc: BaseException, hydra: Any, config_name: str, overrides: List[str]) -> str:
    """One line for a Hydra composition error: the closest options or keys instead of Hydra's listing."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    if isinstance(exc, ADError):
        return str(exc)
    text = str(exc)
    first = text.splitlines()[0] if text else exc.__class__.__name__
    if isinstance(exc, MissingConfigException):
        return _missing_option(exc, first)
    if isinstance(exc, OverrideParseException):
        bad = next((o for o in overrides if o and _bad_grammar(o)), None)
        return f"cannot parse {bad!r}: {first}" if bad else f"cannot parse the overrides: {first}"
    match = re.match(r"Could not (?:override|append to|delete from) '([^']+)'", first)
    if isinstance(exc, ConfigCompositionException) and match:
        return _unknown_override(match.group(1), exc, hydra, config_name, overrides)
    if "Ambiguous value for argument" in first:
        arg = re.search(r"'([^']+)'", first)
        return (f"{arg.group(1) if arg else 'a value'} lists several values: add -m to sweep over them, or write "
                "a list as key=[a,b] or a text with commas as key='a,b'")
    cause = exc.__cause__
    if cause is not None and str(cause):
        first = f"{first} {str(cause).splitlines()[0]}"
    return first


def _bad_grammar(override: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        OverridesParser.create().parse_overrides([override])
    except OverrideParseException:
        return True
    return False


def _missing_option(exc: Any, first: str) -> str:
    path = str(getattr(exc, "missing_cfg_file", "") or "")
    group, _, option = path.rpartition("/")
    options = [str(o) for o in (getattr(exc, "options", None) or [])]
    if not group or not options:
        return first
    near = closest(option, options)
    hint = (f"did you mean {' or '.join(f'{group}={o}' for o in near)}?" if near
            else f"options: {', '.join(options[:20])}{' ...' if len(options) > 20 else ''}")
    return f"{group}={option} is not an option of {group} (conf/{group}/); {hint}"


def _unknown_override(key: str, exc: Any, hydra: Any, config_name: str, overrides: List[str]) -> str:
    """'trainer.max_epoch is not a key of trainer; did you mean trainer.max_epochs?' — the valid keys come
    from the config composed without the offending override."""
    from omegaconf import DictConfig, OmegaConf

    from hydra.types import RunMode

    parent, _, name = key.rpartition(".")
    known = _component_keys(parent, overrides)
    if known is not None:
        return str(unknown_key(key, known[1], f"{parent} ({known[0]})"))
    rest = [o for o in overrides if o.lstrip("+~").partition("=")[0] != key]
    try:
        cfg = hydra.compose_config(config_name, rest, run_mode=RunMode.RUN, with_log_configuration=False,
                                   validate_sweep_overrides=False)
        node = OmegaConf.select(cfg, parent) if parent else cfg
    except Exception:  # noqa: BLE001 - the hint is a bonus; the key is still named
        node = None
    if isinstance(node, DictConfig):
        target = node.get("_target_") if parent else None
        where = f"{parent} ({target})" if target else (parent or "the config")
        return str(unknown_key(key, [str(k) for k in node.keys() if not str(k).startswith("_")], where))
    cause = str(exc.__cause__).splitlines()[0] if exc.__cause__ is not None else ""
    return f"{key} cannot be set: {cause or str(exc).splitlines()[0]}"


def _component_keys(parent: str, overrides: List[str]) -> Optional[Tuple[str, List[str]]]:
    """(target, keys) of a component group node (`trainer`, `model`, ...) read from its schema, without a
    second composition (~0.3 s); None where only composing can tell: a nested node, a constructor that takes
    **kwargs, or another group choice (a category or preset may change which option the group gets)."""
    from ad.schema import nodes
    from ad.schema.signature import signature_of

    if parent not in nodes.TARGET_GROUPS:
        return None
    choice = nodes.group_default(parent)
    for o in overrides:
        k, eq, v = o.lstrip("+~").partition("=")
        if eq and "." not in k and not k.startswith("hydra"):
            if k != parent:
                return None
            choice = v
    try:
        target = nodes.option_target(parent, str(choice))
        sig = signature_of(target)
    except Exception:  # noqa: BLE001 - composing will tell
        return None
    if sig.open:
        return None
    skip = set(nodes.NOT_KEYS.get(target, ()))
    return target, [k for k in sig.params if k not in skip and not k.startswith("_")]


# --- sweeps ------------------------------------------------------------------------------------------------
def sweep_jobs(master: Any, overrides: List[str]) -> Optional[List[List[str]]]:
    """The overrides of every job of a basic-sweeper sweep (`hydra.sweeper.params` first, as Hydra does),
    or None for a sweeper that chooses its values while it runs."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    target = str(master.hydra.sweeper.get("_target_", ""))
    if not target.endswith("BasicSweeper"):
        return None
    params = [f"{k}={v}" for k, v in (master.hydra.sweeper.get("params") or {}).items()]
    parsed = OverridesParser.create().parse_overrides(params + list(overrides))
    (batch,) = BasicSweeper.split_arguments(parsed, None)
    return batch


def _compose(hydra: Any, config_name: str, overrides: List[str], mode: Any, num: int = 0) -> Any:
    from omegaconf import open_dict

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    cfg = hydra.compose_config(config_name, overrides, run_mode=mode, with_log_configuration=False,
                               validate_sweep_overrides=mode == RunMode.RUN)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = "<run dir>"  # nothing is created; `${hydra:runtime.output_dir}` resolves
        cfg.hydra.job.num = num
    HydraConfig.instance().set_config(cfg)
    return cfg


def check_command(overrides: List[str], multirun: bool, config_name: str = "config") -> Tuple[int, float]:
    """Compose and check the run (or every job of the sweep); ConfigError with one line when something is
    wrong. Returns (jobs checked, seconds)."""
    import time

    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from ad.config import CONFIG_DIR, register_resolvers

    t0 = time.perf_counter()
    register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3", job_name="train"):
            hydra = GlobalHydra.instance().hydra
            return _check(hydra, config_name, overrides, multirun), time.perf_counter() - t0
    finally:
        GlobalHydra.instance().clear()
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().cfg = None  # leave no composed config behind for the real run


def _check(hydra: Any, config_name: str, overrides: List[str], multirun: bool) -> int:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    try:
        # Composed as Hydra decides the mode: a preset may set hydra.mode=MULTIRUN (+sweep=mvtec)
        master = _compose(hydra, config_name, overrides, RunMode.MULTIRUN)
        multirun = multirun or str(master.hydra.get("mode", "")).endswith("MULTIRUN")
        if not multirun:
            sweeps = any(o.is_sweep_override() for o in OverridesParser.create().parse_overrides(overrides))
            validate(_compose(hydra, config_name, overrides, RunMode.RUN) if sweeps else master)
            return 1
        jobs = sweep_jobs(master, overrides)
        if jobs is None:  # a sweeper that chooses values as it runs: check the fixed ones
            validate(master)
            return 1
    except Exception as exc:  # noqa: BLE001 - every composition error becomes one line
        raise ConfigError(explain(exc, hydra, config_name, overrides)) from None
    for num, job in enumerate(jobs):
        try:
            validate(_compose(hydra, config_name, job, RunMode.RUN, num))
        except Exception as exc:  # noqa: BLE001
            line = explain(exc, hydra, config_name, job)
            raise ConfigError(f"sweep job {num} ({_job_label(_differing(job, jobs))}): {line}; no job was "
                              "started") from None
    return len(jobs)


def _differing(job: List[str], jobs: List[List[str]]) -> List[str]:
    """The overrides of `job` that vary across the sweep (what identifies it), else all of them."""
    varying = [o for o in job if any(o not in other for other in jobs)]
    return varying or job


def preflight(argv: Sequence[str]) -> Optional[str]:
    """None when the command line is fine (or is not a run: --help, --info...); else the one-line error."""
    try:
        args = _parse_args(argv)
    except SystemExit:  # argparse's own usage message has been printed
        raise
    if any(getattr(args, flag, None) for flag in _NO_RUN_FLAGS) or args.config_path or args.config_dir:
        return None
    try:
        check_command(list(args.overrides), bool(args.multirun), args.config_name or "config")
    except ConfigError as exc:
        return str(exc)
    return None
