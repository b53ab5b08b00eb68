"""Fake sweep directories in the exact layout a Hydra multirun of `ad.train` leaves behind (for aggregator tests)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import yaml


def fake_results(model: str, dataset: str, category: str, seed: int, image_auroc: Optional[float],
                 pixel_auroc: Optional[float] = None, pixel_aupro: Optional[float] = None,
                 status: str = "ok", error: Optional[str] = None, backbone: str = "tf_efficientnet_lite0") -> dict:
    """A results.json with exactly the keys of the runner contract (issue 4, item 3)."""
    ok = status == "ok"
    pixel = None
    if ok and pixel_auroc is not None:
        pixel = {"auroc": pixel_auroc, "aupro": pixel_aupro, "ap": 0.41, "f1_max": 0.47}
    return {
        "status": status,
        "error": error,
        "model": model,
        "dataset": dataset,
        "category": category,
        "backbone": backbone,
        "seed": seed,
        "counts": {"train": 10, "val": 2, "test": 8, "test_anomalous": 4},
        "image": {"auroc": image_auroc, "ap": 0.9, "f1_max": 0.85, "threshold": 1.23} if ok else None,
        "pixel": pixel,
        "per_defect": {"scratch": image_auroc} if ok else None,  # {type: AUROC}, as the runner writes
        "timing": {"fit_s": 1.5, "predict_s": 0.5, "ms_per_image": 12.0} if ok else None,
        "memory": {"peak_rss_mb": 812.0},
    }


def make_job(sweep: Path, name: str, overrides: Sequence[str], results: Optional[dict], *, model: str,
             dataset: str, category: str, seed: int = 0, backbone: str = "tf_efficientnet_lite0",
             model_cfg: Optional[dict] = None) -> Path:
    """One job dir: .hydra/{overrides,config,hydra}.yaml and (unless `results` is None) results.json."""
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    config = {"seed": seed, "dataset": {"category": category, "root": f"/data/{dataset}"},
              "model": {"_target_": f"ad.models.{model}.X", **(model_cfg or {})},
              "backbone": {"name": backbone, "pretrained": True}, "trainer": {"max_epochs": None}}
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    hydra = {"hydra": {"runtime": {"choices": {"model": model, "dataset": dataset, "backbone": backbone,
                                               "hydra/launcher": "joblib"}},
                       "sweep": {"dir": "${now:%Y}"}}}  # an unresolved interpolation, as Hydra writes them
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    (job / "tb").mkdir()
    if results is not None:
        (job / "results.json").write_text(json.dumps(results, indent=1))
    return job


def write_predictions(job: Path, paths: Sequence[str], labels, scores, category: Optional[str] = None,
                      threshold: float = 0.5) -> None:
    """predictions.csv in the runner's column layout (a `category` column when `category` is given)."""
    import csv

    cols = ["path"] + (["category"] if category is not None else []) + [
        "defect_type", "label", "score", "normalized_score", "is_anomalous"]
    with open(job / "predictions.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for p, l, s in zip(paths, labels, scores):
            row = {"path": p, "defect_type": "good" if l == 0 else "scratch", "label": int(l), "score": f"{s:.8g}",
                   "normalized_score": f"{s:.8g}", "is_anomalous": int(s >= threshold)}
            if category is not None:
                row["category"] = category
            w.writerow(row)


def unified_results(model: str, dataset: str, per_category: dict, seed: int = 0) -> dict:
    """A schema-v2 results.json of a unified run: {category: image AUROC}."""
    from ad.rundir.records import CategoryRecord, Counts, ImageMetrics, RunInfo, RunRecord

    cats = {c: CategoryRecord(counts=Counts(test=8, test_anomalous=4), image=ImageMetrics(auroc=v))
            for c, v in per_category.items()}
    mean = sum(per_category.values()) / len(per_category)
    rec = RunRecord(status="ok", run=RunInfo(model=model, dataset=dataset, category="all", seed=seed,
                                             setting="unified", categories=list(per_category)),
                    image=ImageMetrics(auroc=mean), categories=cats)
    return rec.to_dict()
