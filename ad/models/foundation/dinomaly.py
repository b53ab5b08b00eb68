"""Dinomaly (Guo et al., "Dinomaly: The Less Is More Philosophy in Multi-Class Unsupervised Anomaly Detection",
CVPR 2025; reference code github.com/guojiajeremy/Dinomaly, `ViTill` in models/uad.py).

A frozen DINOv2 ViT encoder; the tokens of its middle blocks (ViT-S/B: blocks 2–9, ViT-L: 4, 6, …, 18) are
averaged and passed through a *noisy bottleneck* (an MLP with dropout on its input, hidden and output
activations, p = 0.2) into 8 decoder blocks with *linear attention* (kernel elu(x)+1, no softmax, so it cannot
focus on the identical token and copy it). The reconstruction is *loose*: encoder and decoder blocks are each
averaged over two groups ([2..5] vs the last four decoder blocks, [6..9] vs the first four), and the loss is a
*global* cosine distance per image and group (the whole flattened feature map is one vector), with hard
mining: the gradient of the best-reconstructed points (all but the `1 − share` hardest by point-wise cosine
distance) is multiplied by 0.1, the share ramping linearly from 0 to 90 % over the first 1000 steps.
Anomaly map = mean over groups of the point-wise 1 − cos(encoder, decoder), upsampled to the input, Gaussian
(σ = 4, 5×5 kernel as in the reference); image score = mean of the top 1 % of map pixels.

Training: StableAdamW (AMSGrad, β = (0.9, 0.999), ε = 1e-8 single-class / 1e-10 unified as in the reference's
scripts, wd 1e-4, update-RMS clipping 1), lr 2e-3 with
100 linear warm-up steps from 0 then a cosine to 2e-4 at the end of the run, gradient-norm clip 0.1,
batch 16, 5000 steps single-class / 10 000 unified. Paper preprocessing: resize 448 → centre crop 392
(`dataset.image_size=448 dataset.center_crop=392`; any multiple of 14 works).

Checked against the reference code; where this implementation differs and why:
- Gradient clipping (`clip_grad_norm_(max_norm=0.1)` before `optimizer.step()` in the reference) runs inside
  `StableAdamW.step` (`grad_clip`): the trainer's loop is generic and a model cannot set
  `trainer.gradient_clip_val`. Same arithmetic; with AMP it sees unscaled gradients.
- The reference's hard mining registers a backward hook that multiplies the decoder features' gradient;
  here the same per-point factor is applied with a straight-through identity (value unchanged, gradient
  scaled). The hard-mining step counter is a buffer (`steps_done`), so it checkpoints and resumes.
- Linear attention runs in float32 even under AMP (the reference trains in float32; its normaliser
  Σₛ q·kₛ over ~800 tokens can overflow float16).
- Maps are upsampled with `align_corners=False` (each token covers a 14×14 patch centred at (i+½)·14;
  the reference's `align_corners=True` shifts them up to 7 px towards the corners) and blurred with mirrored
  borders (the reference's zero-padded 5×5 convolution darkens the outer 2 px). The reference evaluates
  after resizing maps to 256 px; here map and top-1 % score are at the input resolution (392 px).
- No validation loss: the reference trains a fixed number of steps on a schedule that ends with the run;
  early stopping would cut the cosine schedule short.
- Positional embeddings are resampled like the reference's DINOv2 code (bicubic, offset 0.1, no antialias);
  see `ad.backbones._vit`.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

from ad.backbones import BackboneConfig, FeatureExtractor, as_backbone_config, is_vit, vit_depth
from ad.errors import ConfigError
from ad.models._maps import cosine_distance_map, gaussian_blur2d, top_fraction_score, upsample_to
from ad.models.foundation._optim import StableAdamW, warm_cosine_scheduler
from ad.models.base import AnomalyModel, Budget, OptimizerSpec, Prediction

SETTINGS = ("single", "unified")


class LinearAttention(nn.Module):
    """Multi-head linear attention (Katharopoulos et al. 2020) with kernel φ(x) = elu(x) + 1:
    out_s = Σ_t φ(q_s)·φ(k_t) v_t / Σ_t φ(q_s)·φ(k_t), in O(N·d²) and without a softmax's focus on one token."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"decoder width {dim} is not divisible by its {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        with torch.autocast(x.device.type, enabled=False):
            q, k, v = (t.float() for t in qkv)  # [B, heads, N, d]
            q, k = F.elu(q) + 1.0, F.elu(k) + 1.0
            kv = torch.einsum("bhsd,bhse->bhde", k, v)
            z = 1.0 / torch.einsum("bhsd,bhd->bhs", q, k.sum(dim=-2))
            out = torch.einsum("bhde,bhsd,bhs->bhse", kv, q, z)
        out = out.to(x.dtype).transpose(1, 2).reshape(b, n, c)
        return self.proj(out)


class DecoderBlock(nn.Module):
    """Pre-norm transformer block with linear attention (reference: `Block(attn=LinearAttention2)`,
    LayerNorm ε = 1e-8, qkv bias, MLP ratio 4, GELU, no layer scale, no drop-path)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-8)
        self.attn = LinearAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-8)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class NoisyBottleneck(nn.Module):
    """MLP dim → 4·dim → dim with the *same* dropout on its input, hidden and output activations (reference
    `bMlp(drop=0.2)`): the noise keeps the decoder from learning an identity mapping."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(self.drop(x))))))


def hard_mining_share(step: int, final: float = 0.9, ramp_steps: int = 1000) -> float:
    """Share of (easiest) points whose gradient is down-weighted at training step `step` (0-based):
    min(final · step / ramp_steps, final) (reference: `p = min(p_final * it / 1000, p_final)`)."""
    if ramp_steps <= 0:
        return float(final)
    return float(min(final * step / ramp_steps, final))


def _scale_gradient(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x in the forward pass (exactly), gradient multiplied by `weight` (broadcast) in the backward pass."""
    x0 = x.detach()
    return x0 + (x - x0) * weight


def global_cosine_hard_mining(encoder: Sequence[torch.Tensor], decoder: Sequence[torch.Tensor], share: float,
                              factor: float = 0.1) -> torch.Tensor:
    """Reference `global_cosine_hm_percent`: mean over groups of the batch-mean global cosine distance
    1 − cos(flatten(e), flatten(d)) per image; the decoder gradient of points whose point-wise distance is
    below the k-th largest (k = ⌊N·(1 − share)⌋ over all N points of the batch) is multiplied by `factor`.
    Encoder features are targets (no gradient)."""
    total = 0.0
    for e, d in zip(encoder, decoder):
        e = e.detach()
        with torch.no_grad():
            point = cosine_distance_map(e, d)  # [B, h, w]
            k = max(1, int(point.numel() * (1 - share)))
            threshold = point.flatten().topk(k).values[-1]
            weight = torch.full_like(point, factor).masked_fill_(point >= threshold, 1.0).unsqueeze(1).to(d.dtype)
        d = _scale_gradient(d, weight)
        total = total + (1.0 - F.cosine_similarity(e.flatten(1), d.flatten(1), dim=1)).mean()
    return total / len(encoder)


def default_layers(depth: int) -> List[int]:
    """The reference's target blocks: 2..9 of 12 (ViT-S/B), every second of 4..18 for 24 blocks (ViT-L)."""
    if depth == 12:
        return list(range(2, 10))
    if depth == 24:
        return list(range(4, 19, 2))
    raise ConfigError(f"no default Dinomaly layers for a {depth}-block ViT; set model.layers (8 block indices)")


def _init_trainable(module: nn.Module) -> None:
    # reference: trunc_normal_(std=0.01, a=-0.03, b=0.03) on Linear weights, zero biases, LayerNorm (1, 0)
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.01, a=-0.03, b=0.03)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class Dinomaly(AnomalyModel):
    default_batch_size = 16
    default_max_steps = 5000  # replaced per instance by steps_single / steps_unified
    default_max_epochs = 1

    # ~60 lines: explicit keyword arguments for Hydra and their one-line checks; the modules are built by helpers.
    def __init__(
        self,
        backbone: "BackboneConfig | str | dict" = "vit_base_patch14_reg4_dinov2",
        layers: Optional[Sequence[int]] = None,
        groups: Sequence[Sequence[int]] = ((0, 1, 2, 3), (4, 5, 6, 7)),
        decoder_depth: int = 8,
        mlp_ratio: float = 4.0,
        dropout: float = 0.2,
        lr: float = 2e-3,
        final_lr: float = 2e-4,
        warmup_steps: int = 100,
        weight_decay: float = 1e-4,
        betas: Sequence[float] = (0.9, 0.999),
        eps: Optional[float] = None,
        amsgrad: bool = True,
        grad_clip: Optional[float] = 0.1,
        hard_mining_final: float = 0.9,
        hard_mining_ramp_steps: int = 1000,
        hard_mining_factor: float = 0.1,
        sigma: float = 4.0,
        blur_kernel_size: int = 5,
        top_ratio: float = 0.01,
        steps_single: int = 5000,
        steps_unified: int = 10000,
        setting: str = "single",
    ) -> None:
        super().__init__()
        if setting not in SETTINGS:
            raise ConfigError(f"model.setting={setting!r}: use 'single' or 'unified'")
        if not 0.0 <= float(dropout) < 1.0 or not 0.0 <= float(hard_mining_final) < 1.0:
            raise ConfigError("model.dropout and model.hard_mining_final must be in [0, 1)")
        if int(blur_kernel_size) < 1 or int(blur_kernel_size) % 2 == 0:
            raise ConfigError(f"model.blur_kernel_size={blur_kernel_size} must be a positive odd number")
        cfg = as_backbone_config(backbone)
        self.backbone_name = cfg.name
        if not is_vit(cfg.name):
            raise ConfigError(f"model=dinomaly needs a ViT backbone, got backbone.name={cfg.name}; use "
                              "backbone=vit_base_patch14_reg4_dinov2 (or vit_small/vit_large...)")
        layers = list(layers) if layers is not None else default_layers(vit_depth(cfg.name))
        self.groups = [[int(i) for i in g] for g in groups]
        used = sorted({i for g in self.groups for i in g})
        if not self.groups or used[0] < 0 or used[-1] >= min(len(layers), int(decoder_depth)):
            raise ConfigError(f"model.groups={self.groups} must index model.layers ({len(layers)} blocks) and the "
                              f"{decoder_depth} decoder blocks")
        self.encoder = FeatureExtractor(cfg, layers=layers, frozen=True)
        dim, heads = self.encoder.model.embed_dim, self.encoder.model.num_heads
        self.bottleneck = NoisyBottleneck(dim, int(dim * mlp_ratio), float(dropout))
        self.decoder = nn.ModuleList(DecoderBlock(dim, heads, mlp_ratio) for _ in range(int(decoder_depth)))
        _init_trainable(nn.ModuleList([self.bottleneck, self.decoder]))
        self.lr, self.final_lr, self.warmup_steps = float(lr), float(final_lr), int(warmup_steps)
        self.weight_decay, self.betas, self.amsgrad = float(weight_decay), tuple(float(b) for b in betas), bool(amsgrad)
        # reference scripts: eps 1e-8 in the single-class (*_sep.py), 1e-10 in the unified (*_uni.py) ones
        self.eps = float(eps) if eps is not None else (1e-10 if setting == "unified" else 1e-8)
        self.grad_clip = None if grad_clip in (None, 0) else float(grad_clip)
        self.hard_mining_final, self.hard_mining_ramp_steps = float(hard_mining_final), int(hard_mining_ramp_steps)
        self.hard_mining_factor = float(hard_mining_factor)
        self.sigma, self.blur_kernel_size, self.top_ratio = float(sigma), int(blur_kernel_size), float(top_ratio)
        self.setting = setting
        self.default_max_steps = int(steps_unified if setting == "unified" else steps_single)
        # training steps taken so far: drives the hard-mining ramp and is saved with the model (resume)
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))

    # --- optimisation -------------------------------------------------------------------------------------
    def configure_optimizers(self, budget: Budget) -> OptimizerSpec:
        params = list(self.bottleneck.parameters()) + list(self.decoder.parameters())
        opt = StableAdamW(params, lr=self.lr, betas=self.betas, eps=self.eps, weight_decay=self.weight_decay,
                          amsgrad=self.amsgrad, max_grad_norm=self.grad_clip)
        total = budget.total_steps or self.default_max_steps
        return OptimizerSpec(opt, warm_cosine_scheduler(opt, self.lr, self.final_lr, total, self.warmup_steps), "step")

    # --- features -----------------------------------------------------------------------------------------
    def reconstruct(self, images: torch.Tensor) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """(encoder, decoder) feature grids [B, C, h, w], one per group."""
        tokens, grid = self.encoder.tokens(images)
        x = self.bottleneck(torch.stack(tokens, dim=1).mean(dim=1))
        decoded = []
        for block in self.decoder:
            x = block(x)
            decoded.append(x)
        decoded = decoded[::-1]  # deepest decoder block first, mirroring the shallowest encoder block
        to_grid = self.encoder.model.to_grid
        enc = [to_grid(torch.stack([tokens[i] for i in g], 1).mean(1), grid) for g in self.groups]
        dec = [to_grid(torch.stack([decoded[i] for i in g], 1).mean(1), grid) for g in self.groups]
        return enc, dec

    def training_step(self, batch: Dict[str, Any]) -> torch.Tensor:
        share = hard_mining_share(int(self.steps_done), self.hard_mining_final, self.hard_mining_ramp_steps)
        enc, dec = self.reconstruct(batch["image"])
        self.steps_done += 1
        return global_cosine_hard_mining(enc, dec, share, self.hard_mining_factor)

    # --- inference ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        enc, dec = self.reconstruct(images)
        size = images.shape[-2:]
        maps = torch.stack([upsample_to(cosine_distance_map(e.float(), d.float()), size) for e, d in zip(enc, dec)]).mean(0)
        radius = (self.blur_kernel_size - 1) // 2
        if radius and self.sigma > 0:  # truncate so the kernel has blur_kernel_size taps
            maps = gaussian_blur2d(maps, self.sigma, truncate=radius / self.sigma)
        return Prediction(scores=top_fraction_score(maps, self.top_ratio), maps=maps)
