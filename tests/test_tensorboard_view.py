"""The TensorBoard view of a run: each final metric appears once (the HPARAMS metric is the test/... chart,
no second hparam/... chart), and every overlay carries its caption inside the image."""
from __future__ import annotations

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ad.rundir.records import ImageMetrics, PixelMetrics, RunRecord, Validation
from ad.engine.scoring import PredictionSet
from ad.loggers.tensorboard import TensorBoardLogger


def _test_set(n=6, size=32):
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(n // 2, int), np.ones(n - n // 2, int)]
    return PredictionSet(scores=rng.random(n) + labels, maps=rng.random((n, size, size)).astype(np.float32),
                         labels=labels, masks=np.zeros((n, size, size), np.uint8), has_mask=np.ones(n, bool),
                         paths=[f"/d/{i:03d}.png" for i in range(n)], defect_types=["good"] * n)


def test_final_metrics_once_and_captioned_overlays(tmp_path):
    test = _test_set()
    rec = RunRecord(status="ok", image=ImageMetrics(auroc=0.91, ap=0.88), pixel=PixelMetrics(auroc=0.97, aupro=0.8),
                    validation=Validation(count=4, objective=0.7), mad=0.85)
    images = [{"image": np.full((3, 32, 32), 0.5, np.float32), "map": test.maps[i], "mask": None,
               "caption": "x", "name": f"{i:03d}.png", "score": float(test.scores[i]), "label": int(test.labels[i]),
               "decision": bool(test.scores[i] >= 0.9)} for i in range(4)]
    log = TensorBoardLogger(tmp_path / "tb")
    log.log_test("", rec, test, np.clip(test.scores / 2, 0, 1), images)
    log.log_final(rec, {"model": "m", "seed": 0})
    log.close()
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {"test/image/auroc", "test/pixel/aupro", "test/mad", "validation/objective"} <= scalars
    assert not any(t.startswith("hparam/") for t in scalars), scalars
    assert [e.value for e in acc.Scalars("test/image/auroc")] == [np.float32(0.91)]  # one point, written once
    assert acc.PluginTagToContent("hparams")
    from io import BytesIO

    from PIL import Image

    ev = acc.Images("test/overlays_best_and_worst")
    im = np.asarray(Image.open(BytesIO(ev[0].encoded_image_string)).convert("RGB"))  # one grid of 4 tiles
    assert im.shape[0] > 32 + 30 and im.shape[1] == 4 * 32  # each tile plus a caption strip of three lines
    for k in range(4):
        strip = im[34:, 32 * k:32 * (k + 1)]
        assert (strip > 200).any() and (strip == 0).mean() > 0.5  # white text on black under every tile
