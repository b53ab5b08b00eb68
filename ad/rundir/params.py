"""How a run names its parameters: which overrides are hyper-parameters (what is run) and which say only where
or how it runs, the run name built from them, and the label of a set of categories. Read by the entry point,
the sweep job naming, the checkpoint identity and the aggregator's columns, so all four agree."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

# Overrides that say where or how a job runs, not what it is: left out of run names, hparams, the sweep job
# directory names (conf/hydra/default.yaml builds them with the ${ad_job_params:} resolver, which reads this)
# and the aggregator's column grouping. An entry matches the key itself and every key below it; entries
# ending in "." are pure prefixes.
NOT_PARAMS = ("hydra.", "sweep", "+sweep", "hparams_search", "+hparams_search", "launcher", "trainer.progress_bar",
              "trainer.num_threads", "trainer.num_workers", "trainer.device", "trainer.resume", "dataset.root", "dataset.cache",
              "dataset.decode_threads", "dataset.pin_memory", "dataset.cache_dir", "dataset.cache_mb", "paths.",
              "logger.", "evaluation.save_maps", "evaluation.save_maps_max_side",
              "evaluation.objective")
# The run's identity choices: shown as their own fields, not as parameters.
NAME_KEYS = ("model", "dataset", "category", "setting")


def is_param(key: str) -> bool:
    """True for an override that changes *what* is run (a hyper-parameter), False for where/how it runs."""
    key = key.lstrip("+~")
    if key in NAME_KEYS:
        return False
    return not any(key == k or (k.endswith(".") and key.startswith(k)) or key.startswith(k + ".")
                   for k in NOT_PARAMS)


def swept_params(overrides: Sequence[str]) -> Dict[str, str]:
    """Command-line overrides other than the identity choices and the where/how keys."""
    out = {}
    for o in overrides:
        key, _, value = o.lstrip("+~").partition("=")
        if is_param(key):
            out[key] = value
    return out


def run_name(model: Optional[str], dataset: Optional[str], category: Optional[str], params: Dict[str, str],
             setting: str = "single") -> str:
    name = f"{model}/{dataset}/{category}" + (" [unified]" if setting == "unified" else "")
    return name + (" " + ",".join(f"{k}={v}" for k, v in params.items()) if params else "")


def categories_of(names: List[str]) -> str:
    """The label of a set of categories in run names and tables."""
    return names[0] if len(names) == 1 else "+".join(names)
