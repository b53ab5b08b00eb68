"""Config helpers: the path to `conf/`, OmegaConf resolvers used by the configs, composing in code."""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any, List, Optional, Sequence, Set, Tuple

from omegaconf import DictConfig, OmegaConf

from ad.io.resources import available_cpus, folder_name  # noqa: F401  (resolvers; available_cpus is public here too)

# `ad/conf` links to the repository's `conf/` in a checkout and is a real folder in an installed wheel.
CONFIG_DIR = str((Path(__file__).resolve().parent / "conf").resolve())


# Longest parameter suffix of a job directory name: the whole name must stay under the 255-byte limit of
# common file systems even when many fixed overrides (not only swept ones) end up in override_dirname.
MAX_PARAMS_SUFFIX = 140


def _item_name(override: str) -> str:
    """`model.k=[2,3]` -> `model.k-2-3`: a `key-value` item for a directory name. No `=` or `,`, so the job
    directory can be passed back on a command line (`hydra.run.dir=<it>`) without being read as a sweep."""
    key, _, value = override.partition("=")
    value = re.sub(r"[\[\]()'\" ]", "", value)
    value = re.sub(r"[^A-Za-z0-9._+-]+", "-", value)
    return f"{key}-{value}" if value else key


def _split_overrides(override_dirname: str) -> List[str]:
    """Hydra's override_dirname ("a=1,b=[2,3]") into its `key=value` items (commas inside brackets kept)."""
    return [o for o in re.split(r",(?=[^,=\[\]]+=)", override_dirname) if o]


def _params_suffix(overrides: "str | Sequence[str]") -> str:
    """Parameters for a job directory name: "" or "_lr-0.1_model.k-3" (no `=`, `,` or `/`).

    `overrides` is a list of `key=value` or Hydra's comma-joined override_dirname. Too long a list is cut at a
    whole item and ends with a hash of the full list, so two jobs differing only in the dropped items still get
    different, stable names. The full overrides are in <job>/.hydra/overrides.yaml and results.json.
    """
    items = _split_overrides(overrides) if isinstance(overrides, str) else list(overrides)
    if not items:
        return ""
    names = ["_" + _item_name(o) for o in items]
    if sum(map(len, names)) <= MAX_PARAMS_SUFFIX:
        return "".join(names)
    digest = "_h" + hashlib.sha1(",".join(items).encode("utf-8")).hexdigest()[:8]
    head = ""
    for name in names:  # whole items only
        if len(head) + len(name) + len(digest) > MAX_PARAMS_SUFFIX:
            break
        head += name
    return head + digest


def threads_per_job(n_jobs: Any, cpus: Any = None) -> int:
    """torch CPU threads for each of `n_jobs` jobs running side by side, so that n_jobs × threads ≈ cores.

    `n_jobs` follows joblib: -1 = one job per core, -2 = all cores but one, ... Oversubscribing the cores
    (every job using every core) makes a parallel sweep slower than a sequential one, hence the division.
    """
    from ad.errors import ConfigError
    from ad.values import number

    cores = available_cpus() if cpus in (None, "") else int(cpus)
    n = 1 if n_jobs in (None, "") else number(n_jobs, "hydra.launcher.n_jobs", int)
    if n == 0:
        raise ConfigError("hydra.launcher.n_jobs=0 runs nothing; use a positive count or -1 (one job per core)")
    if n < 0:
        n = max(cores + 1 + n, 1)
    return max(cores // n, 1)


def swept_keys(sweep_dir: Any) -> Optional[Set[str]]:
    """Keys that take several values in the sweep of `sweep_dir` (command-line `a=1,2`, `range(...)`, ... and
    `hydra.sweeper.params`), read from the `multirun.yaml` Hydra's basic sweeper writes before any job starts.
    None when that file is absent or unreadable (another sweeper, composing outside a sweep): then every
    hyper-parameter is named."""
    path = Path(str(sweep_dir)) / "multirun.yaml" if sweep_dir not in (None, "") else None
    if path is None or not path.is_file():
        return None
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        saved = OmegaConf.load(path)
        args = [str(o) for o in (OmegaConf.select(saved, "hydra.overrides.task") or [])]
        params = OmegaConf.select(saved, "hydra.sweeper.params")
        if params is not None:
            args += [f"{k}={v}" for k, v in OmegaConf.to_container(params, resolve=False).items()]
        parsed = OverridesParser.create().parse_overrides(args)
        return {o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override()}
    except Exception:  # naming only: never fail a job over it
        return None


def job_params_suffix(task_overrides: Any, sweep_dir: Any = None) -> str:
    """Sweep job directory suffix from a job's overrides: the hyper-parameters (`ad.rundir.params.is_param`)
    that vary across the sweep (a value shared by every job, e.g. `trainer.max_epochs=5` given once, is left
    out), sorted like Hydra's override_dirname, as "_k-v_k2-v2" (or ""), then "_h<8 hex>" — a hash of the
    overrides left out of the name because they say where/how a job runs (roots, devices, ...) and that the
    sweep varies — so two jobs of one sweep differing only in those (`dataset.root=/a,/b`) never share a
    directory. A where/how value given once stays out of the name (every job has it). Reusing an explicit
    hydra.sweep.dir is a resume: a job whose data differs is refused by the checkpoint identity check."""
    from ad.rundir.params import NAME_KEYS, is_param

    swept = swept_keys(sweep_dir)
    items = sorted(str(o).lstrip("+~") for o in (task_overrides or []))
    keep = [o for o in items if is_param(o.partition("=")[0]) and (swept is None or o.partition("=")[0] in swept)]
    shown = _params_suffix(keep)
    # where/how keys (roots, devices) are not named but hashed — in a sweep only those it varies; the identity
    # choices (model, dataset, category, setting) are in the directory name already
    hidden = [o for o in items if not is_param(o.partition("=")[0]) and not o.startswith("hydra.")
              and "." in o.partition("=")[0]  # a value (dataset.root=...), not a group choice (+sweep=..., launcher=...)
              and o.partition("=")[0] not in NAME_KEYS and (swept is None or o.partition("=")[0] in swept)]
    if not hidden:
        return shown
    return f"{shown}_h{hashlib.sha1(chr(10).join(hidden).encode('utf-8')).hexdigest()[:8]}"


def under_root(name: str) -> str:
    """`${ad_under_root:outputs}`: `outputs` under `$AD_ROOT` when it is set, else relative to the launch
    directory, like every other folder `ad` writes (datasets/, backbones/, .cache/ follow `paths.root_dir`)."""
    root = os.environ.get("AD_ROOT")
    return str(Path(root) / name) if root else name


def claim_sweep_dir(base: str, mode: Any = None) -> str:
    """`${ad_sweep_dir:<base>,${hydra.mode}}`: a sweep directory of its own. In a multirun, the first of `<base>`,
    `<base>_2`, `<base>_3`, ... that this process creates (mkdir is atomic: two sweeps started in the same second
    get two directories, never one shared). The value is cached in the config, so every job of the sweep (also in
    joblib/submitit workers, which receive a copy) sees the same directory. Outside a multirun it is `base`
    unchanged and nothing is created. An explicit `hydra.sweep.dir=<dir>` replaces the whole pattern, and then
    reusing the directory is the user's choice (resume)."""
    if str(mode).rsplit(".", 1)[-1] != "MULTIRUN":
        return base
    Path(base).parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        candidate = base if n == 1 else f"{base}_{n}"
        try:
            os.mkdir(candidate)
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"no free sweep directory next to {base}; set hydra.sweep.dir=<new dir>")


def dataset_categories(dataset: str) -> list:
    """The categories of a dataset: the `categories:` list of `conf/dataset/<dataset>.yaml` (see ad.categories)."""
    from ad.categories import dataset_categories as _categories

    return _categories(dataset)


_GPU_SLOT: Optional[Tuple[str, int, Any]] = None  # (slot dir, GPU, locked file) held for this process's life


def gpu_slot(slot_dir: "str | Path", job_num: int, n_gpus: int) -> int:
    """The GPU of a sweep job: the first free slot from `job_num % n_gpus` on, locked (flock) until this process
    exits, so jobs running at once get distinct GPUs whichever launcher started them. joblib reuses worker
    processes, and a worker keeps its slot for every job it runs. With more jobs at once than GPUs the rest
    share: `job_num % n_gpus`."""
    import fcntl

    global _GPU_SLOT
    if _GPU_SLOT is not None and _GPU_SLOT[0] == str(slot_dir):
        return _GPU_SLOT[1]
    Path(slot_dir).mkdir(parents=True, exist_ok=True)
    for k in range(n_gpus):
        gpu = (int(job_num) + k) % n_gpus
        f = open(Path(slot_dir) / f"gpu{gpu}.lock", "a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        if _GPU_SLOT is not None:  # a new sweep in the same process: hand the old slot back
            _GPU_SLOT[2].close()
        _GPU_SLOT = (str(slot_dir), gpu, f)
        return gpu
    return int(job_num) % n_gpus


def job_device(sweep_dir: str, job_num: Any, n_gpus: Optional[int] = None) -> str:
    """`trainer.device` for a job of a local parallel sweep: `cuda:<k>` on its own GPU when this machine has
    several, else `auto`. (SLURM gives each job its own CUDA_VISIBLE_DEVICES: one visible GPU, `auto`.)"""
    if n_gpus is None:
        import torch

        n_gpus = torch.cuda.device_count()
    if n_gpus <= 1:
        return "auto"
    gpu = gpu_slot(Path(sweep_dir) / ".gpu_slots", int(job_num), n_gpus)
    import torch

    torch.cuda.set_device(gpu)  # so code that says device="cuda" and the memory statistics use it too
    return f"cuda:{gpu}"


_PATCH = re.compile(r"_patch(\d+)")


def patch_size(backbone: Any) -> int:
    """The side an input must be a multiple of for backbone `backbone` (timm's ViT names say it: `_patch14`);
    1 for CNNs and for "none" (a model without a backbone)."""
    m = _PATCH.search(str(backbone or ""))
    return int(m.group(1)) if m else 1


def input_size(size: Any, backbone: Any = None) -> int:
    """`${ad_input_size:64,${oc.select:model.backbone.name,none}}`: `size` rounded up to a multiple of the
    model's backbone patch (64 -> 70 for a /14 ViT), so one preset size serves every backbone family."""
    p = patch_size(backbone)
    return -(-int(size) // p) * p


def register_resolvers() -> None:
    """The `${ad_*:}` resolvers and the `adschema://` config source that conf/config.yaml uses."""
    from ad.schema.source import register as register_schema_source

    register_schema_source()
    if not OmegaConf.has_resolver("ad_params"):
        OmegaConf.register_new_resolver("ad_params", _params_suffix)
    if not OmegaConf.has_resolver("ad_job_params"):
        OmegaConf.register_new_resolver("ad_job_params", job_params_suffix)
    if not OmegaConf.has_resolver("ad_input_size"):
        OmegaConf.register_new_resolver("ad_input_size", input_size)
    if not OmegaConf.has_resolver("ad_sweep_dir"):  # cached: resolved once per sweep, copied into every job
        OmegaConf.register_new_resolver("ad_sweep_dir", claim_sweep_dir, use_cache=True)
    if not OmegaConf.has_resolver("ad_under_root"):
        OmegaConf.register_new_resolver("ad_under_root", under_root)
    if not OmegaConf.has_resolver("ad_basename"):
        OmegaConf.register_new_resolver("ad_basename", folder_name)
    # ${ad_threads:<n_jobs>[,<cpus>]}: CPU threads per job for launchers running jobs in parallel
    if not OmegaConf.has_resolver("ad_threads"):
        OmegaConf.register_new_resolver("ad_threads", threads_per_job)
    # ${ad_device:<sweep dir>,<job num>}: each parallel job of a sweep on its own GPU
    if not OmegaConf.has_resolver("ad_device"):
        OmegaConf.register_new_resolver("ad_device", job_device)


def compose(overrides: Sequence[str] = (), config_name: str = "config", output_dir: str | None = None) -> DictConfig:
    """Compose the real configs outside a Hydra app (tests, notebooks), with `hydra:` resolvers available.
    `output_dir` plays the run directory (`${hydra:runtime.output_dir}`)."""
    from hydra import compose as _compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_resolvers()
    GlobalHydra.instance().clear()
    from hydra.core.hydra_config import HydraConfig

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = _compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    if output_dir is not None:
        from omegaconf import open_dict

        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)  # so ${hydra:...} interpolations resolve outside an app
    return cfg


register_resolvers()
