"""AnomalyDINO: cosine kNN scores against a numpy brute force, the zero-shot foreground mask on constructed
features, state round-trip / load_run, and the one-command run (random-init ViT-S, 42 px)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ad.errors import ConfigError
from ad.models.memory.anomalydino import AnomalyDINO, foreground_mask

SIZE = 42
BACKBONE = {"name": "vit_small_patch14_dinov2", "pretrained": False}


@pytest.fixture(scope="module")
def fitted():
    torch.manual_seed(0)
    model = AnomalyDINO(backbone=BACKBONE, sigma=0.0).eval()
    train = torch.rand(5, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    model.on_fit_start()
    model.training_step({"image": train[:3]})
    model.training_step({"image": train[3:]})
    model.on_fit_end()
    return model, train


def test_scores_are_cosine_knn_distances_of_last_layer_patches(fitted):
    model, train = fitted
    assert model.memory_bank.shape == (5 * 9, 384)
    x = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    out = model.predict(x)
    with torch.no_grad():  # independent: final-normed last block, numpy cosine brute force
        def feats(imgs):
            tokens, _ = model.feature_extractor.model.forward_tokens(model.feature_extractor.normalize(imgs))
            return tokens[0][:, 1:].numpy().astype(np.float64)  # drop the class token (no registers)
        bank, query = feats(train).reshape(-1, 384), feats(x)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    query /= np.linalg.norm(query, axis=2, keepdims=True)
    patch = (1 - query @ bank.T).min(-1)  # [3, 9]
    k = max(1, int(9 * 0.01))
    np.testing.assert_allclose(out.scores.numpy(), np.sort(patch, 1)[:, ::-1][:, :k].mean(1), atol=1e-5)
    want_map = F.interpolate(torch.tensor(patch).view(3, 1, 3, 3), size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    assert out.maps.shape == (3, SIZE, SIZE)
    np.testing.assert_allclose(out.maps.numpy(), want_map[:, 0].numpy(), atol=1e-5)
    # a training image matches itself
    assert float(model.predict(train[:1]).scores) < 1e-5


def test_foreground_mask_finds_the_centred_object_and_closes_it():
    g = torch.Generator().manual_seed(0)
    feats = 0.1 * torch.randn(10, 10, 8, generator=g)
    feats[3:7, 3:7, 0] += 40.0  # object patches stand out along one direction
    mask = foreground_mask(feats, threshold=10.0)
    want = torch.zeros(10, 10, dtype=torch.bool)
    want[2:8, 2:8] = True  # the 4x4 object dilated by one patch; the closing keeps it
    assert torch.equal(mask, want)
    assert torch.equal(foreground_mask(-feats, threshold=10.0), want)  # the component's sign does not matter


def test_masked_patches_score_zero(fitted):
    model, train = fitted
    model.masking = True
    try:
        out = model.predict(torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3)))
    finally:
        model.masking = False
    assert out.maps.shape == (2, SIZE, SIZE) and torch.isfinite(out.scores).all()


def test_state_round_trip_and_load_run(fitted, tmp_path):
    from ad.rundir.modelfile import save_model_file
    from ad.predict import load_run
    from tests.test_run import _ok_results

    model, _ = fitted
    cfg = {"_target_": "ad.models.memory.anomalydino.AnomalyDINO", "sigma": 0.0,
           "backbone": {"_target_": "ad.backbones.BackboneConfig", **BACKBONE, "pretrained": True,
                        "weights_dir": str(tmp_path / "none")}}
    save_model_file(tmp_path / "model.pt", model, cfg, {"model_name": "anomalydino"})
    _ok_results(tmp_path)  # load_run scores only runs whose results.json says ok
    loaded, _ = load_run(tmp_path)
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    assert torch.equal(loaded.memory_bank, model.memory_bank)
    assert torch.allclose(loaded.predict(x).maps, model.predict(x).maps)


def test_cnn_backbone_is_a_config_error():
    with pytest.raises(ConfigError, match="ViT backbone"):
        AnomalyDINO(backbone={"name": "resnet18", "pretrained": False})


def test_one_command_run(synthetic_root, tmp_path):
    from tests.test_run import FAST, run_in_process

    res, _ = run_in_process(tmp_path, ["model=anomalydino", "category=syn_disc", f"dataset.root={synthetic_root}",
                                       *FAST, "backbone.pretrained=false", f"dataset.image_size={SIZE}"])
    assert res.status == "ok", res.error
    assert res.run.backbone == "vit_small_patch14_dinov2" and 0.0 <= res.image.auroc <= 1.0
