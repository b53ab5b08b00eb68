"""The validation objective: pasted defects on validation normals, averaged over strengths."""
import numpy as np
import torch

from ad.engine.validation import LEVELS, corrupt, synthetic_anomaly_auroc


def smooth_images(n=12, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.linspace(0.3, 0.7, size).view(1, 1, 1, size).expand(n, 3, size, size)
    return (base + 0.01 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)


def test_corrupt_changes_one_patch_and_is_deterministic():
    x = smooth_images()
    a, b = corrupt(x, 0.12, 0.2, seed=3), corrupt(x, 0.12, 0.2, seed=3)
    assert torch.equal(a, b)
    changed = (a - x).abs().amax(1) > 1e-6  # [N,H,W]
    frac = changed.flatten(1).float().mean(1)
    assert (frac > 0).all() and (frac < (0.18 * 1.01) ** 2 + 0.05).all()
    assert not torch.equal(corrupt(x, 0.12, 0.2, seed=4), a)


def test_objective_separates_a_good_detector_from_a_blind_one():
    x = smooth_images()
    mean = x.mean(0, keepdim=True)

    def detector(batch):  # distance from the mean normal image: sees pasted patches
        return (batch - mean).abs().amax(1).flatten(1).amax(1).numpy()

    def blind(batch):
        return np.zeros(len(batch))

    good = synthetic_anomaly_auroc(detector, x, seed=0)
    assert len([k for k in good if k.startswith("auroc_level")]) == len(LEVELS)
    assert good["objective"] > 0.8
    assert synthetic_anomaly_auroc(blind, x)["objective"] == 0.5
