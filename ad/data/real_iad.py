"""Real-IAD (Wang et al., CVPR 2024) from its release layout and official JSON split files::

    <root>/realiad_1024/<object>/OK/S<sample>/<object>_<id>_OK_C<view>_<time>.jpg
    <root>/realiad_1024/<object>/NG/<code>/S<sample>/<...>_C<view>_<...>.jpg   (+ .png mask, same stem)
    <root>/realiad_jsons/<object>.json        multi-view protocol (also found one level deeper,
    <root>/realiad_jsons_sv/<object>.json     single-view protocol   realiad_jsons/realiad_jsons/...)

A split file is `{"meta": {...}, "train": [entry, ...], "test": [entry, ...]}`, each entry
`{"category": "OK"|"NG", "anomaly_class": "OK"|<code>, "image_path": ..., "mask_path": ... | null}` with paths
relative to `realiad_1024/<object>`. Besides the per-image metrics, the multi-view protocol reports the
**sample-level** metric under `benchmark`: a sample (its `S<sample>` folder, 5 views) is anomalous if any view
is, and its score is the maximum over its views. Images are read per batch like every dataset (nothing of a
category is preloaded); the split file is parsed once per content version.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ad.data._base import AnomalyDataModule, Sample, check_root
from ad.errors import DataError

PROTOCOLS = {"multi_view": "realiad_jsons", "single_view": "realiad_jsons_sv"}
_LAYOUT = "expected <root>/realiad_1024/<object>/{OK,NG/<code>}/S<sample>/ and <root>/realiad_jsons[_sv]/<object>.json"


def split_file(root: Path, category: str, protocol: str) -> Path:
    if protocol not in PROTOCOLS:
        raise DataError(f"dataset.protocol={protocol!r} is not one of {', '.join(PROTOCOLS)}")
    name = PROTOCOLS[protocol]
    for cand in (root / name / f"{category}.json", root / "realiad_jsons" / name / f"{category}.json"):
        if cand.is_file():
            return cand
    raise DataError(f"Real-IAD split file {root / name / f'{category}.json'} not found; extract {name} of the "
                    f"official release under {root} ({_LAYOUT})")


def read_split(path: str | Path) -> Dict[str, List[Dict[str, Any]]]:
    """{"train": [...], "test": [...]} of an official split file, each entry checked (one line naming the file)."""
    st = Path(path).stat()
    return _read_split_cached(str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=4)
def _read_split_cached(path: str, _mtime: int, _size: int) -> Dict[str, List[Dict[str, Any]]]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot parse Real-IAD split file {path} ({exc.__class__.__name__}: "
                        f"{' '.join(str(exc).split())}); restore it from the release") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("train", "test")):
        raise DataError(f"Real-IAD split file {path} must be an object with lists 'train' and 'test' (and 'meta'); "
                        "restore it from the release")
    for part in ("train", "test"):
        for i, e in enumerate(data[part]):
            if not isinstance(e, dict) or not isinstance(e.get("image_path"), str) or "anomaly_class" not in e:
                raise DataError(f"{path}: {part}[{i}] needs 'image_path' and 'anomaly_class'; fix the entry")
    return {"train": data["train"], "test": data["test"], "meta": data.get("meta") or {}}


def sample_id(image_path: str) -> str:
    """The physical sample of a view: its folder (`NG/AK/S0024`), shared by the sample's 5 views."""
    return str(Path(image_path).parent)


def list_real_iad(root: str | Path, category: str, protocol: str = "multi_view") -> List[Sample]:
    root = Path(root).expanduser()
    check_root(root, "Real-IAD", _LAYOUT)
    path = split_file(root, category, protocol)
    split = read_split(path)
    normal = str(split["meta"].get("normal_class", "OK")) if isinstance(split["meta"], dict) else "OK"
    images = root / "realiad_1024" / category
    if not images.is_dir():
        raise DataError(f"expected folder {images} is missing ({_LAYOUT}); extract realiad_1024/{category} there")
    samples: List[Sample] = []
    for part in ("train", "test"):
        for e in split[part]:
            label = 0 if str(e["anomaly_class"]) == normal else 1
            if part == "train" and label:
                raise DataError(f"{path}: train entry {e['image_path']} is anomalous ({e['anomaly_class']}); "
                                "the official splits train on normals only")
            mask = e.get("mask_path")
            samples.append(Sample(str(images / e["image_path"]), label, str(e["anomaly_class"]) if label else "good",
                                  str(images / mask) if (label and mask) else None, part))
    missing = [p for s in samples for p in (s.path, s.mask_path) if p and not Path(p).is_file()]
    if missing:
        raise DataError(f"{len(missing)} file(s) listed in {path} are missing, e.g. {missing[0]}; re-extract "
                        f"realiad_1024/{category} under {root}")
    return samples


def sample_level(paths: List[str], labels: np.ndarray, scores: np.ndarray, root: Path) -> Tuple[np.ndarray, np.ndarray]:
    """(labels, scores) per physical sample: anomalous if any view is, score = max over its views."""
    groups: Dict[str, List[int]] = {}
    for i, p in enumerate(paths):
        try:
            rel = str(Path(p).relative_to(root))
        except ValueError:
            rel = p
        groups.setdefault(sample_id(rel), []).append(i)
    idx = list(groups.values())
    return (np.array([int(labels[g].max()) for g in idx]), np.array([float(scores[g].max()) for g in idx]))


class RealIAD(AnomalyDataModule):
    """Real-IAD from the release and an official JSON split (`dataset.protocol=multi_view|single_view`)."""

    name = "Real-IAD"

    def __init__(self, root: str, category: str = "audiojack", protocol: str = "multi_view", **common: Any) -> None:
        super().__init__(root, category, **common)
        if protocol not in PROTOCOLS:
            from ad.data._checks import DatasetConfigError

            raise DatasetConfigError(f"dataset.protocol={protocol!r} is not one of {', '.join(PROTOCOLS)}")
        self.protocol = str(protocol)

    def list_samples(self) -> List[Sample]:
        return list_real_iad(self.root, self.category, self.protocol)

    def benchmark_metrics(self, test: Any, calibration: Any) -> Optional[Dict[str, Optional[float]]]:
        """Sample-level AUROC / AP (max over views) in the multi-view protocol."""
        if self.protocol != "multi_view":
            return None
        from ad import metrics

        y, s = sample_level(list(test.paths), np.asarray(test.labels), np.asarray(test.scores),
                            self.root / "realiad_1024" / self.category)
        out: Dict[str, Optional[float]] = {"samples": float(y.size)}
        for key, fn in (("sample_auroc", metrics.image_auroc), ("sample_ap", metrics.image_ap)):
            try:
                out[key] = fn(y, s)
            except metrics.UndefinedMetricError:
                out[key] = None
        return out
