"""MVTec AD 2 (Heckler-Kram et al., 2025) in its official release layout::

    <root>/<category>/train/good/*.png
    <root>/<category>/validation/good/*.png              the official held-out normals (thresholds, SegF1)
    <root>/<category>/test_public/good/*.png
    <root>/<category>/test_public/bad/*.png
    <root>/<category>/test_public/ground_truth/bad/<stem>_mask.png
    <root>/<category>/test_private/*.png                 unlabelled: scored for the evaluation server
    <root>/<category>/test_private_mixed/*.png           (see ad.submission.mvtec_ad2)

The validation split is the official one (never carved out of train, also with `dataset.shots`). Evaluation
adds MVTec AD 2's metrics under `benchmark`: AU-PRO integrated to FPR 0.05 (and 0.3 in `pixel.aupro` as
usual) and SegF1 at the threshold mean + 3·std of the validation images' pixel scores.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from ad.data._base import AnomalyDataModule, Sample, check_root, list_images, mask_index, require_dir
from ad.errors import DataError

PRIVATE_SPLITS = ("test_private", "test_private_mixed")
_LAYOUT = ("expected <root>/<category>/{train/good,validation/good,test_public/{good,bad},"
           "test_public/ground_truth/bad}")


def _category_dir(root: Path, category: str) -> Path:
    check_root(root, "MVTec AD 2", _LAYOUT)
    cat_dir = root / category
    if not cat_dir.is_dir():
        if (root / "train" / "good").is_dir() and (root / "test_public").is_dir():
            raise DataError(f"dataset.root={root} is itself a category folder; set dataset.root={root.parent} and "
                            f"category={root.name}")
        found = sorted(p.name for p in root.iterdir() if (p / "test_public").is_dir())
        raise DataError(f"unknown MVTec AD 2 category '{category}': no folder {cat_dir}"
                        + (f"; available under {root}: {', '.join(found)}" if found else f" ({_LAYOUT})"))
    return cat_dir


def list_mvtec_ad2(root: str | Path, category: str) -> List[Sample]:
    """Train (split "train"), official validation (split "val") and public test samples of one category.

    Every `test_public/bad` image must have its `ground_truth/bad/<stem>_mask.png` (a missing one is an error
    naming the file: AD 2 ships a mask for every defective public test image)."""
    cat_dir = _category_dir(Path(root).expanduser(), category)
    dirs = {k: cat_dir / k for k in ("train/good", "validation/good", "test_public/good", "test_public/bad")}
    for d in dirs.values():
        require_dir(d, _LAYOUT)
    train = [Sample(str(p), 0, "good", None, "train") for p in list_images(dirs["train/good"])]
    val = [Sample(str(p), 0, "good", None, "val") for p in list_images(dirs["validation/good"])]
    if not train:
        raise DataError(f"empty train set: no images in {dirs['train/good']}; add the normal training images there")
    test = [Sample(str(p), 0, "good", None, "test") for p in list_images(dirs["test_public/good"])]
    masks = mask_index(cat_dir / "test_public" / "ground_truth" / "bad")
    for p in list_images(dirs["test_public/bad"]):
        m = masks.get(p.stem)
        if m is None:
            raise DataError(f"mask {cat_dir}/test_public/ground_truth/bad/{p.stem}_mask.png of test image {p} is "
                            "missing; restore it from the MVTec AD 2 release")
        test.append(Sample(str(p), 1, "bad", str(m), "test"))
    return train + val + test


def list_private(root: str | Path, category: str, split: str) -> List[Path]:
    """The unlabelled images of `test_private` or `test_private_mixed`, sorted by name."""
    if split not in PRIVATE_SPLITS:
        raise DataError(f"unknown MVTec AD 2 private split '{split}'; use one of {', '.join(PRIVATE_SPLITS)}")
    folder = _category_dir(Path(root).expanduser(), category) / split
    require_dir(folder, f"{_LAYOUT} and <category>/{split}")
    return list_images(folder)


class MVTecAD2(AnomalyDataModule):
    """MVTec AD 2 from the official layout; the official validation set is the held-out normals."""

    name = "MVTec AD 2"

    def __init__(self, root: str, category: str = "can", aupro_limits: Any = (0.05, 0.3), **common: Any) -> None:
        super().__init__(root, category, **common)
        self.aupro_limits = tuple(float(x) for x in aupro_limits)
        self._official_val: List[Sample] = []

    def list_samples(self) -> List[Sample]:
        samples = list_mvtec_ad2(self.root, self.category)
        self._official_val = [s for s in samples if s.split == "val"]
        return samples

    def _hold_out(self, train: List[Sample]) -> tuple[List[Sample], List[Sample], Optional[str]]:
        # k-shot means k normals seen in all (the project's rule for every dataset): no validation then either.
        if self.shots is not None:
            return super()._hold_out(train)
        if not self._official_val:
            return train, [], f"no held-out validation: {self.root}/{self.category}/validation/good is empty"
        return train, list(self._official_val), None

    def private_images(self, split: str) -> List[Path]:
        return list_private(self.root, self.category, split)

    def benchmark_metrics(self, test: Any, calibration: Any) -> Optional[Dict[str, Optional[float]]]:
        """AU-PRO at each `aupro_limits` FPR and SegF1 at the validation threshold (None + reason when undefined)."""
        from ad.data._benchmark import aupro_at_limits, segf1_entries

        out: Dict[str, Optional[float]] = {}
        if test.has_mask[test.labels == 1].all():
            out.update(aupro_at_limits(test.masks, test.maps, self.aupro_limits))
            out.update(segf1_entries(test.masks, test.maps, getattr(calibration, "segf1_threshold", None)))
        return out or None
