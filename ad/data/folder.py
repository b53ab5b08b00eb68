"""Your own images in plain folders.

- `normal_dir`: defect-free images (training normals).
- `abnormal_dir`: defective test images; images directly inside get the folder's name as defect type, images
  in sub-folders (`abnormal_dir/<defect>/...`) get the sub-folder's name.
- `mask_dir` (optional): binary masks matched to abnormal images by file stem (`x.png` or `x_mask.png`, any
  extension), either mirroring the sub-folders of `abnormal_dir` or flat.
- `normal_test_dir` (optional): normal test images. Without it, `normal_test_fraction` of `normal_dir` becomes
  test normals, chosen by a hash of each file name: stable across runs and seeds, and adding images does not
  reshuffle the ones already assigned.

Folder paths are relative to `root` unless absolute.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ad.data._base import AnomalyDataModule, Sample, check_root, list_images, mask_stem
from ad.io import folder_name
from ad.errors import DataError


def _resolve(root: Path, folder: Optional[str], key: str, required: bool) -> Optional[Path]:
    if folder is None or str(folder) == "":
        if required:
            raise DataError(f"dataset.{key} is not set; set it to a folder under {root} (or an absolute path)")
        return None
    p = Path(str(folder)).expanduser()
    p = p if p.is_absolute() else root / p
    if not p.is_dir():
        raise DataError(f"expected folder {p} is missing (dataset.{key}={folder}); create it or fix dataset.{key}")
    return p


def _mask_lookup(mask_dir: Path) -> Tuple[Dict[Tuple[str, str], Path], Dict[str, List[Path]]]:
    """Masks by (relative sub-folder, stem) and by stem alone."""
    by_rel: Dict[Tuple[str, str], Path] = {}
    by_stem: Dict[str, List[Path]] = {}
    for folder in [mask_dir] + sorted(p for p in mask_dir.rglob("*") if p.is_dir()):
        rel = str(folder.relative_to(mask_dir))
        for p in list_images(folder):
            stem = mask_stem(p)
            if (rel, stem) not in by_rel or p.stem.endswith("_mask"):
                by_rel[(rel, stem)] = p
            by_stem.setdefault(stem, []).append(p)
    return by_rel, by_stem


def _hash_order(paths: Sequence[Path]) -> List[Path]:
    return sorted(paths, key=lambda p: hashlib.sha1(p.name.encode()).hexdigest())


def list_folder(
    root: str | Path,
    normal_dir: str = "good",
    abnormal_dir: str = "defect",
    mask_dir: Optional[str] = None,
    normal_test_dir: Optional[str] = None,
    normal_test_fraction: float = 0.2,
) -> List[Sample]:
    root = Path(root).expanduser()
    check_root(root, "folder dataset", "expected <root>/<normal_dir> and <root>/<abnormal_dir>")
    normal = _resolve(root, normal_dir, "normal_dir", required=True)
    abnormal = _resolve(root, abnormal_dir, "abnormal_dir", required=True)
    masks = _resolve(root, mask_dir, "mask_dir", required=False)
    normal_test = _resolve(root, normal_test_dir, "normal_test_dir", required=False)
    assert normal is not None and abnormal is not None

    normals = list_images(normal)
    if not normals:
        raise DataError(f"empty train set: no images in {normal} (dataset.normal_dir); add normal images there")
    if normal_test is not None:
        train_paths, test_normals = normals, list_images(normal_test)
    else:
        if not 0.0 <= float(normal_test_fraction) < 1.0:
            raise DataError(f"dataset.normal_test_fraction={normal_test_fraction} must be in [0, 1)")
        n_test = int(round(len(normals) * float(normal_test_fraction)))
        if normal_test_fraction > 0 and len(normals) > 1:
            n_test = max(1, n_test)
        n_test = min(n_test, len(normals) - 1)
        held = set(_hash_order(normals)[:n_test])
        train_paths = [p for p in normals if p not in held]
        test_normals = [p for p in normals if p in held]

    by_rel, by_stem = _mask_lookup(masks) if masks is not None else ({}, {})
    anomalous: List[Sample] = []
    # Other configured folders may sit inside abnormal_dir (e.g. abnormal/masks): never list them as defects.
    skip = [p.resolve() for p in (normal, masks, normal_test) if p is not None]
    for folder in [abnormal] + sorted(p for p in abnormal.rglob("*") if p.is_dir()):
        if any(folder.resolve() == s or s in folder.resolve().parents for s in skip):
            continue
        rel = str(folder.relative_to(abnormal))
        defect = abnormal.name if rel == "." else rel.replace("\\", "/")
        for p in list_images(folder):
            m = by_rel.get((rel, p.stem))
            if m is None and len(by_stem.get(p.stem, [])) == 1:
                m = by_stem[p.stem][0]
            anomalous.append(Sample(str(p), 1, defect, str(m) if m else None, "test"))
    if not anomalous:
        raise DataError(f"no images in {abnormal} (dataset.abnormal_dir); add the defective test images there")
    return (
        [Sample(str(p), 0, "good", None, "train") for p in train_paths]
        + [Sample(str(p), 0, "good", None, "test") for p in test_normals]
        + anomalous
    )


class Folder(AnomalyDataModule):
    """A dataset from plain folders of normal / defective images (see the module docstring)."""

    name = "folder"

    def __init__(
        self,
        root: str,
        category: Optional[str] = None,
        normal_dir: str = "good",
        abnormal_dir: str = "defect",
        mask_dir: Optional[str] = None,
        normal_test_dir: Optional[str] = None,
        normal_test_fraction: float = 0.2,
        **common: Any,  # splitting and loading options: AnomalyDataModule's keyword arguments
    ) -> None:
        if category is None and root is not None:
            category = folder_name(root)  # the root's name labels results, run dirs and tables
        super().__init__(root, category, **common)
        self.normal_dir = normal_dir
        self.abnormal_dir = abnormal_dir
        self.mask_dir = mask_dir
        self.normal_test_dir = normal_test_dir
        self.normal_test_fraction = float(normal_test_fraction)

    def list_samples(self) -> List[Sample]:
        return list_folder(
            self.root, self.normal_dir, self.abnormal_dir, self.mask_dir, self.normal_test_dir,
            self.normal_test_fraction,
        )
