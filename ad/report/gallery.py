"""Per-category image-by-image comparison of the models: which images does one model miss that another
catches? One run per column (its lowest seed), images aligned by path, disagreements first, then the worst
cases (the image some model gets most wrong, by its rank among that model's scores)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ad.aggregate.intervals import RunCache, RunData
from ad.aggregate.jobs import Job
from ad.aggregate.table import Column, Table
from ad.rundir.maps_store import TestMaps, load_test_maps
from ad.visualize import contour

THUMB_QUALITY = 80


@dataclass
class ModelRun:
    column: Column
    job: Job
    data: RunData
    maps: Optional[TestMaps]
    image_threshold: Optional[float]
    pixel_threshold: Optional[float]
    scale: Tuple[float, float] = (0.0, 1.0)  # heatmap colour range of this model in this category (raw units)
    rank: Dict[str, float] = field(default_factory=dict)  # path -> rank of its score among this run's, in [0, 1]


@dataclass
class GalleryImage:
    path: str
    label: int
    defect_type: str
    disagreement: bool
    worst: float  # the largest "how wrong" over the models: 1 = the worst-ranked image of its class
    per_model: List[Dict[str, object]]  # {score, decision, correct, heatmap (file name or None)}
    image: Optional[str] = None
    mask: Optional[str] = None


def _first_run(cell_runs: Sequence[Tuple[Job, str]]) -> Optional[Tuple[Job, str]]:
    def seed(run: Tuple[Job, str]) -> Tuple[int, str]:
        s = run[0].get("seed")
        return (int(s) if s not in (None, "null") and s.lstrip("-").isdigit() else 0, str(run[0].path))

    return min(cell_runs, key=seed) if cell_runs else None


def model_runs(table: Table, cache: RunCache, row: Tuple[str, str]) -> List[ModelRun]:
    """One run per column that has predictions for this category."""
    metric = table.metrics[0]
    out = []
    for col in table.columns:
        picked = _first_run(table.cell(row, col, metric).runs)
        if picked is None:
            continue
        job, cat = picked
        data = cache.predictions(job, cat)
        if data is None:
            continue
        th = job.record.thresholds if job.record is not None else None
        maps = load_test_maps(job.path, cat if job.unified else None)
        run = ModelRun(col, job, data, maps, getattr(th, "image", None), getattr(th, "pixel", None))
        order = np.argsort(np.argsort(data.scores, kind="stable"), kind="stable")
        run.rank = {p: float(r) / max(1, len(order) - 1) for p, r in zip(data.paths, order)}
        out.append(run)
    return out


def _heat_scale(run: ModelRun, paths: Sequence[str]) -> Tuple[float, float]:
    """1st-99.9th percentile of the model's maps over these images, widened to include its pixel threshold."""
    if run.maps is None:
        return (0.0, 1.0)
    idx = run.maps.index()
    sel = [idx[p] for p in paths if p in idx]
    if not sel:
        return (0.0, 1.0)
    vals = run.maps.maps[sel][:, ::2, ::2].astype(np.float32) * np.float32(run.maps.scale)
    lo, hi = (float(v) for v in np.percentile(vals, [1.0, 99.9]))
    if run.pixel_threshold is not None:
        lo, hi = min(lo, run.pixel_threshold), max(hi, run.pixel_threshold)
    return lo, max(hi, lo + 1e-12)


def select_images(runs: Sequence[ModelRun], max_images: int) -> List[GalleryImage]:
    """The images every run scored, disagreements first, then by how wrong the worst model is."""
    common = set(runs[0].data.paths)
    for r in runs[1:]:
        common &= set(r.data.paths)
    base = runs[0].data
    pos = {p: i for i, p in enumerate(base.paths)}
    items = []
    for p in sorted(common):
        i = pos[p]
        label = int(base.labels[i])
        per, decisions, wrong = [], [], []
        for r in runs:
            j = r.data.paths.index(p) if r.data is not base else i
            decision = bool(r.data.decisions[j])
            decisions.append(decision)
            wrong.append(1.0 - r.rank[p] if label == 1 else r.rank[p])
            per.append({"score": float(r.data.scores[j]), "decision": decision, "correct": decision == bool(label),
                        "heatmap": None})
        items.append(GalleryImage(p, label, base.defect_types[i], len(set(decisions)) > 1, max(wrong), per))
    items.sort(key=lambda g: (not g.disagreement, -g.worst, g.path))
    return items[:max_images]


def _thumb(rgb: np.ndarray, path: Path, size: int) -> str:
    im = Image.fromarray(rgb)
    im.thumbnail((size, size))
    im.save(path, quality=THUMB_QUALITY)
    return path.name


def _load_image(path: str, hw: Tuple[int, int]) -> Optional[np.ndarray]:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB").resize((hw[1], hw[0]), Image.BILINEAR))
    except (OSError, ValueError):
        return None


def _heatmap(run: ModelRun, path: str, image: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """The model's map over the image on its category-wide colour scale; its pixel threshold as a white line."""
    from matplotlib import colormaps

    if run.maps is None or path not in (idx := run.maps.index()):
        return None
    amap = run.maps.raw(idx[path])
    lo, hi = run.scale
    heat = colormaps["jet"](np.clip((amap - lo) / (hi - lo), 0, 1))[..., :3]
    out = heat if image is None else 0.5 * heat + 0.5 * image.astype(np.float32) / 255.0
    if run.pixel_threshold is not None:
        out[contour(amap >= run.pixel_threshold)] = (1.0, 1.0, 1.0)
    return (np.clip(out, 0, 1) * 255).astype(np.uint8)


def render_gallery(runs: List[ModelRun], items: List[GalleryImage], out_dir: Path, prefix: str, size: int) -> None:
    """Write the thumbnails of `items` into out_dir and fill in their file names."""
    if not runs:
        return
    paths = [g.path for g in items]
    for r in runs:
        r.scale = _heat_scale(r, paths)
    ref = next((r.maps for r in runs if r.maps is not None), None)
    for k, g in enumerate(items):
        hw = (size, size)
        mask = None
        if ref is not None and g.path in (idx := ref.index()):
            hw = ref.maps.shape[1:]
            # a normal image's ground truth is "no defect pixel" even without a mask file
            if ref.masks is not None and (ref.has_mask[idx[g.path]] or g.label == 0):
                mask = ref.masks[idx[g.path]]
        img = _load_image(g.path, hw)
        if img is not None:
            shown = img.copy()
            if mask is not None and mask.any():
                shown[contour(mask)] = (0, 255, 0)
            g.image = _thumb(shown, out_dir / f"{prefix}_{k}_img.jpg", size)
        if mask is not None:
            g.mask = _thumb((mask[..., None] * np.array([255, 255, 255])).astype(np.uint8),
                            out_dir / f"{prefix}_{k}_gt.png", size)
        for m, r in enumerate(runs):
            heat = _heatmap(r, g.path, img)
            if heat is not None:
                g.per_model[m]["heatmap"] = _thumb(heat, out_dir / f"{prefix}_{k}_m{m}.jpg", size)


def colour_bar(run: ModelRun, path: Path) -> str:
    """A small horizontal colour bar of the model's heatmap scale with its pixel threshold marked."""
    from ad.stats.cd_diagram import figure

    fig = figure(2.6, 0.55)
    ax = fig.add_axes((0.05, 0.45, 0.9, 0.35))
    ax.imshow(np.linspace(0, 1, 256)[None, :], aspect="auto", cmap="jet", extent=(run.scale[0], run.scale[1], 0, 1))
    ax.set_yticks([])
    ax.tick_params(labelsize=6)
    if run.pixel_threshold is not None:
        ax.axvline(run.pixel_threshold, color="white", lw=2)
        ax.axvline(run.pixel_threshold, color="black", lw=0.8)
    fig.savefig(path, format="png")
    return path.name
