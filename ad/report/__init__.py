"""`ad-report SWEEP_DIR... --out DIR`: a static HTML report of sweeps, opened from disk (no server, no network).

index.html + assets/ (PNG/JPEG files next to it): a summary (best model per dataset and what differs
significantly from the baseline), the results table with bootstrap intervals, critical-difference diagrams
and rankings, per category the score histograms with thresholds, per-defect AUROC and a gallery comparing the
models image by image (test image, ground truth, each model's heatmap on one colour scale per model with its
pixel threshold drawn in white, scores and decisions; disagreements and worst cases first), and the failed
jobs with their errors.
"""
from ad.report.build import build_report, main

__all__ = ["build_report", "main"]
