#!/usr/bin/env python
"""Generate a 15-category dataset in the MVTec AD layout from the real MVTec AD bottle photos.

Every category has MVTec AD's own image counts (train / test good / test defect per defect type, 3,629 train +
1,725 test in all) and resolution (700-1024 px, grey-scale for grid, screw and zipper), so reading it costs
what reading MVTec AD costs: the same number of PNGs of the same size. Images are the bottle photos with a
per-category look (crop, rescale, flips, colour shift or grey-scale) and per-image jitter; defect images get a
pasted patch (moved from elsewhere in the image, colour-shifted) inside an irregular blob, and the blob is
written as the ground-truth mask. It is a data-path benchmark and an end-to-end check, not a quality benchmark.

    python scripts/make_mvtec_like.py --out /data/mvtec_like                      # all 15, full size (~5 min, 2 cores)
    python scripts/make_mvtec_like.py --out /tmp/small --categories bottle,screw --scale 0.1
    python -m ad.train -m +sweep=mvtec dataset.root=/data/mvtec_like              # then use it as MVTec AD

Each category is written into a hidden temporary folder and renamed into place with a marker recording the
parameters; an existing category with the same parameters is kept, other parameters regenerate it.
Images are PNG at `--compress-level 1` by default: decoding costs the same as the official files (zlib inflate
time hardly depends on the level) while writing is ~4x faster than level 6.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageFilter

VERSION = 2
MARKER = ".mvtec_like.json"

# name: (train, test good, image side, grey-scale, texture, defect types). Counts and sizes are MVTec AD's;
# defect images are split evenly over the listed types (the official per-type counts differ slightly).
SPEC: Dict[str, Tuple[int, int, int, int, bool, bool, Tuple[str, ...]]] = {
    "bottle": (209, 20, 63, 900, False, False, ("broken_large", "broken_small", "contamination")),
    "cable": (224, 58, 92, 1024, False, False, ("bent_wire", "cable_swap", "combined", "cut_inner_insulation",
                                               "cut_outer_insulation", "missing_cable", "missing_wire",
                                               "poke_insulation")),
    "capsule": (219, 23, 109, 1000, False, False, ("crack", "faulty_imprint", "poke", "scratch", "squeeze")),
    "carpet": (280, 28, 89, 1024, False, True, ("color", "cut", "hole", "metal_contamination", "thread")),
    "grid": (264, 21, 57, 1024, True, True, ("bent", "broken", "glue", "metal_contamination", "thread")),
    "hazelnut": (391, 40, 70, 1024, False, False, ("crack", "cut", "hole", "print")),
    "leather": (245, 32, 92, 1024, False, True, ("color", "cut", "fold", "glue", "poke")),
    "metal_nut": (220, 22, 93, 700, False, False, ("bent", "color", "flip", "scratch")),
    "pill": (267, 26, 141, 800, False, False, ("color", "combined", "contamination", "crack", "faulty_imprint",
                                             "pill_type", "scratch")),
    "screw": (320, 41, 119, 1024, True, False, ("manipulated_front", "scratch_head", "scratch_neck",
                                               "thread_side", "thread_top")),
    "tile": (230, 33, 84, 840, False, True, ("crack", "glue_strip", "gray_stroke", "oil", "rough")),
    "toothbrush": (60, 12, 30, 1024, False, False, ("defective",)),
    "transistor": (213, 60, 40, 1024, False, False, ("bent_lead", "cut_lead", "damaged_case", "misplaced")),
    "wood": (247, 19, 60, 1024, False, True, ("color", "combined", "hole", "liquid", "scratch")),
    "zipper": (240, 32, 119, 1024, True, False, ("broken_teeth", "combined", "fabric_border", "fabric_interior",
                                                "rough", "split_teeth", "squeezed_teeth")),
}
CATEGORIES = tuple(SPEC)


def category_plan(name: str, scale: float = 1.0) -> Dict[str, object]:
    """Counts of one category at `scale` (at least 2 train, 1 test good and 1 image per defect type)."""
    n_train, n_good, n_defect, side, grey, texture, defects = SPEC[name]
    per = [n_defect // len(defects) + (i < n_defect % len(defects)) for i in range(len(defects))]
    return {
        "train": max(2, round(n_train * scale)),
        "good": max(1, round(n_good * scale)),
        "defects": {d: max(1, round(k * scale)) for d, k in zip(defects, per)},
        "side": side, "grey": grey, "texture": texture,
    }


def _rng(seed: int, *key: object) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32("/".join(map(str, key)).encode())])


def _style(name: str, seed: int) -> Dict[str, object]:
    """What makes a category look unlike the others: a colour matrix, a crop share, a fixed flip."""
    r = _rng(seed, name, "style")
    mix = np.eye(3)[r.permutation(3)] * r.uniform(0.7, 1.1) + r.uniform(-0.15, 0.15, (3, 3))
    return {"mix": mix, "offset": r.uniform(-20, 20, 3), "crop": 0.45 if SPEC[name][5] else r.uniform(0.8, 1.0),
            "flip": bool(r.integers(2))}


def _render(source: Image.Image, name: str, style: Dict, r: np.random.Generator, side: int, grey: bool) -> Image.Image:
    """One normal image of the category: crop + flips + colour from the style, with per-image jitter."""
    w, h = source.size
    c = float(style["crop"]) * r.uniform(0.93, 1.0)
    cw, ch = int(w * c), int(h * c)
    left, top = int(r.integers(0, w - cw + 1)), int(r.integers(0, h - ch + 1))
    im = source.crop((left, top, left + cw, top + ch)).resize((side, side), Image.BILINEAR)
    if style["flip"] ^ bool(r.integers(2) if SPEC[name][5] else 0):
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    if SPEC[name][5]:  # textures have no pose: any quarter turn is still a normal image
        im = im.rotate(90 * int(r.integers(4)))
    # one affine colour map (category mix, per-image gain and tint) in Pillow's C loop, ~5x faster than numpy
    mix = np.asarray(style["mix"]) * r.uniform(0.92, 1.08)
    shift = np.asarray(style["offset"]) + r.normal(0, 2.0, 3)
    out = im.convert("RGB", tuple(np.concatenate([mix, shift[:, None]], axis=1).reshape(-1).tolist()))
    return out.convert("L") if grey else out


def _blob_mask(r: np.random.Generator, side: int) -> Tuple[Image.Image, Tuple[int, int, int, int]]:
    """An irregular blob (a blurred, thresholded noise patch) covering 0.2-4 % of the image, and its box."""
    size = int(side * r.uniform(0.05, 0.2))
    noise = Image.fromarray((r.random((16, 16)) * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    yy, xx = np.mgrid[:size, :size]
    disc = 1.0 - np.hypot(yy - size / 2, xx - size / 2) / (size / 2)
    blob = (np.asarray(noise, dtype=np.float32) / 255.0 * 0.6 + disc) > 0.55
    mask = Image.fromarray((blob * 255).astype(np.uint8)).filter(ImageFilter.MaxFilter(3))
    x0, y0 = int(r.integers(side // 8, side - side // 8 - size)), int(r.integers(side // 8, side - side // 8 - size))
    return mask, (x0, y0, x0 + size, y0 + size)


def _add_defect(im: Image.Image, r: np.random.Generator) -> Tuple[Image.Image, Image.Image]:
    """Paste a colour-shifted patch from elsewhere in the image inside a blob; return (image, full mask)."""
    side = im.width
    blob, box = _blob_mask(r, side)
    size = box[2] - box[0]
    sx, sy = int(r.integers(0, side - size)), int(r.integers(0, side - size))
    patch = np.asarray(im.crop((sx, sy, sx + size, sy + size)), dtype=np.float32)
    shift = r.uniform(-90, 90, () if patch.ndim == 2 else (1, 1, patch.shape[-1]))
    patch = Image.fromarray(np.clip(patch * r.uniform(0.6, 1.4) + shift, 0, 255).astype(np.uint8))
    out = im.copy()
    out.paste(patch.rotate(float(r.uniform(0, 360))), box[:2], blob)
    mask = Image.new("L", im.size, 0)
    mask.paste(255, box[:2], blob)
    return out, mask


def _sources(bottle: Path) -> List[Path]:
    files = sorted((bottle / "train" / "good").glob("*.png")) + sorted((bottle / "test" / "good").glob("*.png"))
    if not files:
        sys.exit(f"no bottle photos under {bottle}/train/good; pass --bottle <MVTec AD>/bottle")
    return files


def _write_images(job: Tuple[str, str, List[Tuple[str, str, int]], int, int, str]) -> int:
    """Worker: render and save the images of one chunk (the rendering of an image depends only on its key)."""
    name, tmp, items, seed, level, bottle = job
    sources = _sources(Path(bottle))
    plan = category_plan(name)
    style = _style(name, seed)
    for folder, defect, index in items:
        r = _rng(seed, name, folder, defect, index)
        with Image.open(sources[int(r.integers(len(sources)))]) as src:
            im = _render(src.convert("RGB"), name, style, r, int(plan["side"]), bool(plan["grey"]))
        stem = f"{index:03d}"
        if defect != "good":
            im, mask = _add_defect(im, r)
            mask.save(Path(tmp) / "ground_truth" / defect / f"{stem}_mask.png", compress_level=level)
        im.save(Path(tmp) / folder / defect / f"{stem}.png", compress_level=level)
    return len(items)


def make_category(out: Path, name: str, scale: float, seed: int, level: int, bottle: Path, pool) -> bool:
    """Write one category unless it is already there with the same parameters; True when written."""
    params = {"version": VERSION, "category": name, "scale": scale, "seed": seed, "compress_level": level}
    final = out / name
    marker = final / MARKER
    if marker.is_file() and json.loads(marker.read_text()) == params:
        return False
    plan = category_plan(name, scale)
    tmp = out / f".{name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    items = [("train", "good", i) for i in range(int(plan["train"]))]
    items += [("test", "good", i) for i in range(int(plan["good"]))]
    for d, k in plan["defects"].items():  # type: ignore[union-attr]
        items += [("test", d, i) for i in range(k)]
        (tmp / "ground_truth" / d).mkdir(parents=True, exist_ok=True)
        (tmp / "test" / d).mkdir(parents=True, exist_ok=True)
    (tmp / "train" / "good").mkdir(parents=True, exist_ok=True)
    (tmp / "test" / "good").mkdir(parents=True, exist_ok=True)
    chunks = [items[i::pool._max_workers * 4] for i in range(pool._max_workers * 4)]
    list(pool.map(_write_images, [(name, str(tmp), c, seed, level, str(bottle)) for c in chunks if c]))
    (tmp / MARKER).write_text(json.dumps(params))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)  # readers see the whole category or none of it
    return True


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    here = Path(__file__).resolve().parent.parent
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="dataset root to write (MVTec layout)")
    p.add_argument("--categories", default="all", help="comma-separated subset of: " + ",".join(CATEGORIES))
    p.add_argument("--scale", type=float, default=1.0, help="share of MVTec AD's image counts (e.g. 0.1)")
    p.add_argument("--bottle", type=Path, default=Path(os.environ.get("AD_SHARED_DATA", here.parent / "shared" / "data"))
                   / "mvtec_ad" / "bottle", help="the real MVTec AD bottle folder (source photos)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--compress-level", type=int, default=1, help="PNG zlib level (MVTec's own files: ~6)")
    args = p.parse_args(argv)
    cats = CATEGORIES if args.categories == "all" else tuple(c.strip() for c in args.categories.split(",") if c.strip())
    unknown = [c for c in cats if c not in SPEC]
    if unknown:
        p.error(f"unknown categories {unknown}; choose from {', '.join(CATEGORIES)}")
    if not 0 < args.scale <= 1:
        p.error("--scale must be in (0, 1]")
    args.categories = cats
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    _sources(args.bottle)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max(1, args.workers)) as pool:
        for name in args.categories:
            t = time.perf_counter()
            wrote = make_category(args.out, name, args.scale, args.seed, args.compress_level, args.bottle, pool)
            plan = category_plan(name, args.scale)
            n_test = int(plan["good"]) + sum(plan["defects"].values())  # type: ignore[union-attr]
            print(f"{name:<11} {plan['train']:>4} train {n_test:>4} test {plan['side']} px "
                  f"{'written in %.1f s' % (time.perf_counter() - t) if wrote else 'up to date'}", flush=True)
    print(f"done in {time.perf_counter() - t0:.1f} s: {args.out}")


if __name__ == "__main__":
    main()
