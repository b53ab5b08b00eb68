"""Score histograms of the report: per category, one panel per model with its normal and anomalous test
scores and the image threshold (fitted on validation normals) as a vertical line."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ad.report.gallery import ModelRun
from ad.stats.cd_diagram import figure


def score_histograms(runs: Sequence[ModelRun], path: Path) -> str:
    n = len(runs)
    fig = figure(min(3.0 * n, 12.0), 2.2)
    for k, r in enumerate(runs):
        ax = fig.add_subplot(1, n, k + 1)
        s, y = r.data.scores, r.data.labels
        finite = np.isfinite(s)
        bins = np.histogram_bin_edges(s[finite], bins=20) if finite.any() else 10
        ax.hist(s[finite & (y == 0)], bins=bins, alpha=0.6, color="tab:blue", label="normal")
        ax.hist(s[finite & (y == 1)], bins=bins, alpha=0.6, color="tab:red", label="anomalous")
        if r.image_threshold is not None:
            ax.axvline(r.image_threshold, color="black", ls="--", lw=1, label="threshold")
        ax.set_title(r.column.label, fontsize=8)
        ax.tick_params(labelsize=6)
        if k == 0:
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path.name
