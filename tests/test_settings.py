"""One list of "not a hyper-parameter" keys (`ad.engine.settings.NOT_PARAMS`) read by the sweep job directory
names (Hydra config), the run names / hparams, the checkpoint identity and the aggregator: they must agree."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ad.config import _item_name, compose, job_params_suffix
from ad.engine.settings import NOT_PARAMS, identity_of, is_param, swept_params

HOW = ["trainer.num_threads=2", "trainer.progress_bar=false", "dataset.root=/data/x", "paths.data_dir=/d",
       "launcher=joblib", "hydra.launcher.n_jobs=2", "+sweep=mvtec", "logger.log_images=false",
       "trainer.device=cpu", "evaluation.save_maps=false"]
WHAT = ["model.coreset_ratio=0.01", "trainer.max_epochs=3", "seed=1", "dataset.image_size=320"]


def test_every_consumer_agrees_on_what_is_a_parameter():
    from ad.aggregate.table import _auto_excluded

    overrides = HOW + WHAT + ["model=padim", "category=bottle", "setting=unified"]
    assert set(swept_params(overrides)) == {o.split("=")[0] for o in WHAT}
    suffix = job_params_suffix(overrides)
    for o in WHAT:
        assert _item_name(o) in suffix
    for o in HOW:
        assert o.lstrip("+").split("=")[0] not in suffix
    for o in HOW:
        assert _auto_excluded(o.lstrip("+").split("=")[0]), o
    for o in WHAT:
        key = o.split("=")[0]
        assert _auto_excluded(key) == (key == "seed")  # seeds are averaged over, never a column


def test_the_hydra_sweep_dir_uses_the_shared_list():
    """The job directory suffix is built by the resolver over the job's overrides (no exclude list in YAML)."""
    import yaml

    hydra_cfg = yaml.safe_load((Path(__file__).resolve().parent.parent / "conf" / "hydra" / "default.yaml").read_text())
    assert hydra_cfg["sweep"]["subdir"].endswith("${ad_job_params:${hydra.overrides.task},${hydra.sweep.dir}}")
    assert "config" not in hydra_cfg.get("job", {})  # no override_dirname.exclude_keys to keep in sync


def test_identity_ignores_where_and_how_but_not_what():
    from omegaconf import OmegaConf, open_dict

    def ident(overrides):
        cfg = compose(["model=stfpm", *overrides], output_dir="/tmp/x")
        with open_dict(cfg):
            del cfg["hydra"]  # a job's config has no hydra node
        return identity_of(OmegaConf.to_container(cfg, resolve=True))

    ref = ident([])
    assert ident(["trainer.num_threads=1", "dataset.root=/else", "evaluation.k=2", "trainer.progress_bar=true"]) == ref
    for what in ("model.lr=0.1", "trainer.max_epochs=5", "seed=3", "dataset.image_size=128"):
        assert ident([what]) != ref, what


def test_not_params_entries_are_well_formed():
    assert all(isinstance(k, str) and k for k in NOT_PARAMS)
    assert not is_param("paths.anything") and not is_param("hydra.launcher.n_jobs") and is_param("model.lr")


def test_schema_file_is_current():
    """docs/results.schema.json is generated from the dataclasses: regenerate with
    `python -c "import json; from ad.rundir.records import json_schema; print(json.dumps(json_schema(), indent=2))" > docs/results.schema.json`."""
    from ad.rundir.records import json_schema

    path = Path(__file__).resolve().parent.parent / "docs" / "results.schema.json"
    assert json.loads(path.read_text()) == json_schema()


def test_old_results_json_still_loads():
    from ad.rundir.records import load_record

    old = {"status": "ok", "error": None, "model": "patchcore", "dataset": "mvtec", "category": "bottle",
           "backbone": "wide_resnet50_2", "seed": 0, "params": {"model.coreset_ratio": "0.1"},
           "counts": {"train": 188, "val": 21, "test": 83, "test_anomalous": 63},
           "image": {"auroc": 1.0, "ap": 1.0, "f1_max": 1.0, "threshold": 2.5, "precision": 1.0},
           "pixel": None, "per_defect": {"broken_large": 1.0}, "timing": {"fit_s": 3.0, "weird": 1},
           "memory": {"peak_rss_mb": 900.0}, "notes": ["x"], "run_name": "patchcore/mvtec/bottle"}
    p = Path(__import__("tempfile").mkdtemp()) / "results.json"
    p.write_text(json.dumps(old))
    r = load_record(p)
    assert (r.run.model, r.run.dataset, r.run.category, r.run.seed) == ("patchcore", "mvtec", "bottle", 0)
    assert r.image.auroc == 1.0 and r.pixel is None and r.mad is None and r.per_defect == {"broken_large": 1.0}
    assert r.run.params == {"model.coreset_ratio": "0.1"} and r.timing.fit_s == 3.0
