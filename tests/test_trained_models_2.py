"""EfficientAD, DRAEM and the autoencoder family on tiny in-test data, plus their helpers (SSIM, Perlin masks,
anomaly synthesis, PDN teacher files and distillation).

The toy data: a noisy sinusoidal grating (random phase) as the normal class; anomalous images get a square
patch of a flat random colour with noise. Each model trains a few seeded steps through the model contract
(configure_optimizers / training_step / on_fit_end / predict), exactly what the trainer calls.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ad.models.base import Budget
import torch.nn.functional as F
from scipy import ndimage

from ad.errors import ConfigError, WeightsError
from ad.models import create_model
from ad.models._anomaly_synthesis import AnomalySynthesizer, perlin_mask, perlin_noise, procedural_texture
from ad.models.reconstruction._ssim import ssim_map
from ad.models.reconstruction.draem import focal_loss
from ad.models.distillation.efficientad import EfficientAD
from tests.fakes import assert_resume_matches_uninterrupted


def toy_images(n: int, anomalous: bool, seed: int, size: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    out = []
    for _ in range(n):
        base = 0.5 + 0.25 * torch.sin(xx / 3.0 + float(torch.rand(1, generator=g)) * 2 * math.pi)
        img = torch.stack([base * 0.9, base * 0.6 + 0.2, base * 0.3 + 0.1]) + 0.03 * torch.randn(3, size, size, generator=g)
        if anomalous:
            s = size // 5
            y, x = torch.randint(2, size - s - 2, (2,), generator=g).tolist()
            img[:, y:y + s, x:x + s] = torch.rand(3, 1, 1, generator=g) * 0.6 + 0.2 + 0.1 * torch.randn(3, s, s, generator=g)
        out.append(img.clamp(0, 1))
    return torch.stack(out)


# name, constructor kwargs (tiny, fast learning rate), steps, batch size, image side
CASES = {
    "ae": (dict(image_size=64, widths=(8, 16, 32), latent_dim=16, lr=1e-3), 40, 4, 64),
    "unet_ae": (dict(image_size=64, widths=(8, 16, 32, 32), skip_levels=(2,), skip_channels=4, bottleneck_channels=8,
                     lr=1e-3), 40, 4, 64),
    "vae": (dict(image_size=64, widths=(8, 16, 32), latent_dim=16, lr=1e-3), 40, 4, 64),
    "beta_vae": (dict(image_size=64, widths=(8, 16, 32), latent_dim=16, lr=1e-3), 40, 4, 64),
    "efficientad": (dict(teacher_weights="random", image_size=64, out_channels=64, lr=1e-3), 16, 1, 64),
    # DRAEM must first learn to segment its synthetic anomalies: it separates the toy anomalies only after ~250
    # steps (test_draem_separates_after_longer_training, marked slow); 40 steps check everything else
    "draem": (dict(recon_base_width=8, disc_base_width=8, lr=2e-3, score_window=5), 40, 4, 32),
}


def _fit(name: str, steps: int | None = None):
    kwargs, default_steps, bs, size = CASES[name]
    steps = steps or default_steps
    torch.manual_seed(0)
    model = create_model(name, **kwargs)
    train = toy_images(16, False, seed=0, size=size)
    val = toy_images(4, False, seed=3, size=size)
    model.train()
    model.on_fit_start()
    spec = model.configure_optimizers(Budget(max_epochs=None, max_steps=steps, batch_size=bs, steps_per_epoch=len(train) // bs))
    losses = []
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randperm(len(train), generator=g)[:bs]
        loss = model.training_step({"image": train[idx], "path": [f"img{i}" for i in idx.tolist()]})
        spec.optimizer.zero_grad()
        loss.backward()
        spec.optimizer.step()
        if spec.scheduler is not None and spec.scheduler_interval == "step":
            spec.scheduler.step()
        losses.append(float(loss.detach()))
    model.eval()
    model.on_fit_end([{"image": val, "path": [f"val{i}" for i in range(len(val))]}])
    return model, losses, size


@pytest.fixture(scope="module")
def fitted():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = _fit(name)
        return cache[name]

    return get


def _separates(model, size: int) -> bool:
    good = toy_images(8, False, seed=1, size=size)
    bad = toy_images(8, True, seed=2, size=size)
    pg, pb = model.predict(good), model.predict(bad)
    assert pg.scores.shape == (8,) and pg.maps.shape == (8, size, size)
    return bool(pb.scores.mean() > pg.scores.mean())


@pytest.mark.parametrize("name", list(CASES))
def test_trains_predicts_and_separates(name, fitted):
    model, losses, size = fitted(name)
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-8:]) < np.mean(losses[:8]), f"{name} loss did not decrease"
    separates = _separates(model, size)
    assert separates or name == "draem", f"{name}: anomalous images do not score higher"
    good = toy_images(2, False, seed=1, size=size)
    # maps come back at the input resolution even when it differs from the model's working size
    odd = F.interpolate(good, size=(size - 8, size + 8), mode="bilinear", align_corners=False)
    assert model.predict(odd).maps.shape == (2, size - 8, size + 8)


@pytest.mark.slow
def test_draem_separates_after_longer_training():
    model, losses, size = _fit("draem", steps=300)
    assert np.mean(losses[-20:]) < np.mean(losses[:20])
    assert _separates(model, size)


@pytest.mark.parametrize("name", list(CASES))
def test_state_dict_round_trip(name, fitted):
    model, _, size = fitted(name)
    kwargs = dict(CASES[name][0])
    torch.manual_seed(123)  # a differently initialised twin: everything must come from the state dict
    twin = create_model(name, **kwargs).eval()
    twin.load_state_dict(model.state_dict())
    x = toy_images(3, True, seed=5, size=size)
    a, b = model.predict(x), twin.predict(x)
    assert torch.equal(a.scores, b.scores) and torch.equal(a.maps, b.maps)


@pytest.mark.parametrize("name", ["ae", "vae", "draem", "efficientad"])
def test_validation_loss_is_deterministic(name, fitted):
    model, _, size = fitted(name)
    batch = {"image": toy_images(4, False, seed=7, size=size), "path": ["a", "b", "c", "d"]}
    assert float(model.validation_step(batch)) == float(model.validation_step(batch))


def test_ssim_score_and_topk_options():
    torch.manual_seed(0)
    kw = CASES["ae"][0]
    m = create_model("ae", score="ssim", topk=10, **kw).eval()
    x = toy_images(2, False, seed=0)
    p = m.predict(x)
    # independent recomputation of the top-10 mean of the smoothed 1 - SSIM map
    from scipy.ndimage import gaussian_filter

    err = torch.from_numpy(np.stack([gaussian_filter((1 - ssim_map(x, m.reconstruct(x)))[i].numpy().astype(np.float64), 4.0, mode="mirror")
                                     for i in range(2)])).float().flatten(1)
    assert torch.allclose(p.scores, err.topk(10, dim=1).values.mean(1), atol=1e-5)
    with pytest.raises(ConfigError, match="model.score"):
        create_model("ae", score="l1")


# --- SSIM -----------------------------------------------------------------------------------------------------
def _ssim_reference(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """SSIM with scipy's Gaussian filter (11 taps, sigma 1.5, mirror padding), per channel then averaged."""
    c1, c2 = 0.01**2, 0.03**2
    f = lambda a: ndimage.gaussian_filter(a, 1.5, truncate=5 / 1.5, mode="mirror")  # noqa: E731
    out = []
    for a, b in zip(x, y):
        mx, my = f(a), f(b)
        vx, vy, cxy = f(a * a) - mx**2, f(b * b) - my**2, f(a * b) - mx * my
        out.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return np.mean(out, axis=0)


def test_ssim_identical_constant_and_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 32, 40, generator=g, dtype=torch.float64)
    assert torch.allclose(ssim_map(x, x), torch.ones(1, 32, 40, dtype=torch.float64))
    # two constant images: only the luminance term remains, (2ab + C1) / (a^2 + b^2 + C1)
    a, b = 0.3, 0.7
    s = ssim_map(torch.full((1, 1, 16, 16), a, dtype=torch.float64), torch.full((1, 1, 16, 16), b, dtype=torch.float64))
    expected = (2 * a * b + 1e-4) / (a * a + b * b + 1e-4)
    assert torch.allclose(s, torch.full_like(s, expected))
    y = (x + 0.2 * torch.rand(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    ref = _ssim_reference(x[0].numpy(), y[0].numpy())
    np.testing.assert_allclose(ssim_map(x, y)[0].numpy(), ref, atol=1e-10)
    # a structural inversion scores far lower than a small brightness shift
    assert ssim_map(x, 1 - x).mean() < 0 < 0.9 < ssim_map(x, (x + 0.05).clamp(0, 1)).mean()


# --- Perlin noise, masks, synthesis --------------------------------------------------------------------------
def test_perlin_noise_vanishes_on_lattice():
    rng = np.random.default_rng(0)
    n = perlin_noise((64, 48), (4, 3), rng)  # 16 px cells
    assert n.shape == (64, 48) and np.abs(n).max() <= math.sqrt(2) * 0.75
    np.testing.assert_allclose(n[::16, ::16], 0.0, atol=1e-6)  # gradient noise is zero at lattice points
    assert n.std() > 0.1


def test_perlin_mask_properties():
    masks = [perlin_mask((64, 64), np.random.default_rng(s)) for s in range(20)]
    for m in masks:
        assert m.shape == (64, 64) and set(np.unique(m)) <= {0.0, 1.0} and m.sum() > 0
    np.testing.assert_array_equal(perlin_mask((64, 64), np.random.default_rng(3)), masks[3])
    assert any(not np.array_equal(masks[0], m) for m in masks[1:])
    assert 0.0 < np.mean([m.mean() for m in masks]) < 0.5


def test_synthesizer_changes_only_masked_pixels(tmp_path):
    x = toy_images(6, False, seed=0, size=32)
    clean, aug, masks = AnomalySynthesizer(anomaly_prob=1.0, rotate_normal_prob=0.0)(x, np.random.default_rng(0))
    assert torch.equal(clean, x) and masks.shape == (6, 1, 32, 32)
    assert (masks.flatten(1).sum(1) > 0).all()
    assert torch.equal(aug * (1 - masks), x * (1 - masks))  # outside the mask: untouched
    assert ((aug - x).abs() * masks).sum() > 0
    clean, aug, masks = AnomalySynthesizer(anomaly_prob=0.0, rotate_normal_prob=0.0)(x, np.random.default_rng(0))
    assert torch.equal(aug, x) and masks.sum() == 0
    t = procedural_texture((32, 32), np.random.default_rng(1))
    assert t.shape == (3, 32, 32) and 0 <= t.min() and t.max() <= 1 and t.std() > 0
    # a folder source: the pasted texture comes from the images there
    from PIL import Image

    Image.fromarray(np.full((20, 20, 3), 255, np.uint8)).save(tmp_path / "white.png")
    syn = AnomalySynthesizer(str(tmp_path), anomaly_prob=1.0, rotate_normal_prob=0.0)
    assert syn.source((8, 8), np.random.default_rng(0)).min() == 1.0
    with pytest.raises(ConfigError, match="anomaly_source_dir"):
        AnomalySynthesizer(str(tmp_path / "missing"))


def test_focal_loss_reduces_to_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 8, 8, generator=g)
    target = (torch.rand(2, 1, 8, 8, generator=g) > 0.7).float()
    ce = F.cross_entropy(logits, target[:, 0].long())
    assert torch.allclose(focal_loss(logits, target, gamma=0.0), ce, atol=1e-6)
    assert focal_loss(logits, target, gamma=2.0) < ce  # easy pixels down-weighted


# --- EfficientAD specifics -------------------------------------------------------------------------------------
def test_efficientad_hard_feature_loss_keeps_top_quantile():
    m = create_model("efficientad", teacher_weights="random", image_size=64, out_channels=8)
    t = torch.zeros(1, 10, 10, 10)
    s = torch.zeros_like(t)
    s.view(-1)[:5] = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])  # squared differences 1, 4, 9, 16, 25
    # 1000 values, q = 0.999 -> k = 999th smallest = 16 -> mean of {16, 25}
    assert float(m._hard_loss(t, s)) == pytest.approx(20.5)


def test_efficientad_teacher_statistics_lazy_equals_explicit():
    x = toy_images(6, False, seed=0)
    explicit = create_model("efficientad", teacher_weights="random", image_size=64, out_channels=16)
    explicit.on_fit_start([{"image": x[:3]}, {"image": x[3:]}])
    with torch.no_grad():
        t = explicit.teacher(explicit._norm(x)).double()
    assert torch.allclose(explicit.teacher_mean.double().flatten(), t.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(explicit.teacher_std.double().flatten(), t.std(dim=(0, 2, 3), unbiased=False), rtol=1e-4)
    lazy = create_model("efficientad", teacher_weights="random", image_size=64, out_channels=16, teacher_stats_images=6)
    lazy.on_fit_start()
    for i in range(6):
        lazy.training_step({"image": x[i:i + 1]})
    assert bool(lazy.teacher_stats_ready)
    assert torch.allclose(lazy.teacher_mean, explicit.teacher_mean, atol=1e-5)
    assert torch.allclose(lazy.teacher_std, explicit.teacher_std, rtol=1e-4)


def test_efficientad_map_quantiles_from_validation(fitted):
    model, _, size = fitted("efficientad")
    val = toy_images(4, False, seed=3, size=size)  # the images `_fit` passed to on_fit_end
    st, ae = model.raw_maps(val)
    assert torch.allclose(model.map_st_q.double(), torch.tensor(np.quantile(st.double().numpy(), [0.9, 0.995])), rtol=1e-5)
    assert torch.allclose(model.map_ae_q.double(), torch.tensor(np.quantile(ae.double().numpy(), [0.9, 0.995])), rtol=1e-5)


def test_efficientad_teacher_errors_name_file_and_script(tmp_path):
    with pytest.raises(ConfigError, match="distill_pdn_teacher.py"):
        create_model("efficientad")
    missing = tmp_path / "pdn_s.pth"
    with pytest.raises(WeightsError) as err:
        create_model("efficientad", teacher_weights=str(missing))
    msg = str(err.value)
    assert str(missing) in msg and "distill_pdn_teacher.py" in msg and "\n" not in msg
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read"):
        create_model("efficientad", teacher_weights=str(tmp_path / "junk.pth"))


def test_distilled_teacher_file_loads_into_efficientad(tmp_path):
    from ad.backbones import BackboneConfig
    from ad.models.distillation._pdn import distill_pdn_teacher, save_teacher
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, img in enumerate(toy_images(3, False, seed=0)):
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(folder / f"{i}.png")
    files = sorted(folder.glob("*.png"))
    torch.manual_seed(0)
    backbone = BackboneConfig(name="tf_efficientnet_lite0", pretrained=False)
    teacher, losses = distill_pdn_teacher(files, backbone, layers=(2, 3), model_size="s", image_size=96, crop_size=64, steps=3,
                                          batch_size=2, lr=1e-3, procedural_fraction=0.5, stats_batches=2)
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    path = tmp_path / "pdn_s.pth"
    save_teacher(path, teacher, "s", 64, "test")
    m = create_model("efficientad", teacher_weights=str(path), image_size=64)
    assert m.channels == 40 + 112  # lite0 levels 2 and 3
    assert m.student[-1].out_channels == 2 * m.channels
    assert torch.equal(m.teacher[0].weight, teacher[0].weight)
    assert m.predict(toy_images(1, False, seed=1)).maps.shape == (1, 64, 64)
    with pytest.raises(WeightsError, match="model_size"):
        create_model("efficientad", teacher_weights=str(path), model_size="m", image_size=64)


# --- through the generic Trainer on the synthetic dataset: checkpoint / resume ---------------------------------
def _trainer_fit(name: str, root, run_dir, seed: int, callbacks=()):
    from ad.data.mvtec import MVTecAD
    from ad.engine.trainer import Trainer, seed_everything

    seed_everything(seed)
    kwargs = dict(CASES[name][0])
    if name != "draem":
        kwargs.pop("image_size", None)
        kwargs["image_size"] = 64
    model = create_model(name, **kwargs)
    data = MVTecAD(root=str(root), category="syn_tiles", image_size=64, val_fraction=0.2, seed=0)
    trainer = Trainer(max_epochs=2, batch_size=4, eval_batch_size=8,  # 10 train normals -> 2 steps/epoch
                      progress_bar=False, seed=0, callbacks=callbacks,
                      early_stopping={"enabled": False})
    return model, data, trainer, trainer.fit(model, data, run_dir=run_dir)


@pytest.mark.parametrize("name", list(CASES))
def test_trainer_checkpoint_resume_matches_uninterrupted_run(name, synthetic_root, tmp_path):
    assert_resume_matches_uninterrupted(
        lambda run_dir, seed, callbacks: _trainer_fit(name, synthetic_root, run_dir, seed=seed, callbacks=callbacks),
        tmp_path, 64)


def test_lr_schedules_follow_the_planned_budget():
    e = create_model("efficientad", teacher_weights="random", image_size=64, out_channels=8)
    spec = e.configure_optimizers(Budget(max_epochs=None, max_steps=200, batch_size=1, steps_per_epoch=10))
    assert spec.scheduler_interval == "step"
    lrs = []
    for _ in range(200):
        lrs.append(spec.optimizer.param_groups[0]["lr"])
        spec.optimizer.step()
        spec.scheduler.step()
    assert lrs[189] == pytest.approx(1e-4) and lrs[190] == pytest.approx(1e-5)  # x0.1 at 95 %
    d = create_model("draem", recon_base_width=4, disc_base_width=4)
    spec = d.configure_optimizers(Budget(max_epochs=10, max_steps=None, batch_size=8, steps_per_epoch=5))
    assert spec.scheduler_interval == "epoch" and spec.scheduler.milestones == {8: 1, 9: 1}
    spec = d.configure_optimizers(Budget(max_epochs=None, max_steps=1000, batch_size=8, steps_per_epoch=5))
    assert spec.scheduler_interval == "step" and spec.scheduler.milestones == {800: 1, 900: 1}


def test_efficientad_rebuilds_from_state_dict_without_teacher_file(fitted):
    model, _, size = fitted("efficientad")
    state = model.state_dict()
    cfg = EfficientAD.config_for_state_dict({"teacher_weights": "/nowhere/pdn_s.pth", "image_size": 64}, state)
    twin = create_model("efficientad", **cfg).eval()
    twin.load_state_dict(state)
    x = toy_images(2, True, seed=5, size=size)
    assert torch.equal(model.predict(x).maps, twin.predict(x).maps)


# --- EfficientAD's automatic teacher (teacher_weights=auto) -----------------------------------------------------
_TINY_RECIPE = dict(steps=2, batch_size=2, crop_size=64)


def test_auto_teacher_is_distilled_once_cached_by_recipe_and_reused(tmp_path):
    from ad.models.distillation._pdn import TeacherRecipe

    cache = tmp_path / "backbones"
    first = create_model("efficientad", teacher_weights="auto", teacher_dir=str(cache), image_size=64,
                         teacher_distill=_TINY_RECIPE)
    files = sorted(p.name for p in cache.iterdir() if p.suffix == ".pth")
    recipe = TeacherRecipe.from_config("s", 64, _TINY_RECIPE)
    assert files == [recipe.file_name()] and "2x2x64px" in files[0] and recipe.digest() in files[0]
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]
    assert oct((cache / files[0]).stat().st_mode & 0o777) == "0o644"
    meta = torch.load(cache / files[0], weights_only=True)
    assert meta["recipe"]["steps"] == 2 and meta["recipe"]["backbone"] == "tf_efficientnet_lite0"
    assert len(first.notes) == 1 and "distilled by this run" in first.notes[0] and files[0] in first.notes[0]
    assert first.channels == 24 + 40  # lite0 levels 1 and 2

    again = create_model("efficientad", teacher_weights="auto", teacher_dir=str(cache), image_size=64,
                         teacher_distill=_TINY_RECIPE)
    assert "(cached:" in again.notes[0]
    assert all(torch.equal(a, b) for a, b in zip(first.teacher.state_dict().values(), again.teacher.state_dict().values()))

    create_model("efficientad", teacher_weights="auto", teacher_dir=str(cache), image_size=64,
                 teacher_distill={**_TINY_RECIPE, "seed": 1})  # another recipe: another file, never the first
    assert len([p for p in cache.iterdir() if p.suffix == ".pth"]) == 2


def _distil_in_child(cache, queue):
    from ad.models.distillation._pdn import TeacherRecipe, cached_teacher

    path, seconds = cached_teacher(TeacherRecipe.from_config("s", 64, _TINY_RECIPE), cache)
    queue.put((str(path), seconds))


@pytest.mark.slow  # two spawned interpreters load torch and lite0: ~20 s on an idle machine
def test_two_jobs_distilling_the_same_teacher_at_once_share_one_file(tmp_path):
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_distil_in_child, args=(str(tmp_path), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert results[0][0] == results[1][0]
    assert sum(s is not None for _, s in results) == 1  # the second waited for the first one's file
    assert len([p for p in tmp_path.iterdir() if p.suffix == ".pth"]) == 1


def test_auto_teacher_recipe_is_validated_in_one_line():
    with pytest.raises(ConfigError, match=r"model.teacher_distill has unknown key\(s\) stepz"):
        create_model("efficientad", teacher_weights="auto", teacher_distill={"stepz": 3})
    with pytest.raises(ConfigError, match=r"model.teacher_distill.steps=0 must be >= 1"):
        create_model("efficientad", teacher_weights="auto", teacher_distill={"steps": 0})


def test_efficientad_config_defaults_to_the_auto_teacher_in_the_backbone_dir(tmp_path):
    from hydra.utils import instantiate

    from ad.config import compose

    cfg = compose(["model=efficientad", f"paths.backbone_dir={tmp_path}", "model.image_size=64",
                   "model.teacher_distill.steps=1", "model.teacher_distill.batch_size=2"])
    assert cfg.model.teacher_weights == "auto"
    model = instantiate(cfg.model)
    assert [p.name for p in tmp_path.glob("pdn_s_*.pth")] and model.notes
