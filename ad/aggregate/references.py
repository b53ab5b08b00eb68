"""Published numbers (`ad/reference_results.yaml`) shown next to a model's own runs."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ad.aggregate.jobs import AggregateError, _load_yaml

REFERENCE_FILE = Path(__file__).resolve().parent.parent / "reference_results.yaml"


@functools.lru_cache(maxsize=None)  # reads conf/category/*.yaml; asked once per mean row and reference
def dataset_size(dataset: str) -> int:
    """How many categories a dataset has (its `conf/category/*.yaml` options; -1 when unknown): a paper's
    dataset mean is only shown beside a mean over all of them."""
    from ad.config import dataset_categories

    return len(dataset_categories(dataset)) or -1


@dataclass
class Reference:
    name: str
    model: str
    label: str
    citation: str
    setting: str
    results: Dict[str, Dict[str, dict]]  # dataset -> metric -> {source, mean, per_category} (fractions)

    def value(self, dataset: str, metric: str, category: str) -> Optional[float]:
        return ((self.results.get(dataset) or {}).get(metric) or {}).get("per_category", {}).get(category)

    def published_mean(self, dataset: str, metric: str) -> Optional[float]:
        return ((self.results.get(dataset) or {}).get(metric) or {}).get("mean")

    def has(self, metric: str) -> bool:
        return any(metric in per_metric for per_metric in self.results.values())




def load_references(path: Path = REFERENCE_FILE, names: Optional[Sequence[str]] = None) -> List[Reference]:
    data = _load_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
        raise AggregateError(f"{path}: expected a mapping 'entries: {{name: {{model, label, citation, results}}}}'")
    refs: List[Reference] = []
    for name, e in data["entries"].items():
        results: Dict[str, Dict[str, dict]] = {}
        for ds, per_metric in (e.get("results") or {}).items():
            for metric, spec in (per_metric or {}).items():
                per_cat = {str(k): float(v) / 100.0 for k, v in (spec.get("per_category") or {}).items()}
                mean = spec.get("mean")
                results.setdefault(str(ds), {})[str(metric)] = {
                    "source": spec.get("source", ""),
                    "mean": None if mean is None else float(mean) / 100.0,
                    "per_category": per_cat,
                }
        refs.append(Reference(name=str(name), model=str(e.get("model", name)), label=str(e.get("label", name)),
                              citation=str(e.get("citation", "")), setting=str(e.get("setting", "")),
                              results=results))
    if names:
        unknown = [n for n in names if n not in {r.name for r in refs}]
        if unknown:
            raise AggregateError(
                f"--reference: unknown entr{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)} in {path}; "
                f"available: {', '.join(r.name for r in refs)}"
            )
        refs = [r for r in refs if r.name in names]
    return refs

