"""One budget rule: a trainer value that is set wins, else the model's declaration — for every model option.

Composes the real configs (`trainer.batch_size=3 model=<name>`), instantiates them and runs the real trainer,
recording the batches each model is actually trained on.
"""
from __future__ import annotations

import pytest
from hydra.utils import instantiate

from ad.config import compose
from ad.data.mvtec import MVTecAD
from ad.registry import MODELS
from tests.test_config import MODEL_TEST_OVERRIDES


# Smaller networks where the defaults are slow on CPU; the batching under test does not depend on them.
SMALL = {
    "draem": ["model.recon_base_width=4", "model.disc_base_width=4"],
    "efficientad": ["model.image_size=64", "model.out_channels=8", "model.teacher_stats_images=4"],
    "unet_ae": ["model.image_size=32"],
    "uninformed_students": ["model.image_size=32", "model.width=4", "model.out_dim=8", "model.teacher_steps=2",
                            "model.teacher_batch=4", "model.patch_sizes=[17,33]"],
    "wae": ["model.image_size=32"], "feature_ae": ["model.latent_dim=8"],
    "ae": ["model.image_size=32"], "vae": ["model.image_size=32"], "beta_vae": ["model.image_size=32"],
    "dinomaly": ["backbone=vit_small_patch14_reg4_dinov2", "model.layers=[2,3,4,5]", "model.groups=[[0,1],[2,3]]",
                 "model.decoder_depth=4"],
    "differnet": ["model.subnet_hidden=64", "model.test_transforms=2"],
}
# ViT (patch 14) models need image sides that are multiples of 14.
IMAGE_SIZE = {"dinomaly": 56, "anomalydino": 56}


def _fit_recording_batches(name, overrides, root, tmp_path):
    cfg = compose([f"model={name}", "backbone.pretrained=false", "trainer.max_steps=2", "trainer.progress_bar=false",
                   "trainer.early_stopping.enabled=false", *MODEL_TEST_OVERRIDES.get(name, []), *SMALL.get(name, []),
                   *overrides])
    model = instantiate(cfg.model)
    from ad.engine.trainer import Trainer

    trainer = Trainer(**instantiate(cfg.trainer).loop())  # as ad.train builds it from TrainerSettings
    seen = []
    step = model.training_step

    def recording_step(batch):
        seen.append(len(batch["image"]))
        return step(batch)

    model.training_step = recording_step
    data = MVTecAD(root=str(root), category="syn_tiles", image_size=IMAGE_SIZE.get(name, 64), val_fraction=0.2, seed=0)
    fit = trainer.fit(model, data, run_dir=tmp_path)
    return model, fit, seen


@pytest.mark.parametrize("name", MODELS.names())
def test_batch_size_set_by_the_user_wins_for_every_model(name, synthetic_root, tmp_path):
    model, fit, seen = _fit_recording_batches(name, ["trainer.batch_size=3"], synthetic_root, tmp_path / "a")
    assert fit.budget.batch_size == 3
    # statistics models see every image once, so their one epoch may end with a partial batch
    assert seen and max(seen) == 3 and set(seen[:-1]) <= {3}, f"{name} trained on batches of {seen}, the user asked for 3"


@pytest.mark.parametrize("name", MODELS.names())
def test_unset_batch_size_takes_the_models_declared_default(name, synthetic_root, tmp_path):
    model, fit, seen = _fit_recording_batches(name, [], synthetic_root, tmp_path / "b")
    n_train = 10  # 12 train normals of syn_tiles, 20 % held out
    expected = min(model.default_batch_size, n_train)
    assert fit.budget.batch_size == model.default_batch_size
    assert seen and max(seen) == expected


@pytest.mark.parametrize("kw", ["trainer.max_epochs=0", "trainer.max_epochs=-1", "trainer.max_steps=0",
                                "trainer.batch_size=0", "trainer.max_epochs=abc", "trainer.eval_batch_size=0"])
def test_a_budget_that_trains_nothing_is_refused_at_construction(kw):
    from ad.errors import ConfigError

    cfg = compose([kw])
    with pytest.raises(Exception) as info:
        instantiate(cfg.trainer)
    err = info.value if isinstance(info.value, ConfigError) else info.value.__cause__
    assert isinstance(err, ConfigError) and kw.split("=")[0] in str(err) and "\n" not in str(err)
