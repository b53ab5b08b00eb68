"""ViT (DINOv2) backbones: patch grids through the FeatureExtractor interface, the patch-size check, Meta's
checkpoint layout converted on load, offline file lookup, and PatchCore with a ViT backbone end to end."""
from __future__ import annotations

from collections import OrderedDict

import pytest
import timm
import torch

from ad.backbones import BackboneConfig, FeatureExtractor
from ad.backbones._vit import meta_dinov2_file, meta_dinov2_to_timm
from ad.errors import ConfigError, WeightsError

REG = "vit_small_patch14_reg4_dinov2"
PLAIN = "vit_small_patch14_dinov2"


@pytest.fixture(scope="module")
def vit_s():
    torch.manual_seed(0)
    return FeatureExtractor(BackboneConfig(name=REG, pretrained=False), layers=(0, 2, -10))


@pytest.mark.parametrize("size", [(28, 28), (70, 42), (98, 112)])
def test_feature_grids_have_patch_grid_shapes(vit_s, size):
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        feats = vit_s(x)
        tokens, grid = vit_s.tokens(x)
    h, w = size[0] // 14, size[1] // 14
    assert vit_s.channels == [384] * 3 and vit_s.reductions == [14] * 3 and vit_s.layers == (0, 2, -10)
    assert [tuple(f.shape) for f in feats] == [(2, 384, h, w)] * 3 and grid == (h, w)
    # 1 class + 4 register tokens come first and are dropped from the grid, row-major patches follow
    assert all(t.shape == (2, 5 + h * w, 384) for t in tokens)
    for f, t in zip(feats, tokens):
        assert torch.equal(f.permute(0, 2, 3, 1).reshape(2, h * w, 384), t[:, 5:])
    assert len(vit_s.model.blocks) == 3  # blocks after the deepest requested one (2 = -10 of 12) are dropped


@pytest.mark.parametrize("name, prefix", [(REG, 5), (PLAIN, 1)])
def test_tokens_equal_timms_own_forward_at_the_native_grid(name, prefix):
    """At 518 px (DINOv2's 37×37 grid) the positions are used as stored: the blocks must give timm's outputs."""
    torch.manual_seed(1)
    fe = FeatureExtractor(BackboneConfig(name=name, pretrained=False), layers=(0, 1))
    full = timm.create_model(name, pretrained=False, num_classes=0).eval()
    missing = full.load_state_dict(fe.model.state_dict(), strict=False).missing_keys
    assert all(not k.startswith(("patch_embed", "cls_token", "reg_token", "pos_embed", "blocks.0.", "blocks.1."))
               for k in missing)
    x = torch.rand(1, 3, 518, 518)
    with torch.no_grad():
        want = full.forward_intermediates(fe.normalize(x), indices=[0, 1], norm=False, intermediates_only=True)
        got = fe(x)
    assert fe.model.num_prefix_tokens == prefix
    # Same blocks, same positions: equal up to float reassociation (timm's attention kernel may sum in another
    # order, ~2e-6 here); a wrong position or prefix token would differ by orders of magnitude more.
    for a, b in zip(want, got):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_positions_are_resampled_like_meta_dinov2(vit_s):
    """Other grids: bicubic with Meta's 0.1 offset and no antialias, so an upsampled grid keeps the corner value
    pattern of plain bicubic interpolation (antialiasing or timm's size-based resize would differ)."""
    pos = vit_s.model.pos_embed  # [1, 37·37, C] (no class position: registers model)
    got = vit_s.model.position_embedding(5, 3)
    grid = pos.reshape(1, 37, 37, -1).permute(0, 3, 1, 2)
    want = torch.nn.functional.interpolate(grid, scale_factor=(5.1 / 37, 3.1 / 37), mode="bicubic", antialias=False)
    assert got.shape == (1, 15, 384)
    assert torch.equal(got, want.permute(0, 2, 3, 1).reshape(1, 15, -1))
    assert vit_s.model.position_embedding(37, 37) is pos


def test_final_norm_applies_the_last_layernorm():
    torch.manual_seed(0)
    raw = FeatureExtractor(BackboneConfig(name=REG, pretrained=False), layers=(1,))
    normed = FeatureExtractor(BackboneConfig(name=REG, pretrained=False), layers=(1,), final_norm=True)
    normed.model.load_state_dict(raw.model.state_dict())
    with torch.no_grad():
        normed.model.norm.weight.uniform_(0.5, 2.0)
        x = torch.rand(1, 3, 42, 42)
        a, b = raw(x)[0], normed(x)[0]
    want = torch.nn.functional.layer_norm(a.permute(0, 2, 3, 1), (384,), normed.model.norm.weight, normed.model.norm.bias, 1e-6)
    assert torch.allclose(b.permute(0, 2, 3, 1), want, atol=1e-5)
    with pytest.raises(ConfigError, match="ViT backbones only"):
        FeatureExtractor(BackboneConfig(name="resnet18", pretrained=False), layers=(1,), final_norm=True)


def test_input_not_a_multiple_of_the_patch_size_is_a_one_line_config_error(vit_s):
    with pytest.raises(ConfigError) as e:
        vit_s(torch.rand(1, 3, 64, 64))
    msg = str(e.value)
    assert "\n" not in msg and "dataset.image_size" in msg and "56 or 70" in msg and "14" in msg


def test_bad_block_index_and_cnn_tokens_are_config_errors():
    with pytest.raises(ConfigError, match="blocks 0..11"):
        FeatureExtractor(BackboneConfig(name=REG, pretrained=False), layers=(12,))
    cnn = FeatureExtractor(BackboneConfig(name="resnet18", pretrained=False), layers=(1,))
    with pytest.raises(ConfigError, match="ViT backbone"):
        cnn.tokens(torch.rand(1, 3, 64, 64))


def test_batchnorm_folding_finds_nothing_on_a_vit(vit_s):
    assert vit_s.folded_batchnorms == 0
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in vit_s.modules())


# --- weights -------------------------------------------------------------------------------------------------
def _random_timm_state(name: str) -> "OrderedDict[str, torch.Tensor]":
    torch.manual_seed(7)
    net = timm.create_model(name, pretrained=False, num_classes=0)
    return OrderedDict((k, torch.randn_like(v)) for k, v in net.state_dict().items())


def _to_meta_layout(timm_state) -> "OrderedDict[str, torch.Tensor]":
    """Meta's DINOv2 release layout, built from timm's by hand: the class position lives in pos_embed, the
    registers are `register_tokens`, and there is a mask token."""
    meta = OrderedDict()
    registers = "reg_token" in timm_state
    cls_pos = torch.randn(1, 1, timm_state["cls_token"].shape[-1])
    for k, v in timm_state.items():
        if k == "reg_token":
            meta["register_tokens"] = v.clone()
        elif k == "pos_embed" and registers:
            meta["pos_embed"] = torch.cat([cls_pos, v], dim=1)
        else:
            meta[k] = v.clone()
    meta["mask_token"] = torch.randn(1, timm_state["cls_token"].shape[-1])
    return meta


@pytest.mark.parametrize("name", [REG, PLAIN])
def test_meta_checkpoint_is_found_and_every_tensor_lands_exactly(tmp_path, name):
    timm_state = _random_timm_state(name)
    meta = _to_meta_layout(timm_state)
    file = meta_dinov2_file(name)
    assert file == ("dinov2_vits14_reg4_pretrain.pth" if name == REG else "dinov2_vits14_pretrain.pth")
    torch.save(meta, tmp_path / file)
    fe = FeatureExtractor(BackboneConfig(name=name, weights_dir=str(tmp_path)), layers=(1, 3))
    assert file in fe.weights_source
    loaded = fe.model.state_dict()
    assert "blocks.3.mlp.fc2.weight" in loaded and "blocks.4.norm1.weight" not in loaded
    for k, v in loaded.items():
        if k == "cls_token" and name == REG:  # timm's no_embed_class: the class position is folded in
            want = meta["cls_token"] + meta["pos_embed"][:, :1]
        elif k == "pos_embed" and name == REG:
            want = meta["pos_embed"][:, 1:]
        elif k == "reg_token":
            want = meta["register_tokens"]
        else:
            want = meta[k]
        assert torch.equal(v, want), k
    # the converted state is the timm state we started from (up to the cls fold's rounding)
    conv = meta_dinov2_to_timm(meta)
    assert set(conv) == set(timm_state)
    for k in timm_state:
        assert torch.allclose(conv[k], timm_state[k] + (meta["pos_embed"][:, :1] if k == "cls_token" and name == REG else 0)), k


@pytest.mark.parametrize("name", [f"vit_{s}_patch14_{r}dinov2" for s in ("small", "base", "large") for r in ("reg4_", "")])
def test_meta_file_names_match_timms_source_urls(name):
    from ad.backbones._vit import meta_dinov2_url

    url = timm.models.get_pretrained_cfg(name).url
    assert meta_dinov2_url(name) == url and url.endswith("/" + meta_dinov2_file(name))


def test_timm_named_safetensors_load_by_name(tmp_path):
    from safetensors.torch import save_file

    state = _random_timm_state(REG)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / f"{REG}.safetensors"))
    fe = FeatureExtractor(BackboneConfig(name=REG, weights_dir=str(tmp_path)), layers=(2,))
    assert "weights_dir" in fe.weights_source
    for k, v in fe.model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_missing_dinov2_weights_name_both_files_and_where_to_get_them(tmp_path):
    with pytest.raises(WeightsError) as e:
        FeatureExtractor(BackboneConfig(name="vit_base_patch14_reg4_dinov2", weights_dir=str(tmp_path)), layers=(2,))
    msg = str(e.value)
    assert "\n" not in msg
    assert str(tmp_path / "vit_base_patch14_reg4_dinov2.safetensors") in msg
    assert str(tmp_path / "dinov2_vitb14_reg4_pretrain.pth") in msg
    assert "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth" in msg
    assert "save_backbones.py --download vit_base_patch14_reg4_dinov2" in msg and "backbone.pretrained=false" in msg


def test_save_backbones_knows_the_dinov2_sources(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "save_backbones.py"
    spec = importlib.util.spec_from_file_location("save_backbones", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.default_source(REG) == "timm" and mod.default_source("resnet18") == "torchvision"
    # offline, nothing to export for DINOv2: a clear message, no download
    assert mod.main([REG, "--out", str(tmp_path)]) == 1
    assert mod.main([REG, "--source", "meta", "--out", str(tmp_path)]) == 1  # meta needs --download
    assert not any(tmp_path.iterdir())


# --- end to end ----------------------------------------------------------------------------------------------
def test_patchcore_with_a_vit_backbone_runs_end_to_end(synthetic_root, tmp_path):
    from tests.test_run import run_in_process

    from tests.test_run import FAST

    res, run_dir = run_in_process(tmp_path, [
        "model=patchcore", "category=syn_disc", f"dataset.root={synthetic_root}", *FAST,
        f"backbone={REG}", "backbone.pretrained=false", "dataset.image_size=70",
    ])
    assert res.status == "ok", res.error
    assert res.run.backbone == REG and 0.0 <= res.image.auroc <= 1.0
    assert (run_dir / "model.pt").is_file()


@pytest.mark.parametrize("name", ["padim", "spade", "dfm", "stfpm", "fastflow"])
def test_other_backbone_models_build_fit_and_predict_on_a_vit(name):
    """The patch grids plug into every single-scale-capable model (channels/reductions from feature_info)."""
    from ad.models import MODELS
    from ad.models.base import Budget

    torch.manual_seed(0)
    kwargs = {"backbone": BackboneConfig(name=REG, pretrained=False)}
    if name != "dfm":
        kwargs["layers"] = (3, 5)
    if name == "padim":
        kwargs["n_features"] = 50
    if name == "spade":
        kwargs["global_layer"] = 6
    if name == "dfm":
        kwargs["pooling_kernel_size"] = 1  # a 3x3 grid at 42 px
    model = MODELS.get(name)(**kwargs)
    x = torch.rand(6, 3, 42, 42, generator=torch.Generator().manual_seed(0))
    spec = model.configure_optimizers(Budget(max_epochs=1, max_steps=1, batch_size=6, steps_per_epoch=1))
    model.on_fit_start([{"image": x}])
    if spec is None:
        with torch.no_grad():
            model.training_step({"image": x})
    else:
        model.train()
        model.training_step({"image": x}).backward()
        spec.optimizer.step()
    model.eval()
    model.on_fit_end([{"image": x[:2]}])
    out = model.predict(x[:2])
    assert out.maps.shape == (2, 42, 42) and torch.isfinite(out.scores).all()


def test_reverse_distillation_explains_that_it_needs_a_pyramid():
    from ad.models.distillation.reverse_distillation import ReverseDistillation

    with pytest.raises(ConfigError, match="power of two"):
        ReverseDistillation(backbone=BackboneConfig(name=REG, pretrained=False), layers=(3, 5, 7))
