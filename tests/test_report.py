"""ad-report on a fake sweep with real image files, saved predictions and maps: every referenced file exists,
nothing is fetched, the gallery shows every model for the same images in the documented order, categories
without masks and failed jobs are handled; and a real headless Chromium renders it with every image loaded."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ad.rundir.maps_store import MapsWriter, save_test_maps
from ad.metrics import image_auroc
from ad.report import build_report
from tests._fake_sweep import fake_results, make_job, unified_results, write_predictions

REPO = Path(__file__).resolve().parent.parent
MODELS = {"good": 2.0, "fair": 0.8, "poor": 0.2}
CATS = {"syn_a": True, "syn_b": False}  # category -> has masks
N_NORM, N_ANOM, SIZE = 8, 6, 32


def _images(root: Path, cat: str):
    rng = np.random.default_rng(zlib.crc32(cat.encode()))
    labels = np.r_[np.zeros(N_NORM, int), np.ones(N_ANOM, int)]
    paths = []
    for i, l in enumerate(labels):
        p = root / "data" / cat / ("good" if l == 0 else "scratch") / f"{i:03d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((SIZE, SIZE, 3)) * 255).astype(np.uint8)).save(p)
        paths.append(str(p))
    return paths, labels


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    sw = root / "sw"
    i = 0
    for cat, has_masks in CATS.items():
        paths, labels = _images(root, cat)
        common = np.random.default_rng(1).standard_normal(labels.size)
        for model, sep in MODELS.items():
            rng = np.random.default_rng(i)
            scores = common + sep * labels + 0.5 * rng.standard_normal(labels.size)
            auroc = image_auroc(labels, scores)
            res = fake_results(model, "synthetic", cat, 0, auroc, 0.9 if has_masks else None, 0.7)
            res["thresholds"] = {"image": 0.5, "pixel": 0.9}
            job = make_job(sw, f"{i}_{model}_{cat}", [f"model={model}", f"category={cat}"], res, model=model,
                           dataset="synthetic", category=cat)
            write_predictions(job, paths, labels, scores, threshold=0.5)
            masks = np.zeros((labels.size, SIZE, SIZE), np.uint8)
            masks[labels == 1, 8:16, 8:16] = 1
            amaps = rng.random(masks.shape).astype(np.float32) * 0.8 + sep * masks
            save_test_maps(job, paths, labels, amaps, masks if has_masks else None,
                           labels == 1 if has_masks else None)
            i += 1
    _unified_job(root, sw)
    make_job(sw, "9_poor_syn_c", ["model=poor", "category=syn_c"],
             fake_results("poor", "synthetic", "syn_c", 0, None, status="failed", error="DataError: no such category"),
             model="poor", dataset="synthetic", category="syn_c")
    return sw


def _unified_job(root: Path, sw: Path) -> None:
    """A unified run of "good" over both categories: one predictions.csv (category column), one maps file."""
    aurocs, rows = {}, []
    writer = None
    job = make_job(sw, "8_good_unified", ["model=good", "setting=unified"], None, model="good",
                   dataset="synthetic", category="all")
    writer = MapsWriter(job)
    for cat, has_masks in CATS.items():
        paths, labels = _images(root, cat)
        scores = np.random.default_rng(7).standard_normal(labels.size) + 1.5 * labels
        aurocs[cat] = image_auroc(labels, scores)
        rows += [[p, cat, "x", l, s, s, int(s >= 0.5)] for p, l, s in zip(paths, labels, scores)]
        masks = np.zeros((labels.size, SIZE, SIZE), np.uint8)
        masks[labels == 1, 8:16, 8:16] = 1
        writer.add(cat, paths, labels, np.random.default_rng(3).random(masks.shape) + masks,
                   masks if has_masks else None, labels == 1 if has_masks else None)
    writer.close()
    import csv
    import json

    with open(job / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "category", "defect_type", "label", "score", "normalized_score", "is_anomalous"])
        w.writerows(rows)
    (job / "results.json").write_text(json.dumps(unified_results("good", "synthetic", aurocs)))


@pytest.fixture(scope="module")
def report(sweep, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    return build_report([sweep], out, bootstrap=100, max_images=10, thumb=64)


def test_every_referenced_file_exists_and_nothing_is_fetched(report):
    index = report["index"]
    text = index.read_text()
    srcs = re.findall(r"src='([^']+)'", text)
    assert len(srcs) > 20
    for s in srcs:
        assert (index.parent / s).is_file(), s
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", text)  # no network reference of any kind
    assert report["bytes"] < 2_000_000


def test_sections_tables_and_failures(report):
    text = report["index"].read_text()
    for sid in ("summary", "results", "rankings", "cat_synthetic_syn_a", "cat_synthetic_syn_b", "failed"):
        assert f"id='{sid}'" in text
    assert "<table id=results>" in text and "<span class=ci>[" in text  # intervals in the table
    assert "DataError: no such category" in text
    assert report["best"]["synthetic"] in ("good setting=single", "good setting=unified")
    assert "setting=unified" in text


def _gallery(text: str, cat: str) -> str:
    return text.split(f"id='cat_synthetic_{cat}'", 1)[1].split("<h2", 1)[0]


def test_gallery_shows_every_model_for_the_same_images_in_order(report, sweep):
    text = report["index"].read_text()
    for cat, has_masks in CATS.items():
        g = _gallery(text, cat)
        rows = g.split("<table class=gallery>", 1)[1].split("</table>", 1)[0].split("<tr")[2:]
        assert len(rows) == 10
        for r in rows:
            assert r.count("alt='heatmap'") == len(MODELS) + 1  # each model's map (and the unified run's)
            assert ("alt='mask'" in r) == has_masks
        if not has_masks:
            assert "no mask" in g
    # order: images where the decisions differ first (rows marked dis), then by how wrong the worst model is
    g = _gallery(text, "syn_a")
    flags = ["class=dis" in r.split(">", 1)[0] for r in g.split("<table class=gallery>", 1)[1].split("<tr")[2:]]
    assert flags == sorted(flags, reverse=True) and any(flags)


def test_gallery_order_matches_an_independent_ranking(sweep):
    from ad.aggregate import build
    from ad.aggregate.intervals import RunCache, read_predictions
    from ad.aggregate.jobs import collect_jobs
    from ad.report.gallery import model_runs, select_images

    jobs = collect_jobs([sweep])
    cache = RunCache(0)
    table = build(jobs, ["image.auroc"], bootstrap=0, cache=cache)
    items = select_images(model_runs(table, cache, ("synthetic", "syn_a")), 100)
    preds = {j.get("model"): read_predictions(j.path) for j in jobs if j.get("category") == "syn_a"}
    preds["unified"] = read_predictions(next(j.path for j in jobs if j.unified), "syn_a")
    paths = preds["good"].paths
    expect = []
    for k, p in enumerate(paths):
        decisions = {m: bool(d.decisions[k]) for m, d in preds.items()}
        label = preds["good"].labels[k]
        wrong = []
        for d in preds.values():
            rank = (np.argsort(np.argsort(d.scores, kind="stable"), kind="stable")[k]) / (len(paths) - 1)
            wrong.append(1 - rank if label else rank)
        expect.append((len(set(decisions.values())) == 1, -max(wrong), p))
    assert [g.path for g in items] == [p for *_, p in sorted(expect)]


def test_cli_errors_are_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ad.report", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "nope" in proc.stderr


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian package chromium not installed (.ci/run installs it: "
                                             "apt-get install chromium)")
def test_real_browser_renders_report_with_every_image(report, tmp_path):
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'prof'}",
             "--virtual-time-budget=10000"]
    url = report["index"].resolve().as_uri()
    dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True, timeout=180).stdout
    status = re.search(r'<p id="img-status"[^>]*data-broken="(\d+)"[^>]*>([^<]*)</p>', dom)
    assert status is not None, dom[-2000:]
    n_img = len(re.findall(r"src='assets/", report["index"].read_text()))
    assert status.group(1) == "0" and status.group(2) == f"All {n_img} images loaded."
    assert '<table id="results">' in dom and dom.count('class="gallery"') == len(CATS)
    shot = tmp_path / "shot.png"
    subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1200,1600", url], capture_output=True,
                   timeout=180)
    with Image.open(shot) as im:
        assert im.size == (1200, 1600)
        # a rendered page, not a blank one: many distinct colours (heatmaps, text)
        assert len(np.unique(np.asarray(im.convert("RGB").resize((200, 260))).reshape(-1, 3), axis=0)) > 500
