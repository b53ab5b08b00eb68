"""The TensorBoard view of a run: the key final metrics once, in the HPARAMS table (no per-metric hparam/...
copies, no constants or raw thresholds), everything else in one text summary; one overlaid score histogram
with the threshold; every overlay carries its `defect/file` caption inside the image; clean run names."""
from __future__ import annotations

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ad.rundir.records import ImageMetrics, PixelMetrics, RunRecord, Thresholds, Validation
from ad.engine.scoring import PredictionSet
from ad.loggers.tensorboard import TensorBoardLogger


def _test_set(n=6, size=32):
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(n // 2, int), np.ones(n - n // 2, int)]
    return PredictionSet(scores=rng.random(n) + labels, maps=rng.random((n, size, size)).astype(np.float32),
                         labels=labels, masks=np.zeros((n, size, size), np.uint8), has_mask=np.ones(n, bool),
                         paths=[f"/d/{i:03d}.png" for i in range(n)], defect_types=["good"] * n)


def session_hparams(acc):
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    return plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams


def test_final_metrics_once_and_captioned_overlays(tmp_path):
    test = _test_set()
    rec = RunRecord(status="ok", image=ImageMetrics(auroc=0.91, ap=0.88, threshold=0.9, precision=0.75, recall=0.5,
                                                    f1=0.6, f1_max=0.93, f1_max_threshold=0.7),
                    pixel=PixelMetrics(auroc=0.97, aupro=0.8, max_fpr=0.3), thresholds=Thresholds(image=0.9, fitted_on="4 validation normals"),
                    validation=Validation(count=4, objective=0.7, mean_score=0.2), mad=0.85)
    images = [{"image": np.full((3, 32, 32), 0.5, np.float32), "map": test.maps[i], "mask": None,
               "caption": "x", "name": f"{i:03d}.png", "score": float(test.scores[i]), "label": int(test.labels[i]),
               "decision": bool(test.scores[i] >= 0.9)} for i in range(4)]
    log = TensorBoardLogger(tmp_path / "tb")
    log.log_test("", rec, test, np.clip(test.scores / 2, 0, 1), images)
    log.log_final(rec, {"model": "m", "seed": 0})
    log.close()
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    # no single-point charts: a memory model has no scalar at all; its final metrics are HPARAMS columns
    assert acc.Tags()["scalars"] == []
    hp = session_hparams(acc)
    assert {k: v.number_value for k, v in hp.items() if k.startswith("final/")} == pytest.approx({
        "final/image_auroc": 0.91, "final/image_ap": 0.88, "final/image_f1": 0.6, "final/pixel_auroc": 0.97,
        "final/pixel_aupro": 0.8, "final/mad": 0.85, "final/validation_objective": 0.7})
    assert hp["model"].string_value == "m" and hp["seed"].number_value == 0
    assert acc.PluginTagToContent("hparams")
    texts = {t: acc.Tensors(t)[0].tensor_proto.string_val[0].decode() for t in acc.Tags()["tensors"]
             if t.endswith("text_summary")}
    summary = texts["summary/text_summary"]
    assert "| image | 75.0 | 50.0 | 60.0 | 0.9 |" in summary and "4 validation normals" in summary
    assert "| image | 91.0 | 88.0 | | 93.0 |" in summary and "F1max (diagnostic)" in summary
    assert "test/score_histogram" in acc.Tags()["images"]  # one overlaid chart, not two histogram cards
    assert not acc.Tags()["histograms"]
    from io import BytesIO

    from PIL import Image

    ev = acc.Images("test/overlays_best_and_worst")
    im = np.asarray(Image.open(BytesIO(ev[0].encoded_image_string)).convert("RGB"))  # one grid of 4 tiles
    assert im.shape[0] > 32 + 30 and im.shape[1] == 4 * 32  # each tile plus a caption strip of three lines
    for k in range(4):
        strip = im[34:, 32 * k:32 * (k + 1)]
        assert (strip > 200).any() and (strip == 0).mean() > 0.5  # white text on black under every tile


def test_sweep_jobs_log_under_clean_run_names(tmp_path, monkeypatch):
    """In a sweep, events go to <sweep>/tb/<run name>: TensorBoard then lists `patchcore/mvtec/bottle k=3`,
    not `3_patchcore_mvtec_bottle_k=3/tb`; an identical second job gets its folder appended; a job run again
    into its own folder replaces its events."""
    from ad.loggers import tensorboard as tb

    assert tb.run_log_dir(tmp_path / "job", "m/d/c") == tmp_path / "job" / "tb"  # a single run
    monkeypatch.setattr(tb, "_sweep_dir", lambda: tmp_path / "sweep")
    first = tb.run_log_dir(tmp_path / "sweep" / "0_m_d_c", "m/d/c model.k=3")
    assert first == tmp_path / "sweep" / "tb" / "m" / "d" / "c model.k=3"
    (first / "events.out.tfevents.1").write_text("old")
    assert tb.run_log_dir(tmp_path / "sweep" / "0_m_d_c", "m/d/c model.k=3") == first  # the same job again
    assert not (first / "events.out.tfevents.1").exists()
    twin = tb.run_log_dir(tmp_path / "sweep" / "1_m_d_c", "m/d/c model.k=3")
    assert twin == tmp_path / "sweep" / "tb" / "m" / "d" / "c model.k=3 (1_m_d_c)"
    assert tb.run_log_dir(tmp_path / "sweep" / "2", "../x") == tmp_path / "sweep" / "tb" / "_" / "x"


def test_sweep_run_names_keep_only_the_swept_parameters(tmp_path, monkeypatch):
    """Parameters every job of the sweep shares (given once, e.g. trainer=smoke) are left out of the name."""
    import yaml

    from ad.loggers import tensorboard as tb

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(
        {"hydra": {"overrides": {"task": ["model.k=1,3", "trainer=smoke", "model.layers=[a,b]", "category=x,y"]}}}))
    monkeypatch.setattr(tb, "_sweep_dir", lambda: sweep)
    got = tb.run_log_dir(sweep / "0", "m/d/x model.k=3,trainer=smoke,model.layers=[a,b]")
    assert got == sweep / "tb" / "m" / "d" / "x model.k=3"
    assert tb.run_log_dir(sweep / "1", "m/d/y [unified] trainer=smoke") == sweep / "tb" / "m" / "d" / "y [unified]"
