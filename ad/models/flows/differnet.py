"""DifferNet: "Same Same But DifferNet: Semi-Supervised Defect Detection with Normalizing Flows" (Rudolph et al.,
WACV 2021).

A frozen pretrained CNN describes an image by its globally average-pooled deepest features at three image
scales (full, 1/2, 1/4), concatenated into one vector y. A normalizing flow of fully connected affine coupling
blocks maps y to z ~ N(0, I); training maximises the likelihood of normal images' vectors, each image seen
under random rotations. Test time:
- image score = mean over `test_transforms` fixed rotations (evenly over 360°) of −log p_Z(z)/D, up to its
  constant: ½‖z‖²/D (the paper's τ(x) = E_T[−log p_Z(f(T(x)))]; the reference code scores mean z² alike);
- map = the paper's gradient localisation: the training loss (½‖z‖² − log|det J|)/D of each rotated copy is
  back-propagated to that copy's pixels, the gradient rotated back, blurred per channel (σ = `grad_sigma`),
  |·| averaged over channels and rotations, and squared (reference code: σ 3, squared mean magnitude).

Deviations from the paper, and why:
- Backbone: our backbone group (default EfficientNet-Lite0, offline ImageNet weights) instead of AlexNet, its
  deepest stage (layer 4, stride 32) as the counterpart of AlexNet's last conv layer (320 channels each scale,
  D = 960 instead of 768). Input at the dataset's size (default 256 px) instead of 448 px.
- Rotations are applied to the [0,1] images in the model (bilinear, zero fill outside), so the trainer's data
  pipeline stays model-agnostic; the paper rotates the PIL image with zero fill before normalising: the same.
- Coupling subnets 512 wide instead of the paper's 2048 (3 hidden FC layers as the paper): at 2048 the flow
  has ~180 M parameters, 0.7 GB, and every training checkpoint with its Adam state 2.2 GB (a smoke run peaked
  at 5.9 GB RSS); at 512 it has 20 M. `model.subnet_hidden=2048` restores the paper's width.
- Coupling blocks: GLOW-style (both halves transformed per block, soft-clamped log-scales α = 3, fixed
  random permutations) as the paper, with two additions from our flow module: a
  learned global affine per block and zero-initialised subnet outputs (each block starts as the identity).
  Soft clamp c·tanh(s/c) instead of c·(2/π)·atan(s/c): same bound and slope at 0.
- Scales below 1/1 are bilinear resizes (the reference uses nearest-neighbour): smoother gradient maps.
Schedule (paper/reference): 24 meta-epochs × 8 sub-epochs = 192 epochs, 24 images × 4 random rotations per
batch, Adam(lr 2e-4, betas (0.8, 0.8), eps 1e-4, weight decay 1e-5), constant LR; 64 test rotations.
The paper picks nothing on the test set here, and neither do we: the final weights are scored.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Sequence, Tuple

import torch
import torch.nn.functional as F

from ad.backbones import BackboneConfig, FeatureExtractor, as_backbone_config
from ad.errors import ConfigError
from ad.models.flows._flows import VectorFlow
from ad.models._maps import gaussian_blur2d
from ad.models.base import AnomalyModel, Budget, OptimizerSpec, Prediction


_PIXELS_PER_PASS = 16 * 256 * 256


def rotate_images(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each of [N,C,H,W] by its own angle (degrees, counter-clockwise) about the centre; bilinear,
    zeros outside. Differentiable in `images`; `rotate_images(rotate_images(x, a), -a)` ≈ x inside the disc."""
    n, _, h, w = images.shape
    rad = degrees.to(images.device, images.dtype) * (math.pi / 180.0)
    cos, sin = torch.cos(rad), torch.sin(rad)
    # the grid maps output to input coordinates in [-1, 1] per axis: correct the aspect ratio of non-square maps
    theta = torch.zeros(n, 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0], theta[:, 0, 1] = cos, sin * (h / w)
    theta[:, 1, 0], theta[:, 1, 1] = -sin * (w / h), cos
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def even_angles(n: int, device=None) -> torch.Tensor:
    """n rotations evenly spread over 360° (0, 360/n, ...): the paper's fixed test-time transforms."""
    return torch.arange(int(n), dtype=torch.float32, device=device) * (360.0 / int(n))


class DifferNet(AnomalyModel):
    export_unsupported = ("its anomaly map is the gradient of the flow's likelihood with respect to the input "
                          "pixels (torch.autograd inside predict), and ONNX/OpenVINO inference graphs have no autograd")
    default_max_epochs = 192  # 24 meta-epochs × 8 sub-epochs
    default_batch_size = 24

    def __init__(
        self,
        backbone: "BackboneConfig | str | dict" = "tf_efficientnet_lite0",
        layers: Sequence[int] = (4,),
        n_scales: int = 3,
        flow_steps: int = 8,
        clamp: float = 3.0,
        subnet_hidden: int = 512,
        subnet_layers: int = 3,
        train_transforms: int = 4,
        test_transforms: int = 64,
        grad_sigma: float = 3.0,
        lr: float = 2e-4,
        betas: Sequence[float] = (0.8, 0.8),
        eps: float = 1e-4,
        weight_decay: float = 1e-5,
    ) -> None:
        super().__init__()
        for key, value in (("n_scales", n_scales), ("flow_steps", flow_steps), ("train_transforms", train_transforms),
                           ("test_transforms", test_transforms), ("subnet_hidden", subnet_hidden)):
            if int(value) < 1:
                raise ConfigError(f"model.{key}={value} must be >= 1")
        cfg = as_backbone_config(backbone)
        self.backbone_name = cfg.name
        self.encoder = FeatureExtractor(cfg, layers, frozen=True)
        self.n_scales = int(n_scales)
        self.dims = self.n_scales * sum(self.encoder.channels)
        self.flow = VectorFlow(self.dims, int(flow_steps), hidden=int(subnet_hidden), hidden_layers=int(subnet_layers),
                               clamp=clamp, both_halves=True, permutation="hard")
        self.train_transforms, self.test_transforms = int(train_transforms), int(test_transforms)
        self.grad_sigma = float(grad_sigma)
        self.lr, self.betas, self.eps, self.weight_decay = float(lr), tuple(float(b) for b in betas), float(eps), float(weight_decay)

    def configure_optimizers(self, budget: Budget) -> OptimizerSpec:
        opt = torch.optim.Adam(self.flow.parameters(), lr=self.lr, betas=self.betas, eps=self.eps,
                               weight_decay=self.weight_decay)
        return OptimizerSpec(optimizer=opt)  # constant LR (paper)

    # --- features and likelihood ------------------------------------------------------------------------------
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """[N, D] image descriptors: average-pooled backbone features at `n_scales` image scales, concatenated.
        Runs the backbone module directly (not `FeatureExtractor.forward`, which disables autograd for a frozen
        backbone) so that the gradient maps can flow back to the pixels; the weights stay frozen."""
        h, w = images.shape[-2:]
        pooled = []
        for s in range(self.n_scales):
            x = images if s == 0 else F.interpolate(images, size=(max(1, h >> s), max(1, w >> s)), mode="bilinear",
                                                    align_corners=False)
            x = self.encoder.normalize(x).contiguous(memory_format=torch.channels_last)
            pooled += [f.mean(dim=(2, 3)) for f in self.encoder.model(x)]
        return torch.cat(pooled, dim=1)

    def _latent(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(½‖z‖²/D, training loss (½‖z‖² − log|det J|)/D) per image."""
        z, log_det = self.flow(self.embed(images))
        half_sq = 0.5 * z.pow(2).sum(1)
        return half_sq / self.dims, (half_sq - log_det) / self.dims

    @staticmethod
    def _rotated(images: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
        """Image i under angles [T] (shared) or angles[i] ([B,T]): [B·T, C, H, W], image-major."""
        angles = angles.expand(len(images), -1) if angles.dim() == 1 else angles
        return rotate_images(images.repeat_interleave(angles.shape[1], dim=0), angles.reshape(-1))

    # --- training -------------------------------------------------------------------------------------------
    def training_step(self, batch: Dict[str, Any]) -> torch.Tensor:
        images = batch["image"]
        angles = torch.rand(len(images), self.train_transforms, device=images.device) * 360.0 - 180.0
        return self._latent(self._rotated(images, angles))[1].mean()

    @torch.no_grad()
    def validation_step(self, batch: Dict[str, Any]) -> torch.Tensor:
        images = batch["image"]
        return self._latent(self._rotated(images, even_angles(self.train_transforms, images.device)))[1].mean()

    # --- inference ------------------------------------------------------------------------------------------
    def predict(self, images: torch.Tensor) -> Prediction:
        b = len(images)
        angles = even_angles(self.test_transforms, images.device)
        # rotated copies per pass: the backward keeps every backbone activation, ~50 MB per 256² image with
        # Lite0, so a pass holds at most ~16 such images (64 at 256 px peaked at 5.6 GB RSS)
        chunk = max(1, _PIXELS_PER_PASS // (b * images.shape[-2] * images.shape[-1]))
        scores = images.new_zeros(b)
        grad_maps = images.new_zeros(b, *images.shape[-2:])
        with torch.enable_grad():  # the trainer predicts under no_grad; the maps need d loss / d pixels
            for start in range(0, len(angles), chunk):
                a = angles[start : start + chunk]
                rotated = self._rotated(images.detach(), a).requires_grad_(True)
                latent, loss = self._latent(rotated)
                (grad,) = torch.autograd.grad(loss.sum(), rotated)
                back = rotate_images(grad, -a.repeat(b))
                g = gaussian_blur2d(back, self.grad_sigma).abs().mean(dim=1)  # [B·t, H, W]
                grad_maps += g.view(b, len(a), *g.shape[-2:]).sum(1).detach()
                scores += latent.view(b, len(a)).sum(1).detach()
        maps = (grad_maps / len(angles)).pow(2)
        return Prediction(scores=scores / len(angles), maps=maps)
