"""TensorBoard logging of one run: training curves, the HPARAMS entry, one text summary, an overlaid score
histogram with the threshold, PR curve, captioned overlays (`defect/file`)."""
from __future__ import annotations

import functools
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from ad.visualize import captioned, overlay, pick_visualizations  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)


# The final metrics in the HPARAMS table (compared across the runs of a sweep). TensorBoard's HPARAMS plugin reads
# a *metric* from a scalar series of its tag, which puts a single-dot chart per metric on the Scalars page; so
# the final values are written as numeric columns of the HPARAMS entry itself (sortable, filterable and in the
# parallel-coordinates view) and no scalar is written for them. Every other final number (F1max diagnostics,
# thresholds, per-category values) is in the one text summary. Constants (max_fpr) and raw thresholds (on each
# model's own score scale: meaningless across models) are never logged.
HPARAM_METRICS = ("image.auroc", "image.ap", "image.f1", "pixel.auroc", "pixel.aupro", "pixel.f1", "mad",
                  "validation.objective")


def flatten_metrics(record: Any) -> Dict[str, float]:
    """{"final/image_auroc": .9, "final/pixel_aupro": .8, "final/mad": .85, ...}: the `HPARAM_METRICS` the
    record has (a null metric is left out, never plotted as 0)."""
    out: Dict[str, float] = {}
    for name in HPARAM_METRICS:
        holder: Any = record
        for part in name.split("."):
            holder = getattr(holder, part, None)
        if isinstance(holder, (int, float)) and not isinstance(holder, bool) and np.isfinite(holder):
            out["final/" + name.replace(".", "_")] = float(holder)
    return out


def _num(v: Optional[float], pct: bool = True) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.1f}" if pct else f"{v:.4g}"


def summary_markdown(record: Any, category_rows: Sequence[tuple] = ()) -> str:
    """The run's one text summary: decisions at its threshold first, threshold-free metrics, F1max labelled a
    diagnostic, and for a unified run one table row per category."""
    from ad.rundir.records import operating_point

    op = record.operating_point or operating_point(record)
    lines = [f"**{record.run.run_name or record.run.model}** — metrics in %", ""]
    if op is None or op.no_threshold:
        lines += [f"Decisions: none — {op.no_threshold if op else 'no test metrics'}", ""]
    else:
        lines += [f"Decisions at the run's threshold (fitted on {op.threshold_fitted_on or 'held-out normals'}):", "",
                  "| level | precision | recall | F1 | threshold |", "|---|---|---|---|---|"]
        for level, at in (("image", op.image), ("pixel", op.pixel)):
            if at is not None:
                lines.append(f"| {level} | {_num(at.precision)} | {_num(at.recall)} | {_num(at.f1)} | "
                             f"{_num(at.threshold, pct=False)} |")
        lines.append("")
    img, pix = record.image, record.pixel
    lines += ["| level | AUROC | AP | AUPRO | F1max (diagnostic) |", "|---|---|---|---|---|",
              f"| image | {_num(getattr(img, 'auroc', None))} | {_num(getattr(img, 'ap', None))} | | "
              f"{_num(getattr(img, 'f1_max', None))} |"]
    if pix is not None:
        lines.append(f"| pixel | {_num(pix.auroc)} | {_num(pix.ap)} | {_num(pix.aupro)} | {_num(pix.f1_max)} |")
    lines += ["", f"mAD {_num(record.mad)}. F1max picks its threshold on the test labels: a diagnostic of "
              "separability, not a result."]
    if category_rows:
        lines += ["", "| category | image AUROC | image F1 | pixel AUROC | AUPRO | mAD |", "|---|---|---|---|---|---|"]
        for name, rec in category_rows:
            i, p = rec.image, rec.pixel
            lines.append(f"| {name} | {_num(getattr(i, 'auroc', None))} | {_num(getattr(i, 'f1', None))} | "
                         f"{_num(getattr(p, 'auroc', None))} | {_num(getattr(p, 'aupro', None))} | {_num(rec.mad)} |")
    return "\n".join(lines)


def score_histogram_figure(scores: np.ndarray, labels: np.ndarray, threshold: Optional[float], title: str = ""):
    """One chart: normal and anomalous test scores overlaid on shared bins, the image threshold as a line."""
    from ad.stats.cd_diagram import figure

    fig = figure(5.0, 3.0)
    ax = fig.add_subplot(1, 1, 1)
    finite = np.isfinite(scores)
    values = scores[finite]
    edges = np.histogram_bin_edges(np.r_[values, [threshold] if threshold is not None else []], bins=30)
    for mask, colour, name in ((labels == 0, "tab:blue", "normal"), (labels == 1, "tab:red", "anomalous")):
        sel = scores[finite & mask]
        if sel.size:
            ax.hist(sel, bins=edges, alpha=0.55, color=colour, label=f"{name} ({sel.size})")
    if threshold is not None:
        ax.axvline(threshold, color="black", ls="--", lw=1.2, label=f"threshold {threshold:.4g}")
    ax.set_xlabel("image score")
    ax.set_ylabel("test images")
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def run_log_dir(run_dir: "str | Path", run_name: Optional[str]) -> Path:
    """Where a run writes its events. A single run: `<run_dir>/tb`. A job of a Hydra sweep:
    `<sweep dir>/tb/<run name>` (e.g. `patchcore/mvtec/bottle model.k=3`), so `tensorboard --logdir <sweep>/tb`
    lists runs by what they are — not by job folder (`3_patchcore_mvtec_bottle_.../tb`). A second job of the
    same name in one sweep (an identical re-run) gets its job folder appended; a job run again into its own
    folder (resumed) replaces its earlier events."""
    run_dir = Path(run_dir)
    sweep = _sweep_dir()
    if sweep is None or not run_name:
        return run_dir / "tb"
    base = sweep / "tb"
    safe = "/".join(_safe_part(p) for p in _swept_only(run_name, sweep).split("/"))
    for name in (safe, f"{safe} ({run_dir.name})"):
        target = base / name
        target.mkdir(parents=True, exist_ok=True)
        owner = target / ".job"
        try:
            fd = os.open(owner, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if owner.read_text().strip() != str(run_dir.resolve()):
                continue  # another job of this sweep has the name
            for old in target.glob("events.out.tfevents.*"):
                old.unlink()  # this job, run again: its earlier events would double every curve
            return target
        with os.fdopen(fd, "w") as f:
            f.write(str(run_dir.resolve()))
        return target
    return run_dir / "tb"


def _swept_only(run_name: str, sweep: Path) -> str:
    """The run name with only the parameters that vary across the sweep (`model.k=3`), not the ones every job
    shares (`trainer=smoke`, given once on the command line): those say nothing about which run is which."""
    head, sep, params = run_name.partition(" ")
    varying = _sweep_keys(sweep)
    if not sep or varying is None:
        return run_name
    unified = " [unified]" if params.startswith("[unified]") else ""
    params = params[len("[unified]"):].strip() if unified else params
    keep = [p for p in _split_params(params) if p.partition("=")[0].lstrip("+~") in varying]
    return head + unified + (" " + ",".join(keep) if keep else "")


def _split_params(params: str) -> List[str]:
    import re

    return [p for p in re.split(r",(?=[^,=\[\]]+=)", params) if p]


def _sweep_keys(sweep: Path) -> Optional[set]:
    """Keys given several values in the sweep (`a=1,2`, `range(...)`, sweeper params), from the multirun.yaml
    Hydra writes before any job starts; None when unreadable (then every parameter is kept)."""
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from omegaconf import OmegaConf

        saved = OmegaConf.load(sweep / "multirun.yaml")
        args = [str(o) for o in (OmegaConf.select(saved, "hydra.overrides.task") or [])]
        params = OmegaConf.select(saved, "hydra.sweeper.params")
        if params is not None:
            args += [f"{k}={v}" for k, v in OmegaConf.to_container(params, resolve=False).items()]
        return {o.get_key_element().lstrip("+~") for o in OverridesParser.create().parse_overrides(args)
                if o.is_sweep_override()}
    except Exception:  # naming only: never fail a run over it
        return None


def _safe_part(part: str) -> str:
    part = part.strip().replace("\0", "")
    return "_" if part in ("", ".", "..") else part


def _sweep_dir() -> Optional[Path]:
    """The sweep directory when this process runs a job of a Hydra multirun, else None."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except (ImportError, ValueError):  # not under Hydra (tests, notebooks)
        return None
    return Path(hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else None


def _guard(method: Callable[..., None]) -> Callable[..., None]:
    """A logging call that fails on the disk (read-only or full tb/) turns TensorBoard off with one warning
    instead of failing the run."""
    @functools.wraps(method)
    def guarded(self: "TensorBoardLogger", *args: Any, **kwargs: Any) -> None:
        try:
            method(self, *args, **kwargs)
        except OSError as exc:
            self._off(exc)
    return guarded


class TensorBoardLogger:
    def __init__(self, log_dir: "str | Path", enabled: bool = True, log_images: bool = True,
                 log_histograms: bool = True, log_pr_curve: bool = True) -> None:
        self.enabled = enabled
        self.log_images, self.log_histograms, self.log_pr_curve = log_images, log_histograms, log_pr_curve
        self.writer = None
        self.log_dir = Path(log_dir)
        self.category_rows: List[tuple] = []  # (category, CategoryRecord) of a unified run, for the summary
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            try:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                tempfile.TemporaryFile(dir=self.log_dir).close()  # the event file needs a writable folder
                self.writer = SummaryWriter(log_dir=str(self.log_dir))
            except OSError as exc:
                self._off(exc)

    def _off(self, exc: BaseException) -> None:
        """TensorBoard is a view of the run, never a reason to lose it: warn once and go on without it."""
        log.warning("TensorBoard logging is off for this run: cannot write %s (%s); the run goes on and writes "
                    "results.json, predictions.csv and model.pt as usual (make the folder writable to get tb/)",
                    self.log_dir, " ".join(str(exc).split()) or exc.__class__.__name__)
        writer, self.writer = self.writer, None
        if writer is not None:
            try:
                writer.close()
            except OSError:
                pass

    @_guard
    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    @_guard
    def text(self, tag: str, text: str) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, text)

    @_guard
    def log_test(self, prefix: str, record: Any, test: Any, normalized_scores: np.ndarray,
                 images: Optional[List[Dict[str, Any]]] = None, pixel_range: tuple[float, float] = (0.0, 1.0)) -> None:
        """One category's test results (`prefix` "" for a single-class run, "<category>/" for unified): the
        overlaid score histogram with the threshold, PR curve, best/worst overlays. Its metrics go into the
        run's text summary (`log_final`), not into single-point charts."""
        if self.writer is None:
            return
        if prefix:
            self.category_rows.append((prefix.rstrip("/"), record))
        labels = test.labels.astype(bool)
        if self.log_histograms and len(test.scores):
            threshold = getattr(getattr(record, "image", None), "threshold", None)
            fig = score_histogram_figure(np.asarray(test.scores, float), test.labels, threshold, prefix.rstrip("/"))
            self.writer.add_figure(f"test/{prefix}score_histogram", fig, 0, close=True)
        if self.log_pr_curve and labels.any() and (~labels).any():
            self.writer.add_pr_curve(f"test/{prefix}pr_curve", torch.from_numpy(labels),
                                     torch.from_numpy(np.clip(np.nan_to_num(normalized_scores), 0, 1)), 0)
        if self.log_images and images:
            lo, hi = pixel_range
            tiles = [captioned(overlay(it["image"], it["map"], it.get("mask"), lo, hi), _caption(it)) for it in images]
            tall = max(x.shape[0] for x in tiles)  # captions wrap to different heights: pad with black
            tiles = [np.pad(x, ((0, tall - x.shape[0]), (0, 0), (0, 0))) for x in tiles]
            grid = np.stack(tiles).transpose(0, 3, 1, 2)  # NCHW uint8
            self.writer.add_images(f"test/{prefix}overlays_best_and_worst", grid, 0, dataformats="NCHW")
            self.writer.add_text(f"test/{prefix}overlays_legend", "  \n".join(f"{i}: {it['caption']}" for i, it in enumerate(images)))
        self.writer.flush()

    @_guard
    def log_final(self, record: Any, hparams: Mapping[str, Any]) -> None:
        """The run's HPARAMS entry (the key final metrics, means over categories for a unified run) and its one
        text summary with everything else."""
        if self.writer is None:
            return
        hp = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()}
        hp.update(flatten_metrics(record))
        # No metric dict: a metric would need a scalar series (a one-point chart); run_name="." keeps the entry
        # in this run's directory instead of a timestamped sub-run.
        self.writer.add_hparams(hp, {}, run_name=".")
        self.writer.add_text("summary", summary_markdown(record, self.category_rows))
        self.writer.flush()

    @_guard
    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _caption(item: Mapping[str, Any]) -> List[str]:
    """[image name, "score s  label -> decision OK|WRONG"] (the caption text alone for older callers)."""
    if "score" not in item:
        return [str(item.get("caption", ""))[:40]]
    truth = "anomalous" if item["label"] else "normal"
    if item["decision"] is None:  # the run has no threshold (a single training image)
        return [str(item["name"])[:40], f"score {item['score']:.4g}", f"{truth}, no threshold"]
    said = "anomalous" if item["decision"] else "normal"
    verdict = "OK" if bool(item["label"]) == item["decision"] else "WRONG"
    return [str(item["name"])[:40], f"score {item['score']:.4g}", f"{truth} -> {said} {verdict}"]
