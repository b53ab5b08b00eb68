"""EfficientAD's networks (Batzner, Heckler, König, "EfficientAD: Accurate Visual Anomaly Detection at
Millisecond-Level Latencies", WACV 2024) and the offline teacher: saving, loading and distilling a patch
description network (PDN).

- `pdn(size, out_channels)`: the S or M PDN (no padding, as in the authors' code): a 256 px image gives a
  56x56 map of 33x33-pixel patch descriptors (stride 4).
- `EfficientADAutoencoder`: the paper's autoencoder (6 stride-2 convs to a 1x1 latent, 8 upsample+conv layers
  with dropout back to the PDN output size).
- Teacher files: `{"state_dict", "model_size", "out_channels", "image_size", "source"}` saved by
  `save_teacher`; `load_teacher` also accepts a bare PDN state dict (e.g. the authors' released teacher,
  whose `nn.Sequential` keys match ours).
- `distill_pdn_teacher`: the paper distils a PDN from WideResNet-101 features on ImageNet. Offline we distil
  from a local pretrained backbone (`ad.backbones.FeatureExtractor`, e.g. tf_efficientnet_lite0) on a folder
  of images (+ optional procedural textures); `scripts/distill_pdn_teacher.py` is the command line.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ad.errors import WeightsError
from ad.models._maps import resize_input
from ad.io import atomic_write, file_lock

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIZES = ("s", "m")
#: the teacher/student maps are padded by this many cells before upsampling (authors' code, no-padding PDN)
MAP_PAD = 4


def pdn(size: str = "s", out_channels: int = 384) -> nn.Sequential:
    """PDN-S (4 convs) or PDN-M (6 convs); layer order matches the authors' `nn.Sequential` state dict keys."""
    if size == "s":
        return nn.Sequential(
            nn.Conv2d(3, 128, 4), nn.ReLU(inplace=True), nn.AvgPool2d(2, 2),
            nn.Conv2d(128, 256, 4), nn.ReLU(inplace=True), nn.AvgPool2d(2, 2),
            nn.Conv2d(256, 256, 3), nn.ReLU(inplace=True),
            nn.Conv2d(256, out_channels, 4),
        )
    if size == "m":
        return nn.Sequential(
            nn.Conv2d(3, 256, 4), nn.ReLU(inplace=True), nn.AvgPool2d(2, 2),
            nn.Conv2d(256, 512, 4), nn.ReLU(inplace=True), nn.AvgPool2d(2, 2),
            nn.Conv2d(512, 512, 1), nn.ReLU(inplace=True),
            nn.Conv2d(512, 512, 3), nn.ReLU(inplace=True),
            nn.Conv2d(512, out_channels, 4), nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 1),
        )
    raise ValueError(f"PDN size must be one of {SIZES}, got {size!r}")


def pdn_output_size(image_size: int) -> int:
    """Side of the PDN map for a square input (same for S and M): 256 -> 56, 64 -> 8."""
    return ((image_size - 3) // 2 - 3) // 2 - 5


def pdn_centers(image_size: int) -> torch.Tensor:
    """Continuous pixel coordinate of each PDN output cell's receptive-field centre (33 px field, stride 4)."""
    return 4 * torch.arange(pdn_output_size(image_size), dtype=torch.float32) + 16.5


class EfficientADAutoencoder(nn.Module):
    """Encoder: 5 stride-2 4x4 convs + a final conv to a 1x1 latent of 64 dims. Decoder: 7 bilinear resizes
    (sizes scaled from the paper's 3,8,15,32,63,127 for 256 px), 4x4 convs with dropout 0.2, then two 3x3
    convs to `out_channels` at the PDN output size."""

    def __init__(self, out_channels: int = 384, image_size: int = 256) -> None:
        super().__init__()
        if image_size % 32 or image_size < 64:
            raise ValueError(f"EfficientAD image_size must be a multiple of 32 and >= 64, got {image_size}")
        enc, cin = [], 3
        for c in (32, 32, 64, 64, 64):
            enc += [nn.Conv2d(cin, c, 4, stride=2, padding=1), nn.ReLU(inplace=True)]
            cin = c
        self.encoder = nn.Sequential(*enc, nn.Conv2d(64, 64, image_size // 32))
        self.sizes = [max(1, round(s * image_size / 256)) for s in (3, 8, 15, 32, 63, 127)]
        self.out_size = pdn_output_size(image_size)
        self.dec = nn.ModuleList(nn.Conv2d(64, 64, 4, padding=2) for _ in self.sizes)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Sequential(
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(64, out_channels, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder(x)
        for size, conv in zip(self.sizes, self.dec):
            z = self.drop(F.relu(conv(F.interpolate(z, size=size, mode="bilinear", align_corners=False))))
        z = F.interpolate(z, size=self.out_size, mode="bilinear", align_corners=False)
        return self.head(z)


# --- teacher files ---------------------------------------------------------------------------------------------
_DISTILL_HINT = "create one with `python scripts/distill_pdn_teacher.py --images <folder of images> --out {path}`"


def save_teacher(path: str | Path, teacher: nn.Module, model_size: str, image_size: int, source: str,
                 extra: Optional[dict] = None) -> None:
    """Write a teacher file atomically (temp file in the same folder, then rename): a reader or a job killed
    mid-write never sees half a file; the same file mode as every other output."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out_channels = [m for m in teacher.modules() if isinstance(m, nn.Conv2d)][-1].out_channels
    obj = {"state_dict": teacher.state_dict(), "model_size": model_size, "out_channels": int(out_channels),
           "image_size": int(image_size), "source": source, **(extra or {})}
    atomic_write(path, lambda tmp: torch.save(obj, tmp), binary=True)


def load_teacher(path: str | Path, model_size: str) -> Tuple[nn.Sequential, dict]:
    """A frozen PDN from a teacher file (ours or a bare state dict); one-line `WeightsError` otherwise."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsError(f"EfficientAD teacher weights {p} not found; {_DISTILL_HINT.format(path=p)} "
                           "(or set model.teacher_weights=random for a weak smoke-test teacher)")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same one-line advice
        raise WeightsError(f"cannot read EfficientAD teacher weights {p} ({exc.__class__.__name__}); "
                           f"{_DISTILL_HINT.format(path=p)}") from None
    meta = {k: v for k, v in obj.items() if k != "state_dict"} if isinstance(obj, dict) and "state_dict" in obj else {}
    state = obj["state_dict"] if meta else obj
    if not isinstance(state, dict) or not state:
        raise WeightsError(f"{p} holds no PDN state dict; {_DISTILL_HINT.format(path=p)}")
    if meta.get("model_size", model_size) != model_size:
        raise WeightsError(f"{p} is a PDN-{meta['model_size'].upper()} teacher but model.model_size={model_size}; "
                           f"set model.model_size={meta['model_size']} or distil a PDN-{model_size.upper()}")
    last = [k for k in state if k.endswith("weight")][-1]
    out_channels = int(state[last].shape[0])
    teacher = pdn(model_size, out_channels)
    try:
        teacher.load_state_dict(state)
    except RuntimeError:
        raise WeightsError(f"{p} does not fit a PDN-{model_size.upper()} (wrong model_size or not a PDN); "
                           f"{_DISTILL_HINT.format(path=p)}") from None
    meta.setdefault("out_channels", out_channels)
    return teacher, meta


# --- offline distillation ----------------------------------------------------------------------------------------
class _ImagePool:
    """Training images for distillation: files (cached in memory at 1.25x image_size) and/or procedural
    textures, with random resized crops, flips and colour changes so the PDN sees varied patches."""

    def __init__(self, files: Sequence[Path], image_size: int, crop_size: int, procedural_fraction: float,
                 rng: np.random.Generator, cache_limit: int = 4096) -> None:
        from ad.io import load_image

        self.files, self.size, self.crop, self.rng = list(files), image_size, crop_size, rng
        self.procedural_fraction = procedural_fraction if self.files else 1.0
        load_side = int(image_size * 1.25)
        self._load = lambda f: torch.from_numpy(  # noqa: E731
            np.array(load_image(f).resize((load_side, load_side)), dtype=np.uint8)).permute(2, 0, 1)
        self.cache = [self._load(f) for f in self.files] if len(self.files) <= cache_limit else None

    def sample(self) -> torch.Tensor:
        from ad.models._anomaly_synthesis import procedural_texture
        import torchvision.transforms.v2.functional as TF

        s, rng = self.size, self.rng
        if self.rng.random() < self.procedural_fraction:
            img = procedural_texture((self.crop, self.crop), rng)
        else:
            i = int(rng.integers(len(self.files)))
            img = (self.cache[i] if self.cache is not None else self._load(self.files[i])).float() / 255.0
            side = img.shape[-1]
            crop = int(side * math.sqrt(rng.uniform(0.4, 1.0)))
            top, left = int(rng.integers(0, side - crop + 1)), int(rng.integers(0, side - crop + 1))
            img = resize_input(img[None, :, top:top + crop, left:left + crop], s)[0]
            if self.crop < s:  # a window of the image at its working scale: same patch scale, less compute
                top, left = int(rng.integers(0, s - self.crop + 1)), int(rng.integers(0, s - self.crop + 1))
                img = img[:, top:top + self.crop, left:left + self.crop]
        if rng.random() < 0.5:
            img = img.flip(-1)
        if rng.random() < 0.5:
            img = TF.adjust_brightness(img, float(rng.uniform(0.8, 1.2)))
            img = TF.adjust_saturation(TF.adjust_contrast(img, float(rng.uniform(0.8, 1.2))), float(rng.uniform(0.7, 1.3)))
        if rng.random() < 0.1:
            img = TF.rgb_to_grayscale(img, num_output_channels=3)
        return img.clamp(0, 1)

    def batch(self, n: int) -> torch.Tensor:
        return torch.stack([self.sample() for _ in range(n)])


def backbone_targets(extractor: nn.Module, images: torch.Tensor, image_size: int) -> torch.Tensor:
    """Backbone features at the PDN output grid: layers upsampled to the finest one and concatenated, averaged
    over 3x3 neighbours (PatchCore-style local context, as the paper's WideResNet targets), then sampled
    bilinearly at each PDN cell's receptive-field centre so teacher and target describe the same patch."""
    feats = extractor(images)
    size = feats[0].shape[-2:]
    f = torch.cat([F.interpolate(x, size=size, mode="bilinear", align_corners=False) if x.shape[-2:] != size else x
                   for x in feats], dim=1)
    f = F.avg_pool2d(f, 3, stride=1, padding=1, count_include_pad=False)
    c = 2 * pdn_centers(image_size).to(f.device) / image_size - 1  # normalised coords, align_corners=False
    gy, gx = torch.meshgrid(c, c, indexing="ij")
    grid = torch.stack([gx, gy], dim=-1)[None].expand(f.shape[0], -1, -1, -1)
    return F.grid_sample(f, grid, mode="bilinear", align_corners=False)


def distill_pdn_teacher(
    files: Sequence[Path], backbone, layers: Sequence[int] = (2, 3), model_size: str = "s", image_size: int = 256,
    crop_size: Optional[int] = None, steps: int = 20000, batch_size: int = 8, lr: float = 1e-4, weight_decay: float = 1e-5,
    procedural_fraction: float = 0.0, seed: int = 0, device: str = "cpu", log_every: int = 100,
    stats_batches: int = 16, progress: Optional[Callable[[int, float], None]] = None,
) -> Tuple[nn.Sequential, List[float]]:
    """Train a PDN to regress channel-normalised backbone features (MSE, Adam). Returns (pdn, losses).

    Images are brought to the scale EfficientAD will see (`image_size`); `crop_size` < image_size trains on
    random windows of that scale (the PDN is a 33 px patch descriptor, so it learns the same mapping at a
    fraction of the cost; the backbone then sees less context around each patch)."""
    from ad.backbones import FeatureExtractor

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    extractor = FeatureExtractor(backbone, layers, frozen=True).to(device)
    crop = int(crop_size or image_size)
    pool = _ImagePool(files, image_size, crop, procedural_fraction, rng)
    out_channels = int(sum(extractor.channels))
    teacher = pdn(model_size, out_channels).to(device)
    norm = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    with torch.no_grad():  # target normalisation: the PDN regresses standardised features
        t = torch.cat([backbone_targets(extractor, pool.batch(batch_size).to(device), crop) for _ in range(stats_batches)])
        mean, std = t.mean(dim=(0, 2, 3), keepdim=True), t.std(dim=(0, 2, 3), keepdim=True) + 1e-6
    opt = torch.optim.Adam(teacher.parameters(), lr=lr, weight_decay=weight_decay)
    losses: List[float] = []
    start = time.time()
    for step in range(1, steps + 1):
        x = pool.batch(batch_size).to(device)
        with torch.no_grad():
            target = (backbone_targets(extractor, x, crop) - mean) / std
        loss = F.mse_loss(teacher((x - norm[0]) / norm[1]), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step, losses[-1])
        if log_every and step % log_every == 0:
            log.info("distill step %d/%d loss %.4f (%.1fs)", step, steps, np.mean(losses[-log_every:]), time.time() - start)
    return teacher.cpu().eval(), losses


# --- the cached default teacher ------------------------------------------------------------------------------------
#: Bump when the distillation procedure changes in a way that changes its result: old cache files are then
#: never reused for the new procedure (the version is part of the recipe key).
DISTILL_VERSION = 1


@dataclass(frozen=True)
class TeacherRecipe:
    """Everything that determines a distilled teacher. Its `file_name()` carries a digest of all fields (and of
    the image file list when `images` is set), so a different recipe never reuses another recipe's file.

    Default: PDN regressing tf_efficientnet_lite0 levels 1+2 (strides 4 and 8: local enough for the 33 px PDN
    to fit in a few hundred steps, loss 0.98 -> 0.78 in 400 steps; levels 2+3 only 1.06 -> 0.96) on procedural
    textures. Textures need no data, so one cached teacher serves every category and dataset; a teacher
    distilled on the category's own normals would extrapolate on defects the way the student does (both saw
    normals only), shrinking the student-teacher gap EfficientAD scores. 400 steps of 8 x 64 px crops: 1-2
    minutes on 2 idle CPU cores.
    """

    backbone: str = "tf_efficientnet_lite0"
    layers: Tuple[int, ...] = (1, 2)
    model_size: str = "s"
    image_size: int = 256
    crop_size: int = 64
    steps: int = 400
    batch_size: int = 8
    lr: float = 1e-3
    seed: int = 0
    images: Optional[str] = None  # optional folder of real images mixed with the textures (searched recursively)
    procedural_fraction: float = 1.0  # share of textures per batch; must be < 1 to use `images`
    version: int = DISTILL_VERSION

    @classmethod
    def from_config(cls, model_size: str, image_size: int, options: Optional[dict]) -> "TeacherRecipe":
        from ad.errors import ConfigError
        from ad.values import positive_int

        options = dict(options or {})
        known = {f.name for f in fields(cls)} - {"model_size", "image_size", "version"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"model.teacher_distill has unknown key(s) {', '.join(unknown)}; "
                              f"valid: {', '.join(sorted(known))}")
        if "layers" in options:
            options["layers"] = tuple(int(v) for v in options["layers"])
        for key in ("steps", "batch_size", "crop_size"):
            if key in options:
                options[key] = positive_int(options[key], f"model.teacher_distill.{key}")
        if options.get("crop_size", cls.crop_size) < 64:
            raise ConfigError("model.teacher_distill.crop_size must be >= 64 (the backbone needs some context)")
        if options.get("images") and options.get("procedural_fraction", cls.procedural_fraction) >= 1:
            options["procedural_fraction"] = 0.5  # a folder was given to be used: mix it half and half
        return cls(model_size=model_size, image_size=int(image_size), **options)

    def image_files(self) -> List[Path]:
        from ad.models._anomaly_synthesis import list_source_images

        return list_source_images(self.images) if self.uses_images else []

    @property
    def uses_images(self) -> bool:
        return bool(self.images) and self.procedural_fraction < 1

    def digest(self) -> str:
        fields_ = {**asdict(self), "layers": list(self.layers)}
        if self.uses_images:  # which images, not just where: a changed folder is another recipe
            fields_["images"] = [str(p) for p in self.image_files()]
        else:  # textures are drawn at crop size: one teacher serves every model.image_size
            fields_.pop("image_size")
            fields_["images"] = None
        return hashlib.sha1(json.dumps(fields_, sort_keys=True).encode()).hexdigest()[:12]

    def file_name(self) -> str:
        src = "mix" if self.uses_images else "tex"
        return (f"pdn_{self.model_size}_{self.backbone}_l{''.join(map(str, self.layers))}_{src}"
                f"_{self.steps}x{self.batch_size}x{self.crop_size}px_{self.digest()}.pth")

    def describe(self) -> str:
        source = "procedural textures" if not self.uses_images else (
            f"{len(self.image_files())} images of {self.images} + procedural textures ({self.procedural_fraction:.0%})")
        return (f"PDN-{self.model_size.upper()} distilled from pretrained {self.backbone} levels {list(self.layers)} "
                f"on {source}, {self.steps} steps of {self.batch_size} x {self.crop_size} px")


def cached_teacher(recipe: TeacherRecipe, cache_dir: str | Path, weights_dir: Optional[str | Path] = None,
                   device: str = "cpu") -> Tuple[Path, Optional[float]]:
    """Path of the recipe's teacher under `cache_dir`, distilled first when absent. Returns (path, seconds
    spent distilling, or None when the file was already there).

    Safe for parallel jobs: the first takes an exclusive lock on `<file>.lock`, the others wait and then load
    its file (a killed holder releases the lock). The file appears whole or not at all (temp file + rename).
    """
    from ad.backbones import BackboneConfig

    cache_dir = Path(cache_dir).expanduser()
    path = cache_dir / recipe.file_name()
    if path.is_file():
        return path, None
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WeightsError(f"cannot create the teacher cache folder {cache_dir} ({exc.strerror}); "
                           "set paths.backbone_dir to a writable folder") from None
    with file_lock(path.with_name(path.name + ".lock")):
        if path.is_file():  # another job distilled it while we waited
            return path, None
        log.info("EfficientAD: no cached teacher %s; distilling %s (once, cached for later runs)",
                 path, recipe.describe())
        start = time.time()
        backbone = BackboneConfig(name=recipe.backbone, pretrained=True,
                                  weights_dir=str(weights_dir) if weights_dir else None)
        teacher, losses = distill_pdn_teacher(
            recipe.image_files(), backbone, recipe.layers, recipe.model_size, recipe.image_size, recipe.crop_size,
            recipe.steps, recipe.batch_size, recipe.lr, procedural_fraction=recipe.procedural_fraction,
            seed=recipe.seed, device=device, log_every=0, progress=_progress_bar(recipe.steps),
        )
        seconds = time.time() - start
        extra = {"recipe": {**asdict(recipe), "layers": list(recipe.layers)},
                 "final_loss": float(np.mean(losses[-20:])), "distill_seconds": round(seconds, 1)}
        # image_size 0 = scale-free (textures only): EfficientAD then does not warn about another model.image_size
        save_teacher(path, teacher, recipe.model_size, recipe.image_size if recipe.uses_images else 0,
                     recipe.describe(), extra)
        log.info("EfficientAD: teacher distilled in %.0f s (final loss %.3f), saved to %s",
                 seconds, extra["final_loss"], path)
        return path, seconds


def _progress_bar(total: int) -> Callable[[int, float], None]:
    """tqdm bar on stderr plus a log line every 10 % (train.log keeps the progress of a long distillation)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="distilling EfficientAD teacher", unit="step", leave=False, mininterval=2.0)
    every = max(1, total // 10)
    start, running = time.time(), []

    def update(step: int, loss: float) -> None:
        running.append(loss)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        if step % every == 0 or step == total:
            log.info("distilling teacher: step %d/%d, loss %.4f, %.0f s", step, total,
                     float(np.mean(running[-every:])), time.time() - start)
        if step == total:
            bar.close()

    return update
