"""Dinomaly: hard-mining loss and schedules against the reference code's formulas (re-implemented here in
numpy), StableAdamW against a float64 transcription of the reference optimiser, and the model on a
random-init ViT-S (small decoder, 42 px: fast on CPU) — loss falls, maps at input size, state_dict round-trip,
resume equals an uninterrupted run, `load_run` rebuilds it without the weight file."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ad.data.mvtec import MVTecAD
from ad.engine.trainer import Trainer, seed_everything
from ad.errors import ConfigError
from ad.models.foundation._optim import StableAdamW, warm_cosine_lr, warm_cosine_scheduler
from ad.models.base import Budget
from ad.models.foundation.dinomaly import Dinomaly, LinearAttention, global_cosine_hard_mining, hard_mining_share
from tests.fakes import assert_resume_matches_uninterrupted, textures

SIZE = 42
SMALL = dict(backbone={"name": "vit_small_patch14_reg4_dinov2", "pretrained": False}, layers=[2, 3, 4, 5],
             groups=[[0, 1], [2, 3]], decoder_depth=4, warmup_steps=2)


# --- formulas -----------------------------------------------------------------------------------------------
def test_hard_mining_share_ramps_to_90_percent_over_1000_steps():
    for it in (0, 1, 250, 999, 1000, 1001, 10_000):
        assert hard_mining_share(it) == pytest.approx(min(0.9 * it / 1000, 0.9), abs=1e-12)
    assert hard_mining_share(5, final=0.5, ramp_steps=0) == 0.5


def _reference_warm_cosine(base, final, total, warmup):
    """The reference's WarmCosineScheduler array (utils.py), step t uses schedule[t]."""
    warm = np.linspace(0, base, warmup)
    iters = np.arange(total - warmup)
    return np.concatenate([warm, final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))])


def test_lr_schedule_follows_the_reference_warm_cosine():
    want = _reference_warm_cosine(2e-3, 2e-4, 50, 10)
    assert [warm_cosine_lr(t, 2e-3, 2e-4, 50, 10) for t in range(50)] == pytest.approx(list(want), rel=1e-12)
    assert warm_cosine_lr(50, 2e-3, 2e-4, 50, 10) == 2e-4 and warm_cosine_lr(0, 2e-3, 2e-4, 50, 10) == 0.0
    # as the trainer drives it: the lr of each optimisation step, the scheduler stepped after it
    p = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([p], lr=2e-3)
    sched = warm_cosine_scheduler(opt, 2e-3, 2e-4, 50, 10)
    seen = []
    for _ in range(50):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx(list(want), rel=1e-9)


def test_model_lays_the_schedule_over_the_budget_it_is_told(dinomaly_small):
    spec = dinomaly_small.configure_optimizers(Budget(max_epochs=None, max_steps=300, batch_size=16, steps_per_epoch=7))
    assert isinstance(spec.optimizer, StableAdamW) and spec.scheduler_interval == "step"
    g = spec.optimizer.param_groups[0]
    assert g["lr"] == 0.0 and g["weight_decay"] == 1e-4 and g["amsgrad"] and g["eps"] == 1e-8
    assert spec.optimizer.max_grad_norm == 0.1
    lrs = []
    for _ in range(300):
        lrs.append(spec.optimizer.param_groups[0]["lr"])
        spec.optimizer.step()  # no gradients: parameters stay, only the schedule advances
        spec.scheduler.step()
    assert lrs == pytest.approx(list(_reference_warm_cosine(2e-3, 2e-4, 300, 2)), rel=1e-9)


def _reference_stable_adamw(p, grads, lr, betas, eps, wd, clip):
    """float64 transcription of optimizers/StableAdamW.py of the reference (amsgrad=True)."""
    p = p.astype(np.float64).copy()
    m, v, vmax = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, 1):
        p *= 1 - lr * wd
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        vmax = np.maximum(vmax, v)
        denom = np.sqrt(vmax) / math.sqrt(1 - betas[1] ** t) + eps
        scale = max(1.0, np.sqrt(np.mean((g / denom) ** 2)) / clip)
        p -= lr / (1 - betas[0] ** t) / scale * m / denom
    return p


@pytest.mark.parametrize("clip", [1.0, 0.01])  # 0.01: the update-RMS clipping engages
def test_stable_adamw_matches_the_reference_update(clip):
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(20)
    grads = [rng.standard_normal(20) * s for s in (1.0, 0.1, 3.0, 0.5)]
    p = torch.nn.Parameter(torch.tensor(p0, dtype=torch.float64))
    opt = StableAdamW([p], lr=2e-3, betas=(0.9, 0.999), eps=1e-10, weight_decay=1e-4, amsgrad=True, clip_threshold=clip)
    for g in grads:
        p.grad = torch.tensor(g)
        opt.step()
    want = _reference_stable_adamw(p0, grads, 2e-3, (0.9, 0.999), 1e-10, 1e-4, clip)
    np.testing.assert_allclose(p.detach().numpy(), want, rtol=1e-12, atol=1e-15)


def test_gradient_norm_clip_inside_the_step_equals_clipping_before_it():
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(5, 4)), torch.nn.Parameter(torch.randn(4))]
    b = [torch.nn.Parameter(t.detach().clone()) for t in a]
    grads = [torch.randn(5, 4) * 10, torch.randn(4) * 10]
    for p, g in zip(a, grads):
        p.grad = g.clone()
    for p, g in zip(b, grads):
        p.grad = g.clone()
    StableAdamW(a, lr=1e-2, max_grad_norm=0.1).step()
    torch.nn.utils.clip_grad_norm_(b, 0.1)
    assert torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in b])) == pytest.approx(0.1, rel=1e-5)
    StableAdamW(b, lr=1e-2).step()
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_hard_mining_loss_value_and_gradient_against_numpy():
    torch.manual_seed(0)
    e = torch.randn(3, 8, 4, 5, dtype=torch.float64)
    d = (e + 0.8 * torch.randn_like(e)).requires_grad_(True)
    share, factor = 0.6, 0.1
    loss = global_cosine_hard_mining([e], [d], share, factor)
    loss.backward()
    hm_grad = d.grad.clone()
    en, dn = e.numpy(), d.detach().numpy()
    flat_cos = (en.reshape(3, -1) * dn.reshape(3, -1)).sum(1) / (
        np.linalg.norm(en.reshape(3, -1), axis=1) * np.linalg.norm(dn.reshape(3, -1), axis=1))
    assert float(loss.detach()) == pytest.approx(float(np.mean(1 - flat_cos)), rel=1e-12)
    # the plain loss's gradient, scaled by `factor` at the easiest points
    d.grad = None
    global_cosine_hard_mining([e], [d], 0.0, factor).backward()
    point = 1 - (en * dn).sum(1) / (np.linalg.norm(en, axis=1) * np.linalg.norm(dn, axis=1))  # [3,4,5]
    k = int(point.size * (1 - share))
    threshold = np.sort(point.ravel())[::-1][k - 1]
    weight = np.where(point < threshold, factor, 1.0)[:, None]
    assert (weight == factor).sum() == point.size - k
    np.testing.assert_allclose(hm_grad.numpy(), d.grad.numpy() * weight, rtol=1e-12, atol=1e-15)


def test_linear_attention_is_normalised_and_runs_in_float32_under_autocast():
    torch.manual_seed(0)
    attn = LinearAttention(16, 2)
    x = torch.randn(2, 7, 16)
    q, k, v = attn.qkv(x).reshape(2, 7, 3, 2, 8).permute(2, 0, 3, 1, 4)
    q, k = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
    weights = q @ k.transpose(-1, -2)  # [B, heads, N, N], no softmax
    want = attn.proj(((weights / weights.sum(-1, keepdim=True)) @ v).transpose(1, 2).reshape(2, 7, 16))
    assert torch.allclose(attn(x), want, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(x * 100)
    assert torch.isfinite(out).all()


# --- the model ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dinomaly_small():
    torch.manual_seed(0)
    return Dinomaly(**SMALL)


@pytest.fixture(scope="module")
def trained(dinomaly_small):
    """Train the small model 12 steps on textures: (model, losses, shares seen)."""
    import ad.models.foundation.dinomaly as dm

    model = dinomaly_small
    g = torch.Generator().manual_seed(0)
    x = textures(8, g, size=SIZE)
    spec = model.configure_optimizers(Budget(max_epochs=None, max_steps=12, batch_size=4, steps_per_epoch=2))
    shares, real = [], dm.global_cosine_hard_mining
    dm.global_cosine_hard_mining = lambda e, d, s, f: shares.append(s) or real(e, d, s, f)
    try:
        model.train()
        losses = []
        for step in range(12):
            loss = model.training_step({"image": x[(step % 2) * 4:(step % 2) * 4 + 4]})
            spec.optimizer.zero_grad()
            loss.backward()
            spec.optimizer.step()
            spec.scheduler.step()
            losses.append(float(loss.detach()))
    finally:
        dm.global_cosine_hard_mining = real
    model.eval()
    return model, losses, shares


def test_defaults_follow_the_reference(dinomaly_small):
    m = dinomaly_small
    assert m.default_batch_size == 16 and m.default_max_steps == 5000
    assert isinstance(m.bottleneck.drop, torch.nn.Dropout) and m.bottleneck.drop.p == 0.2
    assert m.encoder.frozen and not any(p.requires_grad for p in m.encoder.parameters())
    from ad.models.foundation.dinomaly import default_layers

    assert default_layers(12) == [2, 3, 4, 5, 6, 7, 8, 9] and default_layers(24) == [4, 6, 8, 10, 12, 14, 16, 18]
    unified = Dinomaly(**{**SMALL, "setting": "unified"})
    assert unified.default_max_steps == 10000 and unified.eps == 1e-10 and m.eps == 1e-8


def test_setting_is_read_from_the_config_when_present():
    from ad.config import compose

    from omegaconf import OmegaConf

    base = compose(["model=dinomaly"])
    assert base.model.setting == "single"
    # until the `setting` group exists the key is absent (oc.select's default); afterwards it is overridden
    key = "setting.name=unified" if OmegaConf.select(base, "setting.name") is not None else "+setting.name=unified"
    assert compose(["model=dinomaly", key]).model.setting == "unified"
    cfg = compose(["model=dinomaly", "backbone=vit_small_patch14_reg4_dinov2"])
    assert cfg.model.backbone.name == "vit_small_patch14_reg4_dinov2"  # the command line beats the model's default
    assert compose(["model=dinomaly"]).model.backbone.name == "vit_base_patch14_reg4_dinov2"


def test_loss_decreases_and_hard_mining_share_follows_the_step_count(trained):
    model, losses, shares = trained
    assert np.isfinite(losses).all() and np.mean(losses[-3:]) < 0.7 * np.mean(losses[:2]), losses
    assert int(model.steps_done) == 12
    assert shares == pytest.approx([hard_mining_share(t) for t in range(12)])


def test_maps_are_at_input_size_and_score_is_the_top_percent_mean(trained):
    model, _, _ = trained
    for size in [(SIZE, SIZE), (SIZE, 56)]:
        x = torch.rand(3, 3, *size, generator=torch.Generator().manual_seed(1))
        out = model.predict(x)
        assert out.maps.shape == (3, *size) and out.scores.shape == (3,)
        flat = np.sort(out.maps.numpy().reshape(3, -1), axis=1)[:, ::-1]
        k = max(1, int(flat.shape[1] * 0.01))
        np.testing.assert_allclose(out.scores.numpy(), flat[:, :k].mean(1), rtol=1e-5)
        assert torch.isfinite(out.maps).all() and (out.maps >= 0).all()


def test_state_dict_round_trip_gives_identical_predictions(trained):
    model, _, _ = trained
    torch.manual_seed(123)
    fresh = Dinomaly(**SMALL)
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    assert int(fresh.steps_done) == 12
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    a, b = model.predict(x), fresh.predict(x)
    assert torch.equal(a.scores, b.scores) and torch.equal(a.maps, b.maps)


def test_load_run_rebuilds_dinomaly_without_the_backbone_file(trained, tmp_path):
    from ad.rundir.modelfile import save_model_file
    from ad.predict import load_run
    from tests.test_run import _ok_results

    model, _, _ = trained
    cfg = {"_target_": "ad.models.foundation.dinomaly.Dinomaly", **{k: v for k, v in SMALL.items() if k != "backbone"},
           "backbone": {"_target_": "ad.backbones.BackboneConfig", "name": "vit_small_patch14_reg4_dinov2",
                        "pretrained": True, "weights_dir": str(tmp_path / "no_backbones")}}
    save_model_file(tmp_path / "model.pt", model, cfg, {"model_name": "dinomaly"})
    _ok_results(tmp_path)  # load_run scores only runs whose results.json says ok
    loaded, _ = load_run(tmp_path)
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    assert torch.equal(loaded.predict(x).maps, model.predict(x).maps)


def test_cnn_backbone_and_bad_groups_are_config_errors():
    with pytest.raises(ConfigError, match="ViT backbone"):
        Dinomaly(backbone={"name": "resnet18", "pretrained": False})
    with pytest.raises(ConfigError, match="model.groups"):
        Dinomaly(**{**SMALL, "groups": [[0, 1], [2, 4]]})


def _fit(root, run_dir, seed, callbacks=()):
    seed_everything(seed)
    model = Dinomaly(**SMALL)
    data = MVTecAD(root=str(root), category="syn_tiles", image_size=SIZE, val_fraction=0.2, seed=0)
    trainer = Trainer(max_epochs=2, batch_size=4, eval_batch_size=8, progress_bar=False, seed=0,
                      callbacks=callbacks, early_stopping={"enabled": False})
    return model, data, trainer, trainer.fit(model, data, run_dir=run_dir)


def test_trainer_checkpoint_resume_matches_uninterrupted_run(synthetic_root, tmp_path):
    assert_resume_matches_uninterrupted(lambda run_dir, seed, cb: _fit(synthetic_root, run_dir, seed, cb), tmp_path, SIZE,
                                        val_loss=False)  # fixed schedule, no early stopping (as the reference)


def test_step_time_benchmark_script_runs_on_cpu(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "benchmark_dinomaly.py"
    spec = importlib.util.spec_from_file_location("benchmark_dinomaly", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.main(["--device", "cpu", "--backbone", "vit_small_patch14_reg4_dinov2", "--image-size", "28",
                      "--batch-size", "2", "--steps", "1", "--warmup", "0", "--json", str(tmp_path / "r.json")])
    assert res["timed_steps"] == 1 and res["step_s_median"] > 0 and not res["amp"] and res["peak_cuda_mb"] is None
    assert (tmp_path / "r.json").is_file()


def test_unified_setting_run_end_to_end(synthetic_root, tmp_path):
    """`setting=unified model=dinomaly`: one model on the union of the synthetic categories, its default budget
    the unified one (10 000 steps; capped here by trainer=smoke), evaluated per category."""
    from hydra.utils import instantiate

    from ad.config import compose
    from tests.test_run import FAST, run_in_process

    small = ["backbone=vit_small_patch14_reg4_dinov2", "model.layers=[2,3,4,5]", "model.groups=[[0,1],[2,3]]",
             "model.decoder_depth=4", "backbone.pretrained=false"]
    cfg = compose(["setting=unified", "model=dinomaly", *small])
    assert cfg.model.setting == "unified" and instantiate(cfg.model).default_max_steps == 10000
    res, run_dir = run_in_process(tmp_path, ["setting=unified", "dataset=synthetic", "model=dinomaly",
                                             f"dataset.root={synthetic_root}", *FAST, *small,
                                             f"dataset.image_size={SIZE}"])
    assert res.status == "ok", res.error
    assert res.run.setting == "unified" and len(res.run.categories) == 3 and res.training.steps == 2
    assert (run_dir / "model.pt").is_file()
