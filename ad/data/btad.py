"""BTAD (beanTech Anomaly Detection) in its release layout: `<root>/{01,02,03}/train/ok`, `test/ok`,
`test/ko`, `ground_truth/ko`. Image and mask extensions differ between categories (`.bmp` and `.png`
mixed), so masks are matched to images by file stem."""
from __future__ import annotations

from pathlib import Path
from typing import Any, List

from ad.data._base import AnomalyDataModule, Sample, check_root, list_images, mask_index, require_dir
from ad.categories import dataset_categories
from ad.errors import DataError

BTAD_CATEGORIES = tuple(dataset_categories("btad"))  # from conf/dataset/btad.yaml (the one list)
_LAYOUT = "expected <root>/<category>/train/ok, test/ok, test/ko and ground_truth/ko"


def normalise_btad_category(category) -> str:
    """`1`, `"1"` and `"01"` all mean category `01` (a YAML/CLI value 01 may arrive as the integer 1)."""
    c = str(category).strip()
    return c.zfill(2) if c.isdigit() else c


def list_btad(root: str | Path, category: str) -> List[Sample]:
    root = Path(root).expanduser()
    category = normalise_btad_category(category)
    check_root(root, "BTAD", _LAYOUT)
    cat_dir = root / category
    if not cat_dir.is_dir():
        if (root / "train" / "ok").is_dir():
            raise DataError(
                f"dataset.root={root} is itself a BTAD category folder; set dataset.root={root.parent} and "
                f"category={root.name}"
            )
        available = sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "train" / "ok").is_dir())
        if available:
            raise DataError(
                f"unknown BTAD category '{category}': no folder {cat_dir}; available under {root}: "
                f"{', '.join(available)} (set category=<name>)"
            )
        raise DataError(f"{root} has no BTAD category folders: {_LAYOUT} (e.g. {cat_dir}/train/ok)")
    train_dir = cat_dir / "train" / "ok"
    require_dir(train_dir, _LAYOUT)
    ok_dir, ko_dir = cat_dir / "test" / "ok", cat_dir / "test" / "ko"
    if not ok_dir.is_dir() and not ko_dir.is_dir():
        raise DataError(f"expected folders {ok_dir} and {ko_dir} are missing ({_LAYOUT})")

    train = [Sample(str(p), 0, "good", None, "train") for p in list_images(train_dir)]
    if not train:
        raise DataError(f"empty train set: no images in {train_dir}; add the normal training images there")
    test = [Sample(str(p), 0, "good", None, "test") for p in (list_images(ok_dir) if ok_dir.is_dir() else [])]
    masks = mask_index(cat_dir / "ground_truth" / "ko")
    for p in list_images(ko_dir) if ko_dir.is_dir() else []:
        m = masks.get(p.stem)
        test.append(Sample(str(p), 1, "ko", str(m) if m else None, "test"))
    if not test:
        raise DataError(f"no test images in {ok_dir} or {ko_dir}; add the test images there")
    return train + test


class BTAD(AnomalyDataModule):
    """BTAD (Mishra et al., 2021), three industrial products."""

    name = "BTAD"

    def __init__(
        self,
        root: str,
        category: str = "01",
        **common: Any,  # splitting and loading options: AnomalyDataModule's keyword arguments
    ) -> None:
        super().__init__(root, normalise_btad_category(category), **common)

    def list_samples(self) -> List[Sample]:
        return list_btad(self.root, self.category)
