"""VisA read from its raw release with the official split file.

Layout: `<root>/split_csv/1cls.csv` (columns `object,split,label,image,mask`, paths relative to root) and
`<root>/<category>/Data/Images/{Normal,Anomaly}/*.JPG`, `<root>/<category>/Data/Masks/Anomaly/*.png`.
Masks hold non-binary label ids: any non-zero pixel is a defect (handled by `load_mask`).
"""
from __future__ import annotations

import csv
import functools
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from ad.data._base import AnomalyDataModule, Sample, check_root
from ad.categories import dataset_categories
from ad.errors import DataError

VISA_CATEGORIES = tuple(dataset_categories("visa"))  # from conf/dataset/visa.yaml (the one list)
SPLIT_COLUMNS = ("object", "split", "label", "image", "mask")
DEFAULT_SPLIT_FILE = "split_csv/1cls.csv"
_LAYOUT = "expected <root>/split_csv/1cls.csv and <root>/<category>/Data/Images/{Normal,Anomaly}"


def read_visa_split(csv_path: str | Path) -> List[Dict[str, str]]:
    """Rows of an official VisA split file, validated (columns, split and label values), in file order."""
    csv_path = Path(csv_path)
    try:
        st = csv_path.stat()
    except OSError:
        raise DataError(
            f"VisA split file {csv_path} not found; copy split_csv/1cls.csv of the official VisA release there"
        ) from None
    # A sweep over the 12 objects reads the same 10k-row file each time: parse it once per content version.
    return [dict(r) for r in _read_split_cached(str(csv_path), st.st_mtime_ns, st.st_size)]


@functools.lru_cache(maxsize=8)
def _read_split_cached(path: str, _mtime_ns: int, _size: int) -> Tuple[Dict[str, str], ...]:
    csv_path = Path(path)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in SPLIT_COLUMNS if c not in header]
            if missing:
                raise DataError(
                    f"VisA split file {csv_path} lacks column(s) {', '.join(missing)} (has: {', '.join(header)}); "
                    f"use the official split_csv/1cls.csv with columns {','.join(SPLIT_COLUMNS)}"
                )
            reader.fieldnames = header
            rows = []
            for line, row in enumerate(reader, start=2):
                row = {k: (row.get(k) or "").strip() for k in SPLIT_COLUMNS}
                if row["split"] not in ("train", "test"):
                    raise DataError(f"{csv_path} line {line}: split '{row['split']}' is not train/test; fix the row")
                if row["label"] not in ("normal", "anomaly"):
                    raise DataError(
                        f"{csv_path} line {line}: label '{row['label']}' is not normal/anomaly; fix the row"
                    )
                if not row["image"]:
                    raise DataError(f"{csv_path} line {line}: empty image path; fix the row")
                rows.append(row)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read VisA split file {csv_path} ({exc.__class__.__name__}); replace it") from None
    return tuple(rows)


def list_visa(
    root: str | Path, category: str, split_file: str = DEFAULT_SPLIT_FILE, check_files: bool = True
) -> List[Sample]:
    """Train and test samples of one VisA object as listed by the split file.

    `check_files=False` lists from the CSV alone (for inspecting a split without images); the data module
    always checks that the listed files exist so a partial download fails with a clear message.
    """
    root = Path(root).expanduser()
    check_root(root, "VisA", _LAYOUT)
    csv_path = Path(split_file) if Path(split_file).is_absolute() else root / split_file
    if not csv_path.is_file():
        hint = ""
        if (root / category / "train" / "good").is_dir():
            hint = " (this root looks like an MVTec-layout conversion of VisA: use dataset=mvtec instead)"
        raise DataError(
            f"VisA split file {csv_path} not found; copy split_csv/1cls.csv of the official VisA release there "
            f"or set dataset.split_file=<path relative to root>{hint}"
        )
    rows = read_visa_split(csv_path)
    objects = sorted({r["object"] for r in rows})
    if category not in objects:
        raise DataError(
            f"unknown VisA category '{category}': not in {csv_path}; valid: {', '.join(objects)} (set category=<name>)"
        )
    samples: List[Sample] = []
    for r in rows:
        if r["object"] != category:
            continue
        label = 1 if r["label"] == "anomaly" else 0
        mask = str(root / r["mask"]) if r["mask"] and label == 1 else None
        samples.append(Sample(str(root / r["image"]), label, "anomaly" if label else "good", mask, r["split"]))
    if check_files:
        _check_files(root, category, csv_path, samples)
    return samples


def _check_files(root: Path, category: str, csv_path: Path, samples: Sequence[Sample]) -> None:
    images = root / category / "Data" / "Images"
    if not images.is_dir():
        raise DataError(
            f"expected folder {images} is missing ({_LAYOUT}); extract the VisA '{category}' archive under {root}"
        )
    missing = [p for s in samples for p in (s.path, s.mask_path) if p and not Path(p).is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} file(s) listed in {csv_path} for '{category}' are missing, e.g. {missing[0]}; "
            "re-extract the VisA release under dataset.root"
        )


class VisA(AnomalyDataModule):
    """VisA (Zou et al., ECCV 2022) from the raw release and the official one-class split file."""

    name = "VisA"

    def __init__(
        self,
        root: str,
        category: str = "candle",
        split_file: str = DEFAULT_SPLIT_FILE,
        **common: Any,  # splitting and loading options: AnomalyDataModule's keyword arguments
    ) -> None:
        super().__init__(root, category, **common)
        self.split_file = str(split_file)

    def list_samples(self) -> List[Sample]:
        return list_visa(self.root, self.category, self.split_file, check_files=True)
