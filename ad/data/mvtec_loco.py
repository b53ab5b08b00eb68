"""MVTec LOCO AD (Bergmann et al., IJCV 2022) in its official release layout::

    <root>/<category>/train/good/*.png
    <root>/<category>/validation/good/*.png               the official held-out normals
    <root>/<category>/test/{good,logical_anomalies,structural_anomalies}/<id>.png
    <root>/<category>/ground_truth/<type>/<id>/000.png, 001.png, ...   one PNG per defect
    <root>/<category>/defects_config.json                 per defect type: pixel value, saturation threshold

Each ground-truth PNG is one defect (never split into connected parts); its non-zero pixel value selects the
`defects_config.json` entry with that `pixel_value`, whose `saturation_threshold` is a fraction of the defect's
area when `relative_saturation` is true, else a pixel count. Pixel metrics (AUROC, AU-PRO) see the union of an
image's PNGs; the `benchmark` section adds LOCO's own results: AUC-sPRO at FPR 0.01, 0.05, 0.1, 0.3 and 1.0 and
image AUROC for the logical subset (good + logical images), the structural subset (good + structural) and
"mean" (their average), as the official evaluation reports them.

Maps are scored at `dataset.image_size`: masks are resized to it (nearest), a relative saturation area is
taken of the resized defect and an absolute one is scaled by the resize's area ratio, so at the original
resolution every number equals the official definition.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from ad.data._base import AnomalyDataModule, Sample, _center_crop, check_root, require_dir
from ad.io import DataFileError, list_images, mask_files
from ad.errors import DataError
from ad.metrics import LOCO_FPR_LIMITS, Defect, SaturationRule

ANOMALY_TYPES = ("logical_anomalies", "structural_anomalies")
_LAYOUT = ("expected <root>/<category>/{train/good,validation/good,test/{good,logical_anomalies,"
           "structural_anomalies},ground_truth/<type>/<id>/000.png,defects_config.json}")


def read_defects_config(path: str | Path) -> Dict[int, SaturationRule]:
    """{pixel value: rule} of a `defects_config.json`; any problem is one line naming the file and entry."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} is missing; copy defects_config.json of the MVTec LOCO release there") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot parse {path} ({exc.__class__.__name__}: {' '.join(str(exc).split())}); "
                        "restore it from the MVTec LOCO release") from None
    if not isinstance(data, list) or not data:
        raise DataError(f"{path} must be a non-empty JSON list of defect entries; restore it from the release")
    rules: Dict[int, SaturationRule] = {}
    for i, e in enumerate(data):
        where = f"{path} entry {i}"
        if not isinstance(e, dict):
            raise DataError(f"{where} is not an object; each entry needs defect_name, pixel_value, "
                            "saturation_threshold, relative_saturation")
        missing = [k for k in ("defect_name", "pixel_value", "saturation_threshold", "relative_saturation")
                   if k not in e]
        if missing:
            raise DataError(f"{where} lacks {', '.join(missing)}; fix the entry")
        pv, t, rel = e["pixel_value"], e["saturation_threshold"], e["relative_saturation"]
        if isinstance(pv, bool) or not isinstance(pv, int) or not 1 <= pv <= 255:
            raise DataError(f"{where}: pixel_value {pv!r} must be an integer in 1..255")
        if not isinstance(rel, bool):
            raise DataError(f"{where}: relative_saturation {rel!r} must be true or false")
        if isinstance(t, bool) or not isinstance(t, (int, float)) or t <= 0 or (rel and t > 1):
            raise DataError(f"{where}: saturation_threshold {t!r} must be in (0, 1] when relative, a positive pixel "
                            "count when absolute")
        if pv in rules:
            raise DataError(f"{where}: pixel_value {pv} is used twice; each defect type needs its own value")
        rules[pv] = SaturationRule(str(e["defect_name"]), pv, float(t) if rel else int(t), rel)
    return rules


def defect_value(png: Path) -> tuple[np.ndarray, int]:
    """(integer array, its defect's pixel value) of one ground-truth PNG: exactly one non-zero value."""
    try:
        with Image.open(png) as im:
            arr = np.asarray(im)
    except (OSError, ValueError) as exc:
        raise DataFileError(f"cannot read mask {png} ({exc.__class__.__name__}); restore it") from None
    if arr.ndim == 3:
        arr = arr.max(axis=-1)
    values = np.unique(arr[arr > 0])
    if values.size != 1:
        raise DataFileError(f"mask {png} has {values.size} distinct defect values {values[:4].tolist()}; a LOCO "
                            "ground-truth PNG marks exactly one defect with one pixel value")
    return arr, int(values[0])


def list_mvtec_loco(root: str | Path, category: str) -> List[Sample]:
    """Train ("train"), official validation ("val") and test samples; an anomalous image's `mask_path` is its
    ground-truth folder (one PNG per defect)."""
    root = Path(root).expanduser()
    check_root(root, "MVTec LOCO", _LAYOUT)
    cat = root / category
    if not cat.is_dir():
        found = sorted(p.name for p in root.iterdir() if (p / "defects_config.json").is_file())
        raise DataError(f"unknown MVTec LOCO category '{category}': no folder {cat}"
                        + (f"; available under {root}: {', '.join(found)}" if found else f" ({_LAYOUT})"))
    for sub in ("train/good", "validation/good", "test/good"):
        require_dir(cat / sub, _LAYOUT)
    samples = [Sample(str(p), 0, "good", None, "train") for p in list_images(cat / "train" / "good")]
    samples += [Sample(str(p), 0, "good", None, "val") for p in list_images(cat / "validation" / "good")]
    samples += [Sample(str(p), 0, "good", None, "test") for p in list_images(cat / "test" / "good")]
    for kind in ANOMALY_TYPES:
        if not (cat / "test" / kind).is_dir():
            continue
        for p in list_images(cat / "test" / kind):
            gt = cat / "ground_truth" / kind / p.stem
            if not gt.is_dir():
                raise DataError(f"ground-truth folder {gt} of test image {p} is missing; restore it from the "
                                "MVTec LOCO release (one PNG per defect)")
            samples.append(Sample(str(p), 1, kind, str(gt), "test"))
    return samples


def _resize_mask(arr: np.ndarray, size: tuple[int, int], crop: Optional[tuple[int, int]]) -> np.ndarray:
    im = Image.fromarray((arr > 0).astype(np.uint8) * 255).resize((size[1], size[0]), Image.NEAREST)
    if crop:
        im = _center_crop(im, crop)
    return np.asarray(im) > 0


class MVTecLOCO(AnomalyDataModule):
    """MVTec LOCO AD from the official layout; the official validation set is the held-out normals."""

    name = "MVTec LOCO"

    def __init__(self, root: str, category: str = "breakfast_box", spro_limits: Any = LOCO_FPR_LIMITS,
                 **common: Any) -> None:
        super().__init__(root, category, **common)
        self.spro_limits = tuple(float(x) for x in spro_limits)
        self._official_val: List[Sample] = []
        self.rules: Dict[int, SaturationRule] = {}

    def list_samples(self) -> List[Sample]:
        samples = list_mvtec_loco(self.root, self.category)
        self.rules = read_defects_config(self.root / self.category / "defects_config.json")  # before any training
        self._check_pixel_values(s for s in samples if s.mask_path)
        self._official_val = [s for s in samples if s.split == "val"]
        return samples

    def _check_pixel_values(self, anomalous: Any) -> None:
        for s in anomalous:
            for png in mask_files(Path(s.mask_path)):
                _, value = defect_value(png)
                if value not in self.rules:
                    raise DataError(f"mask {png} has pixel value {value}, which no entry of "
                                    f"{self.root / self.category / 'defects_config.json'} defines; fix the config")

    def _hold_out(self, train: List[Sample]) -> tuple[List[Sample], List[Sample], Optional[str]]:
        # k-shot means k normals seen in all (the project's rule for every dataset): no validation then either.
        if self.shots is not None:
            return super()._hold_out(train)
        if not self._official_val:
            return train, [], f"no held-out validation: {self.root}/{self.category}/validation/good is empty"
        return train, list(self._official_val), None

    def defects(self, mask_dirs: Sequence[Optional[str]], map_size: tuple[int, int]) -> List[Defect]:
        """The `Defect`s of test images (their ground-truth folders, None for good ones) at the maps' size."""
        size, crop = self.transform.image_size, self.transform.center_crop
        out: List[Defect] = []
        for i, folder in enumerate(mask_dirs):
            if folder is None:
                continue
            for png in mask_files(Path(folder)):
                arr, value = defect_value(png)
                mask = _resize_mask(arr, size, crop)
                if mask.shape != tuple(map_size):
                    raise DataError(f"maps are {tuple(map_size)} but dataset.image_size gives {mask.shape}")
                rule = self.rules[value]
                area = int(mask.sum())
                if rule.relative:
                    sat = rule.area(area)
                else:  # an absolute pixel count scales with the resize
                    scale = mask.size / float(arr.shape[0] * arr.shape[1])
                    sat = int(min(round(rule.threshold * scale), area))
                if area:  # a defect thinner than a resized pixel vanishes: nothing left to find
                    out.append(Defect(i, mask, sat))
        return out

    def benchmark_metrics(self, test: Any, calibration: Any) -> Optional[Dict[str, Optional[float]]]:
        """AUC-sPRO at each limit and image AUROC for the logical and structural subsets and their mean."""
        from ad import metrics
        from ad.data._benchmark import fpr_name

        types = np.asarray(test.defect_types)
        by_path = {s.path: s.mask_path for s in self.samples("test")}
        out: Dict[str, Optional[float]] = {}
        for kind, short in (("logical_anomalies", "logical"), ("structural_anomalies", "structural")):
            keep = np.flatnonzero((types == "good") | (types == kind))
            dirs = [by_path.get(test.paths[i]) if types[i] == kind else None for i in keep]
            try:
                out[f"image_auroc_{short}"] = metrics.image_auroc(test.labels[keep], test.scores[keep])
            except metrics.UndefinedMetricError:
                out[f"image_auroc_{short}"] = None
            try:
                spro = metrics.au_spro(test.maps[keep], self.defects(dirs, test.maps.shape[1:]), self.spro_limits)
            except metrics.UndefinedMetricError:
                spro = dict.fromkeys(self.spro_limits)
            out.update({f"au_spro_{fpr_name(k)}_{short}": v for k, v in spro.items()})
        for key in [k for k in out if k.endswith("_logical")]:
            a, b = out[key], out[key.replace("_logical", "_structural")]
            out[key.replace("_logical", "_mean")] = None if a is None or b is None else (a + b) / 2.0
        return out
