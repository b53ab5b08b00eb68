#!/usr/bin/env python
"""Distil an EfficientAD PDN teacher from a local pretrained backbone, offline.

The paper distils its PDN from WideResNet-101 features on ImageNet; neither is available offline. This script
trains the PDN (S or M) to regress the channel-normalised features of a local backbone (default: ImageNet
tf_efficientnet_lite0, layers 2+3, resolved like every backbone in `ad`: explicit file, backbones/ folder, pip
weight package) on a folder of images (searched recursively: the category's normal images, or any collection
of photographs/textures; more varied is better), optionally mixed with procedural textures.

    python scripts/distill_pdn_teacher.py --images datasets/mvtec_ad/bottle/train/good --out backbones/pdn_s.pth
    python -m ad.train model=efficientad model.teacher_weights=backbones/pdn_s.pth

The output file records model size, channels, image size and where it came from. Without a file,
`model.teacher_weights=auto` (the default) distils the teacher of `model.teacher_distill` itself on first use;
`--auto-cache DIR` does that ahead of time (e.g. `--auto-cache backbones` before copying backbones/ to a
machine without spare CPU), with the recipe of conf/model/efficientad.yaml.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from ad.backbones import BackboneConfig  # noqa: E402
from ad.errors import ADError  # noqa: E402
from ad.models._anomaly_synthesis import list_source_images  # noqa: E402
from ad.models.distillation._pdn import distill_pdn_teacher, save_teacher  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", help="folder of training images (recursive); optional with --procedural-fraction 1")
    p.add_argument("--out", help="output teacher file, e.g. backbones/pdn_s.pth")
    p.add_argument("--auto-cache", metavar="DIR",
                   help="instead: distil the teacher_weights=auto teacher of conf/model/efficientad.yaml into DIR")
    p.add_argument("--model-size", choices=("s", "m"), default="s")
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--weights", default=None, help="explicit backbone weight file")
    p.add_argument("--weights-dir", default="backbones", help="folder searched for <backbone>.pth")
    p.add_argument("--layers", type=int, nargs="+", default=[2, 3], help="backbone feature levels (targets)")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--crop-size", type=int, default=None,
                   help="train on random windows of this side at the image_size scale (cheaper; default: whole image)")
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--procedural-fraction", type=float, default=0.25,
                   help="fraction of procedural textures mixed in for variety (1 = no images needed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if a.threads:
        torch.set_num_threads(a.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    if a.auto_cache:
        return _auto_cache(a.auto_cache, a.model_size, device)
    if not a.out:
        p.error("--out is required (or --auto-cache DIR)")
    try:
        files = list_source_images(a.images) if a.images else []
        if not files and a.procedural_fraction < 1:
            raise ADError("--images is required unless --procedural-fraction 1")
        backbone = BackboneConfig(name=a.backbone, pretrained=True, weights=a.weights, weights_dir=a.weights_dir)
        start = time.time()
        teacher, losses = distill_pdn_teacher(
            files, backbone, a.layers, a.model_size, a.image_size, a.crop_size, a.steps, a.batch_size, a.lr,
            procedural_fraction=a.procedural_fraction, seed=a.seed, device=device,
        )
    except ADError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    source = (f"distilled from {a.backbone} layers {a.layers} on {a.images or 'procedural textures'} "
              f"({len(files)} images, procedural fraction {a.procedural_fraction}), {a.steps} steps of "
              f"{a.batch_size} x {a.crop_size or a.image_size} px")
    save_teacher(a.out, teacher, a.model_size, a.image_size, source)
    tail = sum(losses[-100:]) / max(1, len(losses[-100:]))
    print(f"saved {a.out}: PDN-{a.model_size.upper()}, {sum(p.numel() for p in teacher.parameters())} params, "
          f"final loss {tail:.4f}, {time.time() - start:.0f}s")
    return 0


def _auto_cache(folder: str, model_size: str, device: str) -> int:
    from omegaconf import OmegaConf

    from ad.config import CONFIG_DIR
    from ad.models.distillation._pdn import TeacherRecipe, cached_teacher

    options = OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / "model" / "efficientad.yaml").teacher_distill)
    try:
        path, seconds = cached_teacher(TeacherRecipe.from_config(model_size, 256, options), folder, folder, device)
    except ADError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{'distilled' if seconds is not None else 'already cached'}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
