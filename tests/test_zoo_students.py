"""Uninformed Students, the pretrained-encoder autoencoder (`feature_ae`) and the WAE on tiny in-test textures:
loss falls, maps come back at the input size, defective images score higher, a state_dict twin predicts
identically, a resumed Trainer run equals an uninterrupted one; plus each model's mechanism against an
independent computation (ensemble error / variance and their normalisation in numpy; the MMD U-statistic
against a double loop and the closed form for 1-D Gaussians; the frozen encoder and defect localisation)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import voigt_profile

from ad.errors import ConfigError
from ad.models import create_model
from ad.models.distillation._patch_descriptors import PLANS, ImageBank, PatchNet, compactness_loss, ensemble_error_variance
from ad.models.base import Budget
from ad.models.reconstruction.wae import imq_kernel, mmd_unbiased
from tests.fakes import assert_resume_matches_uninterrupted, textures, with_defects

SIZE = 64
LITE0 = {"name": "tf_efficientnet_lite0", "pretrained": True}  # pip-shipped weights: offline
# name -> (constructor kwargs, steps, batch size)
CASES = {
    "uninformed_students": (dict(backbone=LITE0, patch_sizes=(17, 33), num_students=3, image_size=SIZE, width=8,
                                 out_dim=16, teacher_steps=30, teacher_batch=16, lr=2e-3), 40, 4),
    "feature_ae": (dict(backbone=LITE0, layers=(1, 2), latent_dim=8, lr=2e-3), 40, 4),
    "wae": (dict(image_size=SIZE, widths=(8, 16, 32), latent_dim=16, lr=1e-3), 60, 4),
}


def _batches(x: torch.Tensor, bs: int = 8):
    return [{"image": x[i:i + bs], "path": [f"img{j}" for j in range(i, i + len(x[i:i + bs]))]} for i in range(0, len(x), bs)]


def _fit(name: str):
    kwargs, steps, bs = CASES[name]
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = create_model(name, **kwargs)
    train, val = textures(16, g), textures(4, g)
    model.train()
    spec = model.configure_optimizers(Budget(max_epochs=None, max_steps=steps, batch_size=bs, steps_per_epoch=len(train) // bs))
    model.on_fit_start(_batches(train))
    model.train()
    losses = []
    for _ in range(steps):
        idx = torch.randperm(len(train), generator=g)[:bs]
        loss = model.training_step({"image": train[idx]})
        spec.optimizer.zero_grad()
        loss.backward()
        spec.optimizer.step()
        if spec.scheduler is not None and spec.scheduler_interval == "step":
            spec.scheduler.step()
        losses.append(float(loss.detach()))
    model.eval()
    model.on_fit_end(_batches(val))
    return model, losses


@pytest.fixture(scope="module")
def fitted():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = _fit(name)
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(CASES))
def test_trains_predicts_at_input_size_and_separates(name, fitted):
    model, losses = fitted(name)
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-8:]) < np.mean(losses[:8]), f"{name}: loss did not decrease"
    g = torch.Generator().manual_seed(7)
    good = textures(8, g)
    bad, _ = with_defects(textures(8, g), g)
    pg, pb = model.predict(good), model.predict(bad)
    assert pg.scores.shape == (8,) and pg.maps.shape == (8, SIZE, SIZE)
    assert float(pb.scores.mean()) > float(pg.scores.max()) or \
        (pb.scores[:, None] > pg.scores[None]).float().mean() > 0.9, f"{name}: defective images do not score higher"
    odd = torch.nn.functional.interpolate(good[:2], size=(SIZE - 8, SIZE + 8), mode="bilinear", align_corners=False)
    assert model.predict(odd).maps.shape == (2, SIZE - 8, SIZE + 8)


@pytest.mark.parametrize("name", list(CASES))
def test_state_dict_round_trip(name, fitted):
    model, _ = fitted(name)
    torch.manual_seed(123)  # a differently initialised twin: everything must come from the state dict
    twin = create_model(name, **dict(CASES[name][0], seed=5) if name == "uninformed_students" else CASES[name][0]).eval()
    twin.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(9)
    x, _ = with_defects(textures(3, g), g)
    a, b = model.predict(x), twin.predict(x)
    assert torch.equal(a.scores, b.scores) and torch.equal(a.maps, b.maps)


# --- through the generic Trainer on the synthetic dataset: checkpoint / resume ------------------------------
def _trainer_fit(name, root, run_dir, seed, callbacks=()):
    from ad.data.mvtec import MVTecAD
    from ad.engine.trainer import Trainer, seed_everything

    seed_everything(seed)
    model = create_model(name, **CASES[name][0])
    data = MVTecAD(root=str(root), category="syn_tiles", image_size=SIZE, val_fraction=0.2, seed=0)
    trainer = Trainer(max_epochs=2, batch_size=4, eval_batch_size=8, progress_bar=False, seed=0, callbacks=callbacks,
                      early_stopping={"enabled": False})
    return model, data, trainer, trainer.fit(model, data, run_dir=run_dir)


@pytest.mark.parametrize("name", list(CASES))
def test_trainer_checkpoint_resume_matches_uninterrupted_run(name, synthetic_root, tmp_path):
    assert_resume_matches_uninterrupted(
        lambda run_dir, seed, callbacks: _trainer_fit(name, synthetic_root, run_dir, seed, callbacks), tmp_path, SIZE)


# --- Uninformed Students ------------------------------------------------------------------------------------
def test_ensemble_error_and_variance_match_numpy():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(3, 2, 5, 4, 6, generator=g, dtype=torch.float64)  # M=3 students, B=2, d=5, 4x6 grid
    t = torch.randn(2, 5, 4, 6, generator=g, dtype=torch.float64)
    e, v = ensemble_error_variance(s, t)
    sn, tn = s.numpy(), t.numpy()
    mu = sn.mean(0)
    np.testing.assert_allclose(e.numpy(), ((mu - tn) ** 2).sum(1), rtol=1e-12)
    # predictive variance = per-dimension (population) variance of the ensemble, summed over dimensions
    np.testing.assert_allclose(v.numpy(), sn.var(axis=0).sum(1), rtol=1e-10)
    same = s[:1].expand(3, -1, -1, -1, -1)
    assert torch.allclose(ensemble_error_variance(same, t)[1], torch.zeros(2, 4, 6, dtype=torch.float64))


def test_students_normalisation_statistics_and_map_match_numpy(fitted):
    model, _ = fitted("uninformed_students")
    g = torch.Generator().manual_seed(3)
    val = textures(6, g)
    model.on_fit_end(_batches(val, 4))
    raw = model.raw_maps(val)
    x, _ = with_defects(textures(2, g), g)
    test_raw = model.raw_maps(x)
    maps = model.predict(x).maps
    for k, (e, v) in enumerate(raw):
        e, v = e.double().numpy(), v.double().numpy()
        expected = [e.mean(), e.std(), v.mean(), v.std()]  # over all validation pixels of that scale
        np.testing.assert_allclose(model.score_stats[k].double().numpy(), expected, rtol=1e-4)
    # the per-scale scores e~ + v~ are averaged over scales after upsampling to the input
    composed = 0
    for (e, v), (em, es, vm, vs) in zip(test_raw, model.score_stats.double().numpy()):
        z = torch.from_numpy((e.double().numpy() - em) / es + (v.double().numpy() - vm) / vs)
        composed = composed + torch.nn.functional.interpolate(z[:, None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)[:, 0]
    assert torch.allclose(maps.double(), composed / len(test_raw), atol=1e-4)


@pytest.mark.parametrize("p", sorted(PLANS))
def test_patch_net_sees_exactly_its_patch(p):
    """A p×p patch gives one descriptor; the centre output of a larger input depends on a window of at most p
    pixels (the receptive field), i.e. the descriptor really is a p-pixel patch's."""
    torch.manual_seed(0)
    net = PatchNet(p, width=4, out_dim=3).double()
    assert net(torch.rand(2, 3, p, p, dtype=torch.float64)).shape == (2, 3, 1, 1)
    x = torch.rand(1, 3, 2 * p, 2 * p, dtype=torch.float64, requires_grad=True)
    y = net(x)
    y[0, :, y.shape[2] // 2, y.shape[3] // 2].sum().backward()
    rows = torch.nonzero(x.grad[0].abs().sum((0, 2))).flatten()
    cols = torch.nonzero(x.grad[0].abs().sum((0, 1))).flatten()
    assert 0 < rows.max() - rows.min() + 1 <= p and 0 < cols.max() - cols.min() + 1 <= p
    # on a padded image: about one descriptor per `stride` pixels (pool flooring adds a cell or two)
    assert 0 <= net.dense(torch.rand(1, 3, 64, 64, dtype=torch.float64)).shape[-1] - 64 // net.stride <= 2


def test_image_bank_is_a_uniform_sample_and_patches_have_the_patch_size():
    bank = ImageBank(limit=10, rng=np.random.default_rng(0))
    counts = np.zeros(40)
    for trial in range(300):
        bank = ImageBank(limit=10, rng=np.random.default_rng(trial))
        for i in range(0, 40, 8):  # images whose pixel value encodes their index
            bank.add(torch.arange(i, i + 8).view(8, 1, 1, 1).expand(8, 3, 4, 4) / 255.0)
        counts[[int(img[0, 0, 0]) for img in bank.items]] += 1
    assert len(bank.items) == 10 and bank.seen == 40
    assert counts.min() > 0.5 * 75 and counts.max() < 1.5 * 75  # each image kept with probability 10/40
    bank.add_textures(2, (16, 16))
    assert bank.patches(5, 17, texture_fraction=0.5).shape == (5, 3, 17, 17)


def test_compactness_loss_is_zero_for_decorrelated_and_positive_for_correlated_descriptors():
    g = torch.Generator().manual_seed(0)
    white = torch.linalg.qr(torch.randn(64, 8, generator=g, dtype=torch.float64))[0]  # orthonormal columns
    white = white - white.mean(0)
    a = torch.randn(64, 1, generator=g, dtype=torch.float64)
    assert float(compactness_loss(a.expand(64, 8) + 0.01 * torch.randn(64, 8, generator=g, dtype=torch.float64))) > 0.9
    assert float(compactness_loss(torch.randn(4096, 8, generator=g, dtype=torch.float64))) < 1e-3
    assert compactness_loss(white).isfinite()


def test_students_need_an_ensemble():
    with pytest.raises(ConfigError, match="num_students"):
        create_model("uninformed_students", num_students=1, backbone=dict(LITE0, pretrained=False))
    with pytest.raises(ConfigError, match="patch_sizes"):
        create_model("uninformed_students", patch_sizes=(21,), backbone=dict(LITE0, pretrained=False))


# --- feature_ae ---------------------------------------------------------------------------------------------
def test_feature_ae_encoder_stays_frozen_and_map_localises_the_defect():
    kwargs, steps, bs = CASES["feature_ae"]
    torch.manual_seed(0)
    before = {k: v.clone() for k, v in create_model("feature_ae", **kwargs).encoder.state_dict().items()}
    model, _ = _fit("feature_ae")
    after = model.encoder.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    spec = model.configure_optimizers(Budget(None, 1, 1, 1))
    in_opt = {id(p) for group in spec.optimizer.param_groups for p in group["params"]}
    assert not in_opt & {id(p) for p in model.encoder.parameters()}
    assert model.feat_stats_ready and (model.feat_std != 1).any()
    g = torch.Generator().manual_seed(11)
    bad, masks = with_defects(textures(8, g), g)
    maps = model.predict(bad).maps
    hits = [bool(m[mask].mean() > 2 * m[~mask].mean()) for m, mask in zip(maps, masks)]
    peaks = [bool(mask.flatten()[m.flatten().argmax()]) for m, mask in zip(maps, masks)]
    assert sum(hits) >= 7 and sum(peaks) >= 6, (hits, peaks)


@pytest.mark.parametrize("target", ["image", "both"])
def test_feature_ae_image_and_both_targets(target):
    torch.manual_seed(0)
    m = create_model("feature_ae", backbone=dict(LITE0, pretrained=False), layers=(1, 2), latent_dim=4,
                     image_decoder_width=8, target=target)
    x = textures(4, torch.Generator().manual_seed(0))
    m.on_fit_start(_batches(x))
    m.eval()
    m.on_fit_end(_batches(x))
    errs = m._errors(x)
    assert (errs[0] is None) == (target == "image") and errs[1].shape == (4, SIZE, SIZE)
    if target == "both":  # each map divided by its validation mean
        assert torch.allclose(m.map_scale, torch.stack([e.mean() for e in errs]), rtol=1e-4)
    assert m.predict(x).maps.shape == (4, SIZE, SIZE)
    with pytest.raises(ConfigError, match="model.target"):
        create_model("feature_ae", backbone=dict(LITE0, pretrained=False), target="pixels")


# --- WAE ----------------------------------------------------------------------------------------------------
def _mmd_double_loop(x: np.ndarray, y: np.ndarray, c: float, scales=(1.0,)) -> float:
    k = lambda a, b: sum(c * s / (c * s + float(((a - b) ** 2).sum())) for s in scales)  # noqa: E731
    n, m = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return kxx + kyy - 2 * kxy


def test_mmd_u_statistic_equals_double_loop():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 8, generator=g, dtype=torch.float64)
    y = torch.randn(9, 8, generator=g, dtype=torch.float64) + 0.5
    for scales in ((1.0,), (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)):
        ours = float(mmd_unbiased(x, y, c=16.0, scales=scales))
        assert ours == pytest.approx(_mmd_double_loop(x.numpy(), y.numpy(), 16.0, scales), rel=1e-10)
    assert torch.allclose(imq_kernel(x[:1], x[:1], 3.0), torch.ones(1, 1, dtype=torch.float64))


def test_mmd_is_zero_for_one_gaussian_and_matches_the_closed_form_for_shifted_ones():
    """1-D Gaussians N(0, s²) vs N(mu, s²): E k(a, b) = π√C · Voigt(mu_a − mu_b; √2 s, √C), since a − b is
    Gaussian and C / (C + w²) is √C·π times a Cauchy density of scale √C."""
    c, s, n = 2.0, 1.0, 1500
    expect = lambda d: math.pi * math.sqrt(c) * voigt_profile(d, math.sqrt(2) * s, math.sqrt(c))  # noqa: E731
    g = torch.Generator().manual_seed(0)
    same = [float(mmd_unbiased(torch.randn(n, 1, generator=g, dtype=torch.float64),
                               torch.randn(n, 1, generator=g, dtype=torch.float64), c)) for _ in range(4)]
    assert abs(np.mean(same)) < 1e-3  # unbiased: the population value 0, up to sampling noise
    for mu in (0.5, 1.0, 2.0):
        closed = 2 * expect(0.0) - 2 * expect(mu)
        est = [float(mmd_unbiased(torch.randn(n, 1, generator=g, dtype=torch.float64),
                                  mu + torch.randn(n, 1, generator=g, dtype=torch.float64), c)) for _ in range(4)]
        assert closed > 0.02 and np.mean(est) == pytest.approx(closed, rel=0.1, abs=2e-3), (mu, closed, est)


def test_wae_kernel_scale_loss_and_schedule():
    m = create_model("wae", image_size=SIZE, widths=(8, 16, 32), latent_dim=16)
    assert m.kernel_c == 2 * 16 * 2.0  # C = 2 d_z sigma_z^2 (paper)
    spec = m.configure_optimizers(Budget(max_epochs=55, max_steps=None, batch_size=8, steps_per_epoch=10))
    assert spec.scheduler_interval == "step" and spec.optimizer.param_groups[0]["betas"] == (0.5, 0.999)
    lrs = []
    for _ in range(550):
        lrs.append(spec.optimizer.param_groups[0]["lr"])
        spec.optimizer.step()
        spec.scheduler.step()
    # paper: x0.5 after epoch 30 and a further x0.2 after epoch 50 of 55
    assert lrs[299] == pytest.approx(3e-4) and lrs[300] == pytest.approx(1.5e-4)
    assert lrs[499] == pytest.approx(1.5e-4) and lrs[500] == pytest.approx(3e-5)
    # the loss is the mean reconstruction error plus lambda * MMD of the codes against prior samples
    x = textures(4, torch.Generator().manual_seed(0))
    m.eval()
    with torch.no_grad():
        torch.manual_seed(1)
        total = float(m._loss(x))
        z = m.net.encode(x)[0]
        err = float(((m.net.decode(z) - x) ** 2).mean())
        torch.manual_seed(1)
        prior = torch.randn_like(z) * math.sqrt(2.0)
    assert total == pytest.approx(err + 0.163 * float(mmd_unbiased(z, prior, m.kernel_c)), rel=1e-5)
    with pytest.raises(ConfigError, match="lr_gammas"):
        create_model("wae", image_size=SIZE, widths=(8, 16, 32), lr_gammas=(0.5,))


def test_teacher_distillation_budget_follows_the_run():
    m = create_model("uninformed_students", backbone=dict(LITE0, pretrained=False), teacher_steps=1000)
    m.configure_optimizers(Budget(max_epochs=1, max_steps=2, batch_size=4, steps_per_epoch=2))
    assert m._teacher_steps_run == 10  # 5 teacher steps per student step of a 2-step smoke run
    m.configure_optimizers(Budget(max_epochs=100, max_steps=None, batch_size=8, steps_per_epoch=25))
    assert m._teacher_steps_run == 1000  # the cap
    m = create_model("uninformed_students", backbone=dict(LITE0, pretrained=False), teacher_steps_per_step=None)
    m.configure_optimizers(Budget(max_epochs=1, max_steps=2, batch_size=4, steps_per_epoch=2))
    assert m._teacher_steps_run == 1000


def test_teacher_statistics_are_over_all_training_images(fitted):
    model, _ = fitted("uninformed_students")
    train = textures(16, torch.Generator().manual_seed(0))  # the images `_fit` trained on
    for k, teacher in enumerate(model.teachers):
        with torch.no_grad():
            t = teacher.dense(train).double().numpy()
        np.testing.assert_allclose(model.t_mean[k].flatten().double().numpy(), t.mean(axis=(0, 2, 3)), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(model.t_std[k].flatten().double().numpy(), t.std(axis=(0, 2, 3)), rtol=1e-4)


UNIFIED_SMALL = {
    "uninformed_students": ["model.image_size=32", "model.width=4", "model.out_dim=8", "model.patch_sizes=[17,33]",
                            "model.teacher_batch=4"],
    "feature_ae": ["model.latent_dim=8"],
    "wae": ["model.image_size=32"],
}


@pytest.mark.parametrize("name", list(CASES))
def test_unified_setting_end_to_end(name, synthetic_root, tmp_path):
    """One model on the union of the three synthetic categories, through the real run pipeline, with the
    backbone's offline weights and nothing in backbones/."""
    from tests.test_run import FAST, run_in_process

    res, run_dir = run_in_process(tmp_path, ["setting=unified", "dataset=synthetic", f"model={name}",
                                             f"dataset.root={synthetic_root}", *FAST, *UNIFIED_SMALL[name]])
    assert res.status == "ok", res.error
    assert sorted(res.categories) == ["syn_disc", "syn_tiles", "syn_weave"]
    assert all(np.isfinite(res.categories[c].image.auroc) for c in res.categories)
    from ad.predict import load_run

    loaded, _ = load_run(run_dir)  # rebuilt from model.pt alone (the distilled teachers included)
    x = textures(2, torch.Generator().manual_seed(0))
    a, b = loaded.predict(x), load_run(run_dir)[0].predict(x)
    assert a.maps.shape == (2, SIZE, SIZE) and torch.isfinite(a.maps).all() and torch.equal(a.maps, b.maps)
