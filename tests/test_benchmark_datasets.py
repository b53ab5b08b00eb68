"""MVTec AD 2, MVTec LOCO and Real-IAD: generated official layouts load with the right counts, bad files give
one line naming them, end-to-end runs report the official metrics (checked against independent
recomputations), and the AD 2 private-split submission passes a checker written from the official rules."""
from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

import ad.metrics as M
from ad.errors import DataError
from tests.layouts import LAYOUTS, LOCO_DEFECTS, mvtec_ad2, mvtec_loco, real_iad
from tests.test_run import run_in_process

FAST = ["model=patchcore", "trainer=smoke", "backbone.pretrained=false", "dataset.image_size=48",
        "trainer.limit_test=null", "trainer.limit_val=null"]


# --- listing -------------------------------------------------------------------------------------------------
def test_mvtec_ad2_uses_the_official_validation_set(tmp_path):
    layout = mvtec_ad2(tmp_path)
    dm = layout.data_module(image_size=32)
    assert len(dm.samples("train")) == 8 and len(dm.samples("val")) == 3 and dm.no_val_reason is None
    assert all("/validation/good/" in s.path for s in dm.samples("val"))
    bad = [s for s in dm.samples("test") if s.label == 1]
    assert all(s.mask_path.endswith(Path(s.path).stem + "_mask.png") for s in bad)
    assert [p.name for p in dm.private_images("test_private_mixed")] == [f"{i:03d}_mixed.png" for i in range(4)]


def test_mvtec_loco_lists_mask_folders_and_reads_several_defects(tmp_path):
    layout = mvtec_loco(tmp_path)
    dm = layout.data_module(image_size=48)
    test = dm.samples("test")
    assert Counter(s.defect_type for s in test) == {"good": 3, "logical_anomalies": 2, "structural_anomalies": 2}
    assert len(dm.samples("val")) == 3
    bad = [s for s in test if s.label == 1]
    assert all(Path(s.mask_path).is_dir() for s in bad)
    # the loader's mask is the union of the image's PNGs
    batch = next(iter(dm.dataloader("test", batch_size=len(test))))
    for i, path in enumerate(batch["path"]):
        s = next(x for x in test if x.path == path)
        if s.label:
            union = np.zeros((48, 48), bool)
            for png in sorted(Path(s.mask_path).glob("*.png")):
                union |= np.asarray(Image.open(png)) > 0
            assert np.array_equal(batch["mask"][i].numpy() > 0, union)
    defects = dm.defects([s.mask_path if s.label else None for s in test], (48, 48))
    assert len(defects) == sum(len(v) for images in LOCO_DEFECTS.values() for v in images)
    sats = sorted({d.saturation for d in defects})
    assert 60 in sats or any(d.saturation == int(d.mask.sum()) for d in defects)


def test_real_iad_multi_and_single_view_splits(tmp_path):
    layout = real_iad(tmp_path)
    mv = layout.data_module(image_size=32, val_fraction=0.0)
    assert len(mv.samples("train")) == 10
    assert Counter(s.label for s in mv.samples("test")) == {0: 9, 1: 6}
    sv = layout.data_module(image_size=32, val_fraction=0.0, protocol="single_view")
    assert len(sv.samples("train")) == 2 and Counter(s.label for s in sv.samples("test")) == {0: 1, 1: 2}
    assert all("_C1_" in s.path for s in sv.samples("test"))


# --- one-line errors naming the file -----------------------------------------------------------------------
def _one_line(exc) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_ad2_missing_mask_names_the_file(tmp_path):
    layout = mvtec_ad2(tmp_path)
    gone = tmp_path / "can" / "test_public" / "ground_truth" / "bad" / "001_regular_mask.png"
    gone.unlink()
    with pytest.raises(DataError) as exc:
        layout.data_module(image_size=32).setup()
    assert str(gone) in _one_line(exc)


def test_wrong_size_mask_names_the_file(tmp_path):
    layout = mvtec_ad2(tmp_path)
    mask = tmp_path / "can" / "test_public" / "ground_truth" / "bad" / "000_regular_mask.png"
    Image.new("L", (10, 10)).save(mask)
    with pytest.raises(DataError) as exc:
        layout.data_module(image_size=32).setup()
    assert str(mask) in _one_line(exc) and "10x10" in str(exc.value)


@pytest.mark.parametrize("content,expect", [
    ("[{not json", "JSONDecodeError"),
    ('{"defect_name": "a"}', "non-empty JSON list"),
    ('[{"defect_name": "a", "pixel_value": 255, "relative_saturation": true}]', "lacks saturation_threshold"),
    ('[{"defect_name": "a", "pixel_value": 255, "saturation_threshold": 1.5, "relative_saturation": true}]',
     "must be in (0, 1]"),
    ('[{"defect_name": "a", "pixel_value": 300, "saturation_threshold": 1.0, "relative_saturation": true}]',
     "1..255"),
])
def test_malformed_defects_config_names_the_file(tmp_path, content, expect):
    layout = mvtec_loco(tmp_path)
    cfg = tmp_path / "box_like" / "defects_config.json"
    cfg.write_text(content)
    with pytest.raises(DataError) as exc:
        layout.data_module(image_size=32).setup()
    assert str(cfg) in _one_line(exc) and expect in str(exc.value)


def test_loco_mask_value_missing_from_config_and_missing_folder(tmp_path):
    layout = mvtec_loco(tmp_path)
    cfg = tmp_path / "box_like" / "defects_config.json"
    entries = [e for e in json.loads(cfg.read_text()) if e["pixel_value"] != 7]
    cfg.write_text(json.dumps(entries))
    with pytest.raises(DataError, match="pixel value 7") as exc:
        layout.data_module(image_size=32).setup()
    assert "structural_anomalies" in _one_line(exc)
    layout = mvtec_loco(tmp_path / "b")
    folder = tmp_path / "b" / "box_like" / "ground_truth" / "logical_anomalies" / "001"
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    with pytest.raises(DataError) as exc:
        layout.data_module(image_size=32).setup()
    assert str(folder) in _one_line(exc)


@pytest.mark.parametrize("content,expect", [
    ("{", "JSONDecodeError"),
    ('{"meta": {}, "train": []}', "lists 'train' and 'test'"),
    ('{"meta": {}, "train": [{"image_path": "OK/S0001/x.jpg"}], "test": []}', "train[0]"),
])
def test_malformed_real_iad_split_names_the_file(tmp_path, content, expect):
    layout = real_iad(tmp_path)
    split = tmp_path / "realiad_jsons" / "toy9.json"
    split.write_text(content)
    with pytest.raises(DataError) as exc:
        layout.data_module(image_size=32).setup()
    assert str(split) in _one_line(exc) and expect in str(exc.value)


def test_real_iad_missing_image_and_missing_split_file(tmp_path):
    layout = real_iad(tmp_path)
    img = next((tmp_path / "realiad_1024" / "toy9" / "NG").rglob("*.jpg"))
    img.unlink()
    with pytest.raises(DataError) as exc:
        layout.data_module(image_size=32).setup()
    assert "missing" in _one_line(exc) and "toy9.json" in str(exc.value)
    (tmp_path / "realiad_jsons_sv" / "toy9.json").unlink()
    with pytest.raises(DataError) as exc:
        layout.data_module(image_size=32, protocol="single_view").setup()
    assert "realiad_jsons_sv/toy9.json" in _one_line(exc)


# --- end to end: the official metrics in results.json ---------------------------------------------------------
def _predictions(run_dir: Path):
    with open(run_dir / "predictions.csv") as f:
        return list(csv.DictReader(f))


def _maps(run_dir: Path, paths):
    from ad.predict import load_run, predict_paths

    model, meta = load_run(run_dir)
    return predict_paths(model, meta, [Path(p) for p in paths], 16, "cpu")["maps"]


def test_mvtec_ad2_run_reports_aupro_005_and_segf1(tmp_path):
    layout = mvtec_ad2(tmp_path / "data")
    res, run_dir = run_in_process(tmp_path, [*FAST, *layout.overrides])
    assert res.status == "ok", res.error
    b = res.benchmark
    assert set(b) >= {"aupro_fpr5", "aupro_fpr30", "segf1", "segf1_precision", "segf1_recall", "segf1_threshold"}
    assert b["aupro_fpr30"] == pytest.approx(res.pixel.aupro, abs=1e-12)  # same metric, same maps
    dm = layout.data_module(image_size=48)
    val_maps = _maps(run_dir, [s.path for s in dm.samples("val")])
    assert b["segf1_threshold"] == pytest.approx(M.segf1_threshold(val_maps), rel=1e-5)
    test = dm.samples("test")
    maps = _maps(run_dir, [s.path for s in test])
    masks = np.stack([np.asarray(Image.open(s.mask_path).resize((48, 48), Image.NEAREST)) > 0 if s.mask_path
                      else np.zeros((48, 48), bool) for s in test])
    want = ((maps >= b["segf1_threshold"]) & masks).sum() * 2.0 / ((maps >= b["segf1_threshold"]).sum() + masks.sum())
    assert b["segf1"] == pytest.approx(float(want), abs=1e-6)
    assert b["aupro_fpr5"] == pytest.approx(M.aupro(masks, maps, 0.05), abs=1e-6)
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["benchmark"]["aupro_fpr5"] == pytest.approx(b["aupro_fpr5"])


def test_mvtec_loco_run_reports_spro_for_logical_structural_and_mean(tmp_path):
    layout = mvtec_loco(tmp_path / "data")
    res, run_dir = run_in_process(tmp_path, [*FAST, *layout.overrides])
    assert res.status == "ok", res.error
    b = res.benchmark
    for lim in ("fpr1", "fpr5", "fpr10", "fpr30", "fpr100"):
        lo, st, mean = (b[f"au_spro_{lim}_{k}"] for k in ("logical", "structural", "mean"))
        assert mean == pytest.approx((lo + st) / 2)
    dm = layout.data_module(image_size=48)
    test = dm.samples("test")
    maps = _maps(run_dir, [s.path for s in test])
    for kind, short in (("logical_anomalies", "logical"), ("structural_anomalies", "structural")):
        keep = [i for i, s in enumerate(test) if s.defect_type in ("good", kind)]
        defects = dm.defects([test[i].mask_path if test[i].label else None for i in keep], (48, 48))
        want = M.au_spro(maps[keep], defects)
        assert b[f"au_spro_fpr5_{short}"] == pytest.approx(want[0.05], abs=1e-6)
        rows = {r["path"]: r for r in _predictions(run_dir)}
        y = [test[i].label for i in keep]
        s = [float(rows[test[i].path]["score"]) for i in keep]
        assert b[f"image_auroc_{short}"] == pytest.approx(roc_auc_score(y, s), abs=1e-6)


def test_real_iad_run_reports_the_sample_level_metric(tmp_path):
    layout = real_iad(tmp_path / "data")
    res, run_dir = run_in_process(tmp_path, [*FAST, *layout.overrides])
    assert res.status == "ok", res.error
    groups: dict = {}
    for r in _predictions(run_dir):
        key = str(Path(r["path"]).parent)
        y, s = groups.get(key, (0, -np.inf))
        groups[key] = (max(y, int(r["label"])), max(s, float(r["score"])))
    y, s = zip(*groups.values())
    assert res.benchmark["samples"] == 3 == len(groups)  # S0003 (OK), NG/AK/S0004, NG/AK/S0005
    assert res.benchmark["sample_auroc"] == pytest.approx(roc_auc_score(y, s))
    assert res.benchmark["sample_ap"] == pytest.approx(average_precision_score(y, s))


def test_unified_run_on_two_ad2_categories_averages_the_benchmark(tmp_path):
    root = tmp_path / "data"
    mvtec_ad2(root)
    mvtec_ad2(root, seed=9, category="vial")
    res, _ = run_in_process(tmp_path, [*FAST, "dataset=mvtec_ad2", f"dataset.root={root}", "setting=unified",
                                       "setting.categories=[can,vial]"])
    assert res.status == "ok", res.error
    per = {c: r.benchmark for c, r in res.categories.items()}
    assert set(per) == {"can", "vial"}
    assert res.benchmark["aupro_fpr5"] == pytest.approx((per["can"]["aupro_fpr5"] + per["vial"]["aupro_fpr5"]) / 2)
    assert "segf1_threshold" not in res.benchmark  # a mean of thresholds means nothing


BUILDERS = {"mvtec_ad2": (mvtec_ad2, "can", "vial"), "mvtec_loco": (mvtec_loco, "box_like", "jar_like"),
            "real_iad": (real_iad, "toy9", "toy8")}


def _unified(model: str, dataset: str, tmp_path: Path):
    build, a, b = BUILDERS[dataset]
    root = tmp_path / "data"
    build(root, category=a)
    build(root, seed=11, category=b)
    size = "dataset.image_size=56" if model in ("dinomaly", "anomalydino") else "dataset.image_size=48"
    from tests.test_budget import SMALL

    extra = ["model.teacher_weights=random"] if model == "efficientad" else []
    res, _ = run_in_process(tmp_path, [*FAST, f"model={model}", size, f"dataset={dataset}", f"dataset.root={root}",
                                       "setting=unified", f"setting.categories=[{a},{b}]", *SMALL.get(model, []),
                                       *extra, f"paths.backbone_dir={tmp_path / 'none'}"])
    assert res.status == "ok", f"{model} unified on {dataset}: {res.error}"
    assert set(res.categories) == {a, b} and all(c.benchmark for c in res.categories.values())
    assert res.benchmark is not None
    return res


@pytest.mark.parametrize("dataset", ["mvtec_loco", "real_iad"])
def test_unified_padim_on_loco_and_real_iad(dataset, tmp_path):
    res = _unified("padim", dataset, tmp_path)
    key = "au_spro_fpr5_mean" if dataset == "mvtec_loco" else "sample_auroc"
    assert res.benchmark[key] == pytest.approx(np.mean([c.benchmark[key] for c in res.categories.values()]))


@pytest.mark.slow
@pytest.mark.parametrize("dataset", sorted(BUILDERS))
@pytest.mark.parametrize("model", __import__("ad.registry", fromlist=["MODELS"]).MODELS.names())
def test_every_model_unified_on_every_benchmark_dataset(model, dataset, tmp_path):
    _unified(model, dataset, tmp_path)


# --- the AD 2 submission ------------------------------------------------------------------------------------------
def test_private_splits_written_in_the_official_submission_format(tmp_path):
    import tifffile

    from ad.submission.mvtec_ad2 import (SubmissionError, check_submission, expected_from_root,
                                              score_private)

    root = tmp_path / "data"
    layout = mvtec_ad2(root)
    res, run_dir = run_in_process(tmp_path, [*FAST, *layout.overrides])
    assert res.status == "ok", res.error
    out = tmp_path / "submission"
    summary = score_private(run_dir, out, root)
    assert summary["metrics"].startswith("no ground truth")
    assert summary["threshold"] == pytest.approx(res.benchmark["segf1_threshold"])
    expected = expected_from_root(root, ["can"])
    assert check_submission(out, expected) == 16
    from ad.submission.mvtec_ad2 import main as submission_cli

    assert submission_cli([f"check={out}", f"root={root}"]) == 0
    assert submission_cli([f"check={out}", f"root={root}", "complete=true"]) == 1  # 7 objects missing
    tiff = out / "anomaly_images" / "can" / "test_private" / "000_regular.tiff"
    arr = tifffile.imread(tiff)
    assert arr.dtype == np.float16 and arr.shape == (48, 64)  # the image's own, non-square size
    png = np.asarray(Image.open(out / "anomaly_images_thresholded" / "can" / "test_private_mixed" / "003_mixed.png"))
    assert set(np.unique(png)) <= {0, 255} and png.shape == (48, 64)
    with pytest.raises(SubmissionError, match="fabric"):
        check_submission(out, expected, complete=True)

    def broken(fn):
        import shutil

        bad = tmp_path / f"bad_{fn.__name__}"
        shutil.copytree(out, bad)
        fn(bad)
        with pytest.raises(SubmissionError) as exc:
            check_submission(bad, expected)
        assert "\n" not in str(exc.value)
        return str(exc.value)

    def extra_file(d):
        (d / "anomaly_images" / "can" / "test_private" / "notes.txt").write_text("x")

    def float32(d):
        tifffile.imwrite(d / "anomaly_images" / "can" / "test_private" / "001_regular.tiff", np.zeros((4, 4), np.float32))

    def grey_png(d):
        Image.fromarray(np.full((4, 4), 128, np.uint8)).save(d / "anomaly_images_thresholded" / "can" / "test_private"
                                                              / "002_regular.png")

    def rgb_tiff(d):
        tifffile.imwrite(d / "anomaly_images" / "can" / "test_private_mixed" / "000_mixed.tiff",
                         np.zeros((4, 4, 3), np.float16))

    def missing(d):
        (d / "anomaly_images" / "can" / "test_private_mixed" / "002_mixed.tiff").unlink()

    def top_level_file(d):
        (d / "results.json").write_text("{}")

    assert "notes.txt" in broken(extra_file)
    assert "float32" in broken(float32)
    assert "0 and 255" in broken(grey_png)
    assert "single-channel" in broken(rgb_tiff)
    assert "002_mixed.tiff" in broken(missing)
    assert "results.json" in broken(top_level_file)


def test_aggregator_and_report_table_the_benchmark_metrics(tmp_path):
    """`ad-aggregate` / `ad-report --metrics benchmark.<name>` read the official metrics of the runs."""
    from ad.aggregate.cli import aggregate

    layout = mvtec_loco(tmp_path / "data")
    runs = tmp_path / "sweep"
    values = {}
    for model in ("patchcore", "padim"):
        res, _ = run_in_process(runs, [*FAST, f"model={model}", *layout.overrides], name=model)
        assert res.status == "ok", res.error
        values[model] = res.benchmark["au_spro_fpr5_mean"]
    out = aggregate([runs], out=tmp_path / "agg", metrics=["image.auroc", "benchmark.au_spro_fpr5_mean"], plots=False,
                    bootstrap=0)
    md = out["markdown"]
    assert "benchmark au_spro_fpr5_mean" in md
    for v in values.values():
        assert f"{v:.4f}" in md
    from ad.report import build_report

    build_report([runs], tmp_path / "report", metrics=["image.auroc", "benchmark.au_spro_fpr5_mean"], bootstrap=0,
                 max_images=2)
    html = (tmp_path / "report" / "index.html").read_text()
    assert "au_spro_fpr5_mean" in html and f"{values['padim']:.4f}" in html
