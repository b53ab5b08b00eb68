"""`python -m ad.train [overrides]` — run one experiment; `-m` sweeps (see README).

This is the only module that sees a DictConfig: it instantiates the dataset, model, trainer and logger from
their `_target_`s and hands typed objects to the engine. Every run directory gets results.json,
predictions.csv, model.pt, tb/ and train.log, also when the run fails (status "failed", one-line error).
"""
from __future__ import annotations

import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from ad.config import register_resolvers
from ad.engine.sweep import EXIT as _EXIT  # set by failed single runs and by the sweep summary callback

log = logging.getLogger("ad.train")

NAME_KEYS = ("model", "dataset", "category")
OBJECTIVE_MAX_IMAGES = 64  # validation normals used for the synthetic-defect objective
# Overrides that say where or how a job runs, not what it is: left out of run names and hparams
# (keep in sync with hydra.job.config.override_dirname.exclude_keys in conf/hydra/default.yaml).
NOT_PARAMS = ("hydra", "sweep", "+sweep", "hparams_search", "launcher", "trainer.progress_bar", "trainer.num_threads",
              "dataset.root", "paths.")


def swept_params(overrides: List[str]) -> Dict[str, str]:
    """Command-line overrides other than the model/dataset/category choices: the run's 'hyper-parameters'."""
    out = {}
    for o in overrides:
        key, _, value = o.lstrip("+~").partition("=")
        if key not in NAME_KEYS and not key.startswith(NOT_PARAMS):
            out[key] = value
    return out


def run_name(model: str, dataset: str, category: str, params: Dict[str, str]) -> str:
    name = f"{model}/{dataset}/{category}"
    return name + (" " + ",".join(f"{k}={v}" for k, v in params.items()) if params else "")


def run(cfg: DictConfig, run_dir: Path, choices: Dict[str, str], overrides: List[str]) -> Dict[str, Any]:
    """Run one experiment end to end; never raises for a failed run (the failure is in the returned results)."""
    import torch
    from hydra.utils import instantiate

    from ad.engine import trainer as engine
    from ad.engine.outputs import peak_rss_mb, save_model_file, write_json, write_predictions_csv
    from ad.engine.tensorboard import TensorBoardLogger, pick_visualizations
    from ad.engine.validation import synthetic_anomaly_auroc
    from ad.predict import display_map
    from ad.errors import ADError
    from ad import metrics

    params = swept_params(overrides)
    results: Dict[str, Any] = {
        "status": "running",
        "error": None,
        "model": choices.get("model"),
        "dataset": choices.get("dataset"),
        "category": str(cfg.dataset.category),
        "backbone": OmegaConf.select(cfg, "model.backbone.name", default=None),
        "seed": int(cfg.seed),
        "params": params,
        "run_name": run_name(choices.get("model"), choices.get("dataset"), str(cfg.dataset.category), params),
        "counts": None,
        "image": None,
        "pixel": None,
        "per_defect": None,
        "validation": None,
        "thresholds": None,
        "training": None,
        "timing": None,
        "memory": None,
        "notes": [],
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    logger = None
    t_start = time.perf_counter()
    try:
        engine.seed_everything(int(cfg.seed), bool(cfg.trainer.deterministic))
        data = instantiate(cfg.dataset).setup()
        trainer: engine.Trainer = instantiate(cfg.trainer)
        model = instantiate(cfg.model)
        if getattr(model, "backbone_name", None):
            results["backbone"] = model.backbone_name
        test_ds = data.dataset("test", trainer.limit_test)
        results["counts"] = {
            "train": len(data.dataset("train", trainer.limit_train)),
            "val": len(data.dataset("val", trainer.limit_val)),
            "test": len(test_ds),
            "test_anomalous": sum(s.label for s in test_ds.samples),
        }
        logger = TensorBoardLogger(run_dir / "tb", **OmegaConf.to_container(cfg.logger, resolve=True))
        logger.text("config", "```\n" + OmegaConf.to_yaml(cfg, resolve=True) + "\n```")

        fit = trainer.fit(model, data, run_dir=run_dir, logger=logger)
        results["training"] = {
            "epochs": fit.epochs, "steps": fit.steps, "stopped_early": fit.stopped_early,
            "resumed_from_epoch": fit.resumed_from_epoch, "best_val_loss": fit.best_val_loss,
            "final_train_loss": fit.train_losses[-1] if fit.train_losses else None,
        }

        # Thresholds and normalisation come from the validation normals only.
        ev = cfg.evaluation
        val = trainer.predict(model, trainer.val_loader(data), desc="scoring validation normals")
        if len(val.scores) == 0:
            raise ADError("no validation images: set dataset.val_fraction > 0 so thresholds can be fitted on held-out normals")
        cal = metrics.fit_calibration(val.scores, val.maps, method=ev.threshold, k=ev.k, quantile=ev.quantile, pool=ev.pixel_pool)
        if cal["image_threshold"] is None:
            raise ADError("cannot fit a threshold on the validation normals (" + "; ".join(cal["notes"])
                          + "); raise dataset.val_fraction or check the model's scores")
        image_threshold, pixel_threshold = cal["image_threshold"], cal["pixel_threshold"]
        normalization, pixel_normalization = cal["image_normalization"], cal["pixel_normalization"]
        results["thresholds"] = {"image": image_threshold, "pixel": pixel_threshold, "method": ev.threshold,
                                 "k": ev.k, "quantile": ev.quantile, "pixel_pool": ev.pixel_pool,
                                 "fitted_on": f"{cal['n_val']} validation normals"}
        results["notes"] += cal["notes"]

        test = trainer.predict(model, data.dataloader("test", trainer.eval_batch_size, limit=trainer.limit_test,
                                                      num_workers=trainer.num_workers), desc="scoring test images")
        use_pixels = bool(ev.pixel_metrics) and data.has_masks and bool(test.has_mask[test.labels == 1].all())
        if not use_pixels and ev.pixel_metrics:
            results["notes"].append("pixel metrics unavailable: no ground-truth masks for this category")
        scored = metrics.evaluate(
            test.labels, test.scores, test.defect_types,
            masks=test.masks if use_pixels else None, maps=test.maps if use_pixels else None,
            image_threshold=image_threshold, pixel_threshold=pixel_threshold, max_fpr=ev.aupro_max_fpr,
            has_mask=test.has_mask if use_pixels else None,
        )
        results["image"], results["pixel"], results["per_defect"] = scored["image"], scored["pixel"], scored["per_defect"]
        results["image"]["threshold"] = image_threshold
        results["notes"] += list(scored.get("notes", []))

        # The objective needs the images themselves; a capped subset keeps memory flat on large categories.
        val_ds = data.dataset("val", trainer.limit_val)
        val_images = torch.stack([val_ds[i]["image"] for i in range(min(len(val_ds), OBJECTIVE_MAX_IMAGES))])

        @torch.no_grad()
        def score_images(x):
            with torch.autocast(trainer.device.type, enabled=trainer.use_amp):
                return model.predict(x.to(trainer.device)).scores.float().cpu().numpy()

        synthetic = synthetic_anomaly_auroc(score_images, val_images, seed=int(cfg.seed))
        results["validation"] = {
            "count": int(len(val.scores)),
            "mean_score": float(np.mean(val.scores)),
            "std_score": float(np.std(val.scores)),
            "loss": fit.best_val_loss,
            "objective_images": int(len(val_images)),
            "synthetic_auroc_levels": [v for k, v in synthetic.items() if k.startswith("auroc_level")],
            # what hyper-parameter searches maximise: mean AUROC of pasted defects of 4 strengths
            "objective": synthetic["objective"],
        }
        # Constant validation scores leave no scale to normalise with: say so rather than invent one.
        normalized = metrics.normalize(test.scores, normalization) if normalization else np.full(len(test.scores), np.nan)
        rows = [
            {"path": p, "defect_type": d, "label": int(l), "score": float(s), "normalized_score": float(n),
             "is_anomalous": bool(s >= image_threshold)}
            for p, d, l, s, n in zip(test.paths, test.defect_types, test.labels, test.scores, normalized)
        ]
        write_predictions_csv(run_dir / "predictions.csv", rows,
                              ["path", "defect_type", "label", "score", "normalized_score", "is_anomalous"])
        save_model_file(run_dir / "model.pt", model, OmegaConf.to_container(cfg.model, resolve=True), {
            "model_name": results["model"],
            "image_threshold": image_threshold,
            "pixel_threshold": pixel_threshold,
            "normalization": normalization,
            "pixel_normalization": pixel_normalization,
            "data": {"image_size": OmegaConf.to_container(cfg.dataset, resolve=True).get("image_size"),
                     "center_crop": OmegaConf.to_container(cfg.dataset, resolve=True).get("center_crop")},
            "config": OmegaConf.to_container(cfg, resolve=True),
        })
        results["timing"] = {
            "fit_s": fit.fit_s,
            "predict_s": test.seconds,
            "ms_per_image": 1000.0 * test.seconds / max(1, len(test.scores)),
            "total_s": time.perf_counter() - t_start,
        }
        results["memory"] = {"peak_rss_mb": peak_rss_mb()}
        if torch.cuda.is_available():
            results["memory"]["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20

        picks = pick_visualizations(test.labels, test.scores, trainer.num_visualizations)
        vis = [{"image": test_ds[i]["image"].numpy(), "map": display_map(test.maps[i], pixel_normalization),
                "mask": test.masks[i] if test.has_mask[i] else None, "caption": f"{Path(test.paths[i]).name} {cap}"}
               for i, cap in picks]
        hparams = {"model": results["model"], "dataset": results["dataset"], "category": results["category"],
                   "backbone": results["backbone"] or "none", "seed": results["seed"], **params}
        logger.final(results, hparams, test, normalized, vis, (0.0, 1.0))
        results["status"] = "ok"
    except Exception as exc:
        user_error = exc if isinstance(exc, ADError) else exc.__cause__  # instantiate() wraps a component's ADError
        if isinstance(user_error, ADError):
            results.update(status="failed", error=str(user_error).splitlines()[0] if str(user_error) else user_error.__class__.__name__)
            log.error("%s", results["error"])
        else:  # a bug or an environment problem: keep the traceback in train.log
            results.update(status="failed", error=f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": "))
            log.error("run failed: %s\n%s", results["error"], traceback.format_exc())
    finally:
        if logger is not None:
            logger.close()
        if results["memory"] is None:
            results["memory"] = {"peak_rss_mb": peak_rss_mb()}
        write_json(run_dir / "results.json", results)
    return results


def format_summary(results: Dict[str, Any], run_dir: Path) -> str:
    def f(v):
        return "n/a" if v is None else f"{v:.4f}"

    lines = [f"run      {results['run_name']}  [{results['status']}]"]
    if results["status"] != "ok":
        lines.append(f"error    {results['error']}")
    else:
        img, pix = results["image"] or {}, results["pixel"]
        lines.append(f"image    AUROC {f(img.get('auroc'))}  AP {f(img.get('ap'))}  F1max {f(img.get('f1_max'))}")
        if pix:
            lines.append(f"pixel    AUROC {f(pix.get('auroc'))}  AUPRO {f(pix.get('aupro'))}  AP {f(pix.get('ap'))}")
        else:
            lines.append("pixel    n/a (no ground-truth masks)")
        t = results["timing"]
        lines.append(f"time     fit {t['fit_s']:.1f} s, predict {t['ms_per_image']:.1f} ms/image, "
                     f"peak RSS {results['memory']['peak_rss_mb']:.0f} MB")
    lines.append(f"outputs  {run_dir}")
    if (run_dir / "tb").is_dir():
        lines.append(f"tensorboard --logdir {run_dir / 'tb'}")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> Optional[float]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    results = run(cfg, run_dir, dict(hc.runtime.choices), list(hc.overrides.task))
    print(format_summary(results, run_dir), flush=True)
    if results["status"] != "ok":
        if hc.mode != RunMode.MULTIRUN:
            _EXIT["code"] = 1
        return None
    # The value an optimising sweeper (Optuna) maximises: a validation objective, never a test metric.
    return (results.get("validation") or {}).get("objective")


def main() -> None:
    register_resolvers()
    _hydra_main()
    sys.exit(_EXIT["code"])


if __name__ == "__main__":
    main()
