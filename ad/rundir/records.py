"""The typed record of one run: what `results.json` holds, written from these dataclasses and read back
through `load_record` (also for files written before the schema had a version).

One schema, `SCHEMA_VERSION`, documented in README ("results.json"). The aggregator, the TensorBoard logger,
the sweep summary and the report read a `RunRecord`, never ad-hoc key paths. `validate` checks a parsed JSON
document against the dataclasses (every key known, every value of its declared type).
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from ad.io import to_jsonable

SCHEMA_VERSION = 2

# ADer's mAD: the mean of these seven metrics (image AUROC/AP/F1max, pixel AUROC/AP/F1max, AUPRO).
MAD_METRICS = ("image.auroc", "image.ap", "image.f1_max", "pixel.auroc", "pixel.ap", "pixel.f1_max", "pixel.aupro")


class RecordError(ValueError):
    """A results.json that does not follow the schema (the message names the key)."""


@dataclass
class RunInfo:
    """What the run is: its identity, as the configuration it came from says."""

    model: Optional[str] = None
    dataset: Optional[str] = None
    category: Optional[str] = None  # the category; for a unified run its label ("all" or "a+b+c")
    backbone: Optional[str] = None
    seed: Optional[int] = None
    setting: str = "single"  # "single" | "unified"
    categories: List[str] = field(default_factory=list)  # the evaluated categories (one for single runs)
    params: Dict[str, str] = field(default_factory=dict)  # swept / command-line hyper-parameters
    run_name: Optional[str] = None
    tag: Optional[str] = None


@dataclass
class Counts:
    train: int = 0
    val: int = 0
    test: int = 0
    test_anomalous: int = 0


@dataclass
class ImageMetrics:
    auroc: Optional[float] = None
    ap: Optional[float] = None
    f1_max: Optional[float] = None
    f1_max_threshold: Optional[float] = None  # test-set diagnostic only, never used for decisions
    threshold: Optional[float] = None  # fitted on validation normals
    precision: Optional[float] = None  # at `threshold`
    recall: Optional[float] = None
    f1: Optional[float] = None


@dataclass
class PixelMetrics:
    auroc: Optional[float] = None
    aupro: Optional[float] = None
    ap: Optional[float] = None
    f1_max: Optional[float] = None
    f1_max_threshold: Optional[float] = None
    threshold: Optional[float] = None
    precision: Optional[float] = None
    recall: Optional[float] = None
    f1: Optional[float] = None
    max_fpr: Optional[float] = None


@dataclass
class Thresholds:
    image: Optional[float] = None
    pixel: Optional[float] = None
    method: Optional[str] = None  # mean_std | quantile
    k: Optional[float] = None
    quantile: Optional[float] = None
    pixel_pool: Optional[str] = None
    source: Optional[str] = None  # "validation normals" | "cross-fitted training normals" | ...
    fitted_on: Optional[str] = None  # human-readable: "21 validation normals"


@dataclass
class AtThreshold:
    """Decisions at one threshold (precision/recall/F1), e.g. a unified run's per-category thresholds."""

    threshold: Optional[float] = None
    precision: Optional[float] = None
    recall: Optional[float] = None
    f1: Optional[float] = None


@dataclass
class CategoryRecord:
    """Per-category evaluation of a unified run (at the global threshold, and at its own one beside it)."""

    counts: Counts = field(default_factory=Counts)
    image: Optional[ImageMetrics] = None
    pixel: Optional[PixelMetrics] = None
    per_defect: Optional[Dict[str, Optional[float]]] = None
    mad: Optional[float] = None
    image_at_category_threshold: Optional[AtThreshold] = None
    pixel_at_category_threshold: Optional[AtThreshold] = None
    notes: List[str] = field(default_factory=list)


@dataclass
class Validation:
    count: int = 0
    mean_score: Optional[float] = None
    std_score: Optional[float] = None
    loss: Optional[float] = None
    objective: Optional[float] = None  # what hyper-parameter searches maximise (null when skipped)
    objective_images: int = 0
    synthetic_auroc_levels: List[Optional[float]] = field(default_factory=list)
    objective_skipped: Optional[str] = None  # why the objective was not computed


@dataclass
class Training:
    epochs: int = 0
    steps: int = 0
    batch_size: Optional[int] = None
    max_epochs: Optional[int] = None  # the budget the trainer ran (null: the step budget decided)
    max_steps: Optional[int] = None
    stopped_early: bool = False
    resumed_from_epoch: Optional[int] = None
    best_val_loss: Optional[float] = None
    final_train_loss: Optional[float] = None


@dataclass
class Timing:
    fit_s: Optional[float] = None
    predict_s: Optional[float] = None
    ms_per_image: Optional[float] = None
    total_s: Optional[float] = None


@dataclass
class Memory:
    peak_rss_mb: Optional[float] = None
    peak_cuda_mb: Optional[float] = None


@dataclass
class RunRecord:
    schema_version: int = SCHEMA_VERSION
    status: str = "running"  # running | ok | failed | interrupted
    error: Optional[str] = None  # one line when not ok
    run: RunInfo = field(default_factory=RunInfo)
    counts: Optional[Counts] = None
    image: Optional[ImageMetrics] = None  # unified runs: the mean over categories
    pixel: Optional[PixelMetrics] = None
    per_defect: Optional[Dict[str, Optional[float]]] = None
    mad: Optional[float] = None
    categories: Optional[Dict[str, CategoryRecord]] = None  # unified runs only
    thresholds: Optional[Thresholds] = None
    validation: Optional[Validation] = None
    training: Optional[Training] = None
    timing: Optional[Timing] = None
    memory: Optional[Memory] = None
    notes: List[str] = field(default_factory=list)

    # --- reading ------------------------------------------------------------------------------------------
    def metric(self, name: str, category: Optional[str] = None) -> Optional[float]:
        """`metric("image.auroc")`, `metric("mad")`, or a unified run's per-category value."""
        holder: Any = self
        if category is not None and self.categories is not None:
            holder = self.categories.get(category)
        for part in name.split("."):
            holder = getattr(holder, part, None) if not isinstance(holder, dict) else holder.get(part)
            if holder is None:
                return None
        return float(holder) if isinstance(holder, (int, float)) and not isinstance(holder, bool) else None

    def category_rows(self) -> List["CategoryRow"]:
        """One row per evaluated category: a single-class run gives one, a unified run one per category."""
        if self.categories is None:
            return [CategoryRow(self.run.category, self.counts, self.image, self.pixel, self.per_defect, self.mad)]
        return [CategoryRow(name, c.counts, c.image, c.pixel, c.per_defect, c.mad) for name, c in self.categories.items()]

    def to_dict(self) -> Dict[str, Any]:
        return to_jsonable(dataclasses.asdict(self))


@dataclass
class CategoryRow:
    category: Optional[str]
    counts: Optional[Counts]
    image: Optional[ImageMetrics]
    pixel: Optional[PixelMetrics]
    per_defect: Optional[Dict[str, Optional[float]]]
    mad: Optional[float]

    def metric(self, name: str) -> Optional[float]:
        if name == "mad":
            return self.mad
        section, _, key = name.partition(".")
        holder = getattr(self, section, None) if section in ("image", "pixel") else None
        value = getattr(holder, key, None) if holder is not None else None
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def mad(image: Optional[ImageMetrics], pixel: Optional[PixelMetrics]) -> Optional[float]:
    """ADer's mAD, or None when any of its seven metrics is unavailable (e.g. no masks): never a partial mean."""
    values = []
    for name in MAD_METRICS:
        section, _, key = name.partition(".")
        holder = image if section == "image" else pixel
        v = getattr(holder, key, None) if holder is not None else None
        if v is None:
            return None
        values.append(float(v))
    return sum(values) / len(values)


# --- (de)serialisation --------------------------------------------------------------------------------------
def _from(tp: Any, value: Any, where: str) -> Any:
    """Build `tp` from parsed JSON, checking every key and type; raises RecordError naming the key."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _from(args[0], value, where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise RecordError(f"{where}: expected an object, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise RecordError(f"{where}: unknown key(s) {', '.join(unknown)}")
        return tp(**{k: _from(hints[k], v, f"{where}.{k}") for k, v in value.items()})
    if origin in (list, List):
        if not isinstance(value, list):
            raise RecordError(f"{where}: expected a list, got {type(value).__name__}")
        (item,) = typing.get_args(tp)
        return [_from(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise RecordError(f"{where}: expected an object, got {type(value).__name__}")
        _, item = typing.get_args(tp)
        return {str(k): _from(item, v, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecordError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecordError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise RecordError(f"{where}: expected {tp.__name__}, got {value!r}")
        return value
    raise TypeError(f"unsupported type {tp} at {where}")


def from_dict(data: Dict[str, Any]) -> RunRecord:
    """A RunRecord from a parsed results.json of the current schema (strict) or an older one (converted)."""
    if not isinstance(data, dict):
        raise RecordError(f"results.json: expected an object, got {type(data).__name__}")
    version = data.get("schema_version")
    if version is None:
        data = _upgrade_v1(data)
    elif version != SCHEMA_VERSION:
        raise RecordError(f"results.json has schema_version {version}; this code reads {SCHEMA_VERSION} "
                          "(and files without a version)")
    return _from(RunRecord, data, "results")


def validate(data: Dict[str, Any]) -> None:
    """Raise RecordError unless `data` is a results.json document of the current schema."""
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        raise RecordError(f"results: schema_version must be {SCHEMA_VERSION}")
    _from(RunRecord, data, "results")


def load_record(path: "str | Path") -> RunRecord:
    """Read `<run>/results.json` (or the file itself) into a RunRecord; RecordError with the path if unreadable."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RecordError(f"{path}: unreadable ({exc.__class__.__name__}: {exc})") from None
    try:
        return from_dict(data)
    except RecordError as exc:
        raise RecordError(f"{path}: {exc}") from None


# Keys of the first, unversioned results.json and the sections they map to.
_V1_RUN_KEYS = ("model", "dataset", "category", "backbone", "seed", "params", "run_name")


def _upgrade_v1(old: Dict[str, Any]) -> Dict[str, Any]:
    """Files written before `schema_version` existed: identity keys at top level, looser sections."""
    def pick(section: Any, cls: Any) -> Any:
        """The keys of an old section that fit the current dataclass; a value of another type is dropped
        (left at its default) rather than making the whole file unreadable."""
        if not isinstance(section, dict):
            return None
        hints = typing.get_type_hints(cls)
        out = {}
        for k, v in section.items():
            if k in hints:
                try:
                    _from(hints[k], v, k)
                except (RecordError, TypeError):
                    continue
                out[k] = v
        return out

    def number(v: Any) -> Optional[float]:
        if isinstance(v, dict):  # some early files nested the value: {"scratch": {"image_auroc": 0.9}}
            v = v.get("auroc", v.get("image_auroc"))
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    run = {k: old.get(k) for k in _V1_RUN_KEYS if old.get(k) is not None}
    run["params"] = {str(k): str(v) for k, v in (run.get("params") or {}).items()}
    if run.get("seed") is not None:
        run["seed"] = int(run["seed"])
    run["categories"] = [str(old["category"])] if old.get("category") is not None else []
    for key in ("model", "dataset", "category", "backbone", "run_name"):
        if run.get(key) is not None:
            run[key] = str(run[key])
    validation = pick(old.get("validation"), Validation)
    if validation is not None:
        validation.setdefault("count", 0)
        validation["objective_images"] = int(validation.get("objective_images") or 0)
    image, pixel = pick(old.get("image"), ImageMetrics), pick(old.get("pixel"), PixelMetrics)
    rec = {
        "schema_version": SCHEMA_VERSION,
        "status": str(old.get("status", "ok")),
        "error": old.get("error"),
        "run": run,
        "counts": pick(old.get("counts"), Counts),
        "image": image,
        "pixel": pixel,
        "per_defect": ({str(k): number(v) for k, v in old["per_defect"].items()}
                       if isinstance(old.get("per_defect"), dict) else None),
        "thresholds": pick(old.get("thresholds"), Thresholds),
        "validation": validation,
        "training": pick(old.get("training"), Training),
        "timing": pick(old.get("timing"), Timing),
        "memory": pick(old.get("memory"), Memory),
        "notes": [str(n) for n in old.get("notes") or []],
    }
    try:
        rec["mad"] = mad(_from(ImageMetrics, image, "image") if image else None,
                         _from(PixelMetrics, pixel, "pixel") if pixel else None)
    except RecordError:
        rec["mad"] = None
    return rec


def json_schema() -> Dict[str, Any]:
    """A JSON Schema (draft 2020-12) of results.json generated from the dataclasses (docs/results.schema.json)."""
    def schema(tp: Any) -> Dict[str, Any]:
        origin = typing.get_origin(tp)
        if origin is typing.Union:
            inner = [a for a in typing.get_args(tp) if a is not type(None)][0]
            return {"anyOf": [schema(inner), {"type": "null"}]}
        if dataclasses.is_dataclass(tp):
            hints = typing.get_type_hints(tp)
            return {"type": "object", "additionalProperties": False,
                    "properties": {f.name: schema(hints[f.name]) for f in dataclasses.fields(tp)}}
        if origin in (list, List):
            return {"type": "array", "items": schema(typing.get_args(tp)[0])}
        if origin in (dict, Dict):
            return {"type": "object", "additionalProperties": schema(typing.get_args(tp)[1])}
        return {"type": {float: "number", int: "integer", str: "string", bool: "boolean"}[tp]}

    out = schema(RunRecord)
    out["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    out["title"] = f"ad results.json (schema_version {SCHEMA_VERSION})"
    return out
