"""Glue between the benchmark datasets and their official metrics: flat `benchmark` entries of a category record.

Keys are flat (`aupro_fpr5`, `segf1`, `au_spro_fpr5_logical`, ...) so the aggregator reads them as
`--metrics benchmark.aupro_fpr5`; an FPR limit is written in percent (0.05 -> `fpr5`, 1.0 -> `fpr100`). An
undefined metric is None (the record's notes are the place for reasons; `evaluate` already notes the common ones).
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, Optional

from ad import metrics


def fpr_name(limit: float) -> str:
    pct = float(limit) * 100.0
    return f"fpr{int(pct) if pct == int(pct) else str(pct).replace('.', 'p')}"


def aupro_at_limits(masks: Any, maps: Any, limits: Iterable[float]) -> Dict[str, Optional[float]]:
    out: Dict[str, Optional[float]] = {}
    for lim in limits:
        try:
            out[f"aupro_{fpr_name(lim)}"] = metrics.aupro(masks, maps, max_fpr=lim)
        except metrics.UndefinedMetricError:
            out[f"aupro_{fpr_name(lim)}"] = None
    return out


def segf1_entries(masks: Any, maps: Any, threshold: Optional[float]) -> Dict[str, Optional[float]]:
    """SegF1 (pooled pixel F1) with its precision, recall and threshold; all None without a threshold."""
    keys = ("segf1", "segf1_precision", "segf1_recall", "segf1_threshold")
    if threshold is None:
        return dict.fromkeys(keys)
    try:
        r = metrics.segf1(masks, maps, threshold)
    except metrics.UndefinedMetricError:
        return {**dict.fromkeys(keys), "segf1_threshold": float(threshold)}
    return dict(zip(keys, (r["f1"], r["precision"], r["recall"], r["threshold"])))
