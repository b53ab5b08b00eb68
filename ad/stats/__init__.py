"""Statistics for defensible comparisons (numpy/scipy only).

* `bootstrap`: stratified bootstrap CIs per run (normal and anomalous test images resampled separately, seeded)
  for image AUROC/AP/F1-max and, from the saved anomaly maps, pixel AUROC and AUPRO; paired bootstrap p-values.
* `delong`: DeLong's test for two correlated AUROCs (fast midrank algorithm, Sun & Xu 2014).
* `ranks`: Friedman test, Nemenyi critical difference, Wilcoxon signed-rank with Holm correction, t-based CIs
  over seeds.
* `cd_diagram`: the critical-difference diagram (PNG).
"""
from ad.stats.bootstrap import (
    IMAGE_METRICS,
    PIXEL_METRICS,
    Interval,
    bootstrap_image,
    bootstrap_pixel,
    paired_bootstrap,
    stratified_resamples,
)
from ad.stats.delong import delong_test, delong_covariance
from ad.stats.ranks import (
    FriedmanResult,
    average_ranks,
    friedman,
    holm,
    nemenyi_cd,
    nemenyi_q,
    seed_interval,
    wilcoxon_holm,
)

__all__ = [
    "IMAGE_METRICS",
    "PIXEL_METRICS",
    "Interval",
    "bootstrap_image",
    "bootstrap_pixel",
    "paired_bootstrap",
    "stratified_resamples",
    "delong_test",
    "delong_covariance",
    "FriedmanResult",
    "average_ranks",
    "friedman",
    "holm",
    "nemenyi_cd",
    "nemenyi_q",
    "seed_interval",
    "wilcoxon_holm",
]
