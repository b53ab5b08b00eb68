"""The aggregator's statistics on fake sweeps with saved predictions and maps: intervals equal ad.stats and an
independent bootstrap, significance against a baseline (DeLong p in results.csv), rankings and CD diagrams,
unified runs as one row per category with a setting column."""
from __future__ import annotations

import csv
import zlib
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from ad import aggregate as agg
from ad.rundir.maps_store import save_test_maps
from ad.stats import bootstrap_image, bootstrap_pixel, delong_test
from tests._fake_sweep import fake_results, make_job, unified_results, write_predictions
from tests.test_aggregate import md_table as _md

N_NORM, N_ANOM = 60, 40
SEP = {"strong": 1.6, "mid": 0.9, "weak": 0.4}  # class separation of each fake model's scores


def _scores(model: str, cat: str, seed: int):
    rng = np.random.default_rng(zlib.crc32(f"{model}/{cat}/{seed}".encode()))
    labels = np.r_[np.zeros(N_NORM, int), np.ones(N_ANOM, int)]
    paths = [f"/d/{cat}/test/{'good' if l == 0 else 'scratch'}/{i:03d}.png" for i, l in enumerate(labels)]
    common = np.random.default_rng(zlib.crc32(cat.encode())).standard_normal(labels.size)  # shared difficulty
    return paths, labels, common + SEP[model] * labels + 0.6 * rng.standard_normal(labels.size)


def _auroc(labels, scores):
    from ad.metrics import image_auroc

    return image_auroc(labels, scores)


def _job(root: Path, i: int, model: str, cat: str, seed: int = 0, maps: bool = False) -> Path:
    paths, labels, scores = _scores(model, cat, seed)
    job = make_job(root, f"{i}_{model}_{cat}_{seed}", [f"model={model}", f"category={cat}", f"seed={seed}"],
                   fake_results(model, "synthetic", cat, seed, _auroc(labels, scores), 0.9, 0.8),
                   model=model, dataset="synthetic", category=cat, seed=seed)
    write_predictions(job, paths, labels, scores)
    if maps:
        rng = np.random.default_rng(i)
        masks = np.zeros((labels.size, 16, 16), np.uint8)
        masks[labels == 1, 4:9, 5:10] = 1
        amaps = rng.random(masks.shape).astype(np.float32) + SEP[model] * masks
        save_test_maps(job, paths, labels, amaps, masks, labels == 1)
    return job


@pytest.fixture()
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "sw"
    i = 0
    for model in SEP:
        for cat in ("syn_a", "syn_b", "syn_c"):
            _job(root, i, model, cat, maps=(cat == "syn_a"))
            i += 1
    return root


def _csv(path: Path):
    with open(path, newline="") as f:
        return {(r["dataset"], r["category"]): r for r in csv.DictReader(f)}


def test_intervals_equal_ad_stats_and_an_independent_bootstrap(sweep, tmp_path):
    agg.aggregate([sweep], out=tmp_path / "o", metrics=["image.auroc", "image.ap", "pixel.auroc"], plots=False,
                  bootstrap=400)
    rows = _csv(tmp_path / "o" / "results.csv")
    paths, labels, scores = _scores("mid", "syn_b", 0)
    order = np.argsort(paths)
    seed = zlib.crc32(b"synthetic/syn_b") % 2**32
    ref = bootstrap_image(labels[order], scores[order], n_boot=400, seed=seed)
    r = rows[("synthetic", "syn_b")]
    assert float(r["mid | image.auroc | ci_low"]) == pytest.approx(ref["auroc"].low, abs=1e-12)
    assert float(r["mid | image.ap | ci_high"]) == pytest.approx(ref["ap"].high, abs=1e-12)
    # an independent percentile bootstrap (other seed, plain loop, sklearn-free AUROC by ranks) within MC error
    rng = np.random.default_rng(123)
    neg, pos = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    vals = []
    for _ in range(2000):
        i = np.r_[rng.choice(neg, neg.size), rng.choice(pos, pos.size)]
        rk = stats.rankdata(scores[i])
        vals.append((rk[labels[i] == 1].sum() - N_ANOM * (N_ANOM + 1) / 2) / (N_ANOM * N_NORM))
    lo, hi = np.percentile(vals, [2.5, 97.5])
    assert float(r["mid | image.auroc | ci_low"]) == pytest.approx(lo, abs=0.015)
    assert float(r["mid | image.auroc | ci_high"]) == pytest.approx(hi, abs=0.015)
    # pixel intervals only where maps were saved (syn_a), never invented elsewhere
    assert rows[("synthetic", "syn_a")]["mid | pixel.auroc | ci_low"] != ""
    assert rows[("synthetic", "syn_b")]["mid | pixel.auroc | ci_low"] == ""
    assert rows[("synthetic", "mean")]["mid | pixel.auroc | ci_low"] == ""  # not every category has maps
    assert rows[("synthetic", "mean")]["mid | image.auroc | ci_low"] != ""
    md = (tmp_path / "o" / "results.md").read_text()
    assert "stratified bootstrap interval" in md


def test_pixel_interval_from_saved_maps(sweep, tmp_path):
    res = agg.aggregate([sweep], out=tmp_path / "o", metrics=["pixel.auroc", "pixel.aupro"], plots=False, bootstrap=200)
    job = next(j for j in res["table"].jobs if j.get("model") == "weak" and j.get("category") == "syn_a")
    from ad.rundir.maps_store import load_test_maps

    saved = load_test_maps(job.path)
    order = np.argsort(saved.paths)
    ref = bootstrap_pixel(saved.labels[order], saved.masks[order], saved.maps[order], n_boot=200,
                          seed=zlib.crc32(b"synthetic/syn_a") % 2**32)
    cell = res["table"].cell(("synthetic", "syn_a"), next(c for c in res["table"].columns if c.model == "weak"),
                             "pixel.aupro")
    assert cell.stat.ci == pytest.approx((ref["aupro"].low, ref["aupro"].high), abs=1e-12)


def test_baseline_marks_and_delong_p(sweep, tmp_path):
    res = agg.aggregate([sweep], out=tmp_path / "o", metrics=["image.auroc"], plots=False, bootstrap=300,
                        baseline="weak")
    rows = _csv(tmp_path / "o" / "results.csv")
    pa, la, sa = _scores("strong", "syn_c", 0)
    _, _, sb = _scores("weak", "syn_c", 0)
    o = np.argsort(pa)
    p = delong_test(la[o], sa[o], sb[o]).p
    assert float(rows[("synthetic", "syn_c")]["strong | image.auroc | p_vs_baseline"]) == pytest.approx(p, abs=1e-12)
    assert p < 0.05
    assert rows[("synthetic", "syn_c")]["weak | image.auroc | p_vs_baseline"] == ""  # the baseline itself
    header, table_rows = _md(res["markdown"])
    by = {(r[0], r[1]): dict(zip(header[2:], r[2:])) for r in table_rows}
    assert by[("synthetic", "syn_c")]["strong · image AUROC"].endswith("▲")
    assert by[("**synthetic**", "**mean**")]["strong · image AUROC"].endswith("▲")
    assert "▲" not in by[("synthetic", "syn_c")]["weak · image AUROC"]
    assert "significantly better / worse than the baseline `weak`" in res["markdown"]
    with pytest.raises(agg.AggregateError, match="--baseline 'nope' matches no column; choose one of"):
        agg.aggregate([sweep], out=tmp_path / "o", plots=False, baseline="nope")


def test_seed_cells_get_the_interval_of_their_mean(tmp_path):
    root = tmp_path / "sw"
    for i, seed in enumerate((0, 1)):
        _job(root, i, "mid", "syn_a", seed)
    res = agg.aggregate([root], out=tmp_path / "o", metrics=["image.auroc"], plots=False, bootstrap=300)
    cell = res["table"].cell(("synthetic", "syn_a"), res["table"].columns[0], "image.auroc")
    assert cell.n == 2 and cell.stat.ci is not None
    seed = zlib.crc32(b"synthetic/syn_a") % 2**32
    reps = []
    for s in (0, 1):
        paths, labels, scores = _scores("mid", "syn_a", s)
        o = np.argsort(paths)
        from ad.stats.bootstrap import image_replicates, stratified_resamples

        reps.append(image_replicates(labels[o], scores[o], stratified_resamples(labels[o], 300, seed))["auroc"])
    assert cell.stat.ci == pytest.approx(tuple(np.percentile(np.mean(reps, axis=0), [2.5, 97.5])), abs=1e-12)


def test_rankings_and_cd_diagram(sweep, tmp_path):
    res = agg.aggregate([sweep], out=tmp_path / "o", metrics=["image.auroc"], bootstrap=0)
    assert (tmp_path / "o" / "cd_synthetic_image_auroc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    values = [[_auroc(*_scores(m, c, 0)[1:]) for m in ("mid", "strong", "weak")] for c in ("syn_a", "syn_b", "syn_c")]
    chi2 = stats.friedmanchisquare(*np.array(values).T).statistic
    assert f"Friedman χ² = {chi2:.2f}" in res["markdown"]
    assert "| mid | strong |" in res["markdown"]  # Wilcoxon pairs
    assert "[" not in _md(res["markdown"])[1][0][2]  # --bootstrap 0: no intervals


def test_unified_runs_give_category_rows_and_a_setting_column(tmp_path):
    root = tmp_path / "sw"
    cats = {"syn_a": 0.91, "syn_b": 0.83}
    job = make_job(root, "0_mid_unified", ["model=mid", "setting=unified"], unified_results("mid", "synthetic", cats),
                   model="mid", dataset="synthetic", category="all")
    paths, labels, scores = [], [], []
    for c in cats:
        p, l, s = _scores("mid", c, 0)
        paths += p
        labels += list(l)
        scores += list(s)
    with open(job / "predictions.csv", "w", newline="") as f:  # one file with a category column, as unified runs
        w = csv.writer(f)
        w.writerow(["path", "category", "defect_type", "label", "score", "normalized_score", "is_anomalous"])
        for p, l, s in zip(paths, labels, scores):
            w.writerow([p, p.split("/")[2], "x", l, s, s, int(s > 0.5)])
    for i, (c, v) in enumerate(cats.items()):
        _job(root, 10 + i, "mid", c)
    res = agg.aggregate([root], out=tmp_path / "o", metrics=["image.auroc"], plots=False, bootstrap=100)
    table = res["table"]
    assert table.group == ["model", "setting"]
    assert [c.label for c in table.columns] == ["mid setting=single", "mid setting=unified"]
    uni = table.columns[1]
    assert table.cell(("synthetic", "syn_a"), uni, "image.auroc").mean == pytest.approx(0.91)
    assert table.cell(("synthetic", "syn_b"), uni, "image.auroc").mean == pytest.approx(0.83)
    assert table.cell(("synthetic", "syn_b"), uni, "image.auroc").stat.ci is not None  # its own category's images
    assert table.mean_cell(table.rows, uni, "image.auroc").mean == pytest.approx(0.87)
    with open(tmp_path / "o" / "jobs.csv", newline="") as f:
        jobs = [r for r in csv.DictReader(f) if r["setting"] == "unified"]
    assert sorted(r["category"] for r in jobs) == ["syn_a", "syn_b"]


def test_mad_metric(tmp_path):
    root = tmp_path / "sw"
    res = fake_results("m", "synthetic", "syn_a", 0, 0.9, 0.8, 0.7)
    res["pixel"]["f1_max"] = 0.5
    make_job(root, "0", ["model=m"], res, model="m", dataset="synthetic", category="syn_a")
    out = agg.aggregate([root], out=tmp_path / "o", metrics=["image.auroc", "mad"], plots=False, bootstrap=0)
    header, rows = _md(out["markdown"])
    assert header[-1] == "m · mAD"
    # mAD = mean of image AUROC/AP/F1max, pixel AUROC/AP/F1max, AUPRO
    assert rows[0][-1] == f"{100 * np.mean([0.9, 0.9, 0.85, 0.8, 0.41, 0.5, 0.7]):.1f}"
