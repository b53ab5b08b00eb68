"""Reverse Distillation's loss, anomaly map and image score pinned on hand-built feature pyramids whose values are
worked out by hand (loss) or with scipy (map), against the reference code's definitions (hq-deng/RD4AD)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from ad.backbones import BackboneConfig
from ad.errors import ConfigError
from ad.models.distillation.reverse_distillation import ReverseDistillation, anomaly_map, flat_cosine_loss, position_cosine_loss


def _pyramid():
    """Two scales, two samples, two channels. Scale 1 (3×3): sample 0's teacher is (1, 0) everywhere but (3, 0)
    at the centre, where the student says (0, 1); elsewhere they agree; sample 1 agrees everywhere.
    Scale 2 (2×2): sample 0's student is the teacher ×2 (same direction); sample 1's is orthogonal everywhere."""
    t1 = torch.zeros(2, 2, 3, 3)
    t1[:, 0] = 1.0
    s1 = t1.clone()
    t1[0, 0, 1, 1] = 3.0
    s1[0, :, 1, 1] = torch.tensor([0.0, 1.0])
    t2 = torch.zeros(2, 2, 2, 2)
    t2[:, 0] = 1.0
    s2 = 2 * t2
    s2[1] = 0.0
    s2[1, 1] = 1.0
    return [t1, t2], [s1, s2]


def test_flat_loss_is_one_minus_cosine_of_each_flattened_map():
    t, s = _pyramid()
    # sample 0, scale 1: dot = 8, |t|^2 = 8 + 9, |s|^2 = 9; sample 1: identical -> 0; scale 2: 0 and 1
    expected = (1 - 8 / math.sqrt(17 * 9)) / 2 + (0 + 1) / 2
    assert flat_cosine_loss(t, s).item() == pytest.approx(expected, rel=1e-6)
    # the per-position mean weighs the one disagreeing position like any other: 1/9 instead
    assert position_cosine_loss(t, s).item() == pytest.approx((1 / 9) / 2 + 1 / 2, rel=1e-6)


def test_map_sums_per_scale_distances_then_smooths_and_the_score_is_its_max():
    # full-resolution scale: distance 1 at one pixel; coarse scale: distance 1 everywhere (so any upsampling
    # gives 1): the map is 1 + a Gaussian bump, worked out with scipy.
    t1 = torch.zeros(1, 2, 10, 10)
    t1[:, 0] = 1.0
    s1 = t1.clone()
    s1[0, :, 3, 6] = torch.tensor([0.0, 2.0])
    t2 = torch.zeros(1, 2, 5, 5)
    t2[:, 0] = 1.0
    s2 = torch.zeros(1, 2, 5, 5)
    s2[:, 1] = 1.0
    d = np.zeros((10, 10))
    d[3, 6] = 1.0
    expected = gaussian_filter(d + 1.0, sigma=1.0, mode="mirror", truncate=4.0)
    got = anomaly_map([t1, t2], [s1, s2], size=(10, 10), sigma=1.0)
    np.testing.assert_allclose(got[0].numpy(), expected, rtol=1e-5, atol=1e-6)

    model = ReverseDistillation(backbone=BackboneConfig(name="tf_efficientnet_lite0", pretrained=False), sigma=1.0)
    model._pyramids = lambda images: ([t1, t2], [s1, s2])
    pred = model.eval().predict(torch.zeros(1, 3, 10, 10))
    np.testing.assert_allclose(pred.maps[0].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert pred.scores.item() == pytest.approx(expected.max(), rel=1e-5)


def test_training_loss_is_the_flat_loss_unless_asked_otherwise():
    t, s = _pyramid()
    bb = BackboneConfig(name="tf_efficientnet_lite0", pretrained=False)
    flat = ReverseDistillation(backbone=bb)
    flat._pyramids = lambda images: (t, s)
    assert flat.training_step({"image": torch.zeros(2, 3, 8, 8)}).item() == pytest.approx(
        flat_cosine_loss(t, s).item())
    position = ReverseDistillation(backbone=bb, loss="position")
    position._pyramids = lambda images: (t, s)
    assert position.training_step({"image": torch.zeros(2, 3, 8, 8)}).item() == pytest.approx(
        position_cosine_loss(t, s).item())
    with pytest.raises(ConfigError, match="model.loss"):
        ReverseDistillation(backbone=bb, loss="mse")


def test_one_class_embedding_has_the_reference_block_count():
    # reference code: BN_layer(Bottleneck, 3) for (Wide-)ResNet-50 -> three residual blocks, the first strided
    model = ReverseDistillation(backbone=BackboneConfig(name="tf_efficientnet_lite0", pretrained=False))
    assert len(model.bottleneck.oce) == 3
