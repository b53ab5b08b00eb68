"""MVTec AD in its official layout: `<root>/<category>/train/good`, `test/<defect>`,
`ground_truth/<defect>/<name>_mask.png`."""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

from ad.data._base import AnomalyDataModule, Sample, check_root, list_images, mask_index, require_dir
from ad.categories import dataset_categories
from ad.errors import DataError

MVTEC_CATEGORIES = tuple(dataset_categories("mvtec"))  # from conf/dataset/mvtec.yaml (the one list)


def mvtec_categories(root: Path) -> List[str]:
    """Category folders under an MVTec-layout root (those with a `train/` folder)."""
    if not root.is_dir():
        return []
    return sorted(
        p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "train").is_dir()
    )


def _good_dir(parent: Path) -> Path:
    """`<parent>/good`, matched in any case (`train/Good` is the same folder a user meant)."""
    if parent.is_dir():
        for p in sorted(parent.iterdir()):
            if p.is_dir() and p.name.lower() == "good":
                return p
    return parent / "good"


def list_mvtec(root: str | Path, category: str, dataset_name: str = "MVTec AD") -> List[Sample]:
    """All train and test samples of one category. Anomalous images without a mask get `mask_path=None`."""
    root = Path(root).expanduser()
    layout = "expected <root>/<category>/train/good and <root>/<category>/test/<defect>"
    check_root(root, dataset_name, layout)
    cat_dir = root / category
    if not cat_dir.is_dir():
        if (root / "train" / "good").is_dir():
            raise DataError(
                f"dataset.root={root} is itself a category folder; set dataset.root={root.parent} and "
                f"category={root.name}"
            )
        available = mvtec_categories(root)
        if available:
            raise DataError(
                f"unknown {dataset_name} category '{category}': no folder {cat_dir}; available under {root}: "
                f"{', '.join(available)} (set category=<name>)"
            )
        raise DataError(f"{root} has no {dataset_name} category folders: {layout} (e.g. {cat_dir}/train/good)")
    train_dir = _good_dir(cat_dir / "train")
    require_dir(train_dir, layout)
    test_dir = cat_dir / "test"
    require_dir(test_dir, layout)

    train = [Sample(str(p), 0, "good", None, "train") for p in list_images(train_dir)]
    if not train:
        raise DataError(f"empty train set: no images in {train_dir}; add the normal training images there")

    test: List[Sample] = []
    for defect_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        defect = defect_dir.name
        if defect.lower() == "good":  # `test/Good` (any case) is the normal folder, never a defect type
            test += [Sample(str(p), 0, "good", None, "test") for p in list_images(defect_dir)]
            continue
        masks = mask_index(cat_dir / "ground_truth" / defect)
        for p in list_images(defect_dir):
            m: Optional[Path] = masks.get(p.stem)
            test.append(Sample(str(p), 1, defect, str(m) if m else None, "test"))
    if not test:
        raise DataError(f"no test images in {test_dir}/<defect>/ ({layout}); add the test images there")
    return train + test


class MVTecAD(AnomalyDataModule):
    """MVTec AD (Bergmann et al., CVPR 2019), read from the official release layout."""

    name = "MVTec AD"

    def __init__(
        self,
        root: str,
        category: str = "bottle",
        **common: Any,  # splitting and loading options: AnomalyDataModule's keyword arguments
    ) -> None:
        super().__init__(root, category, **common)

    def list_samples(self) -> List[Sample]:
        return list_mvtec(self.root, self.category, self.name)
