"""The aggregator on fake sweep directories: exact rows, means computed here independently, failures listed."""
from __future__ import annotations

import csv
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ad import aggregate as agg
from tests._fake_sweep import fake_results, make_job

REPO = Path(__file__).resolve().parent.parent
METRICS = ["image.auroc", "pixel.auroc", "pixel.aupro"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# (model, category, seed) -> (image.auroc, pixel.auroc, pixel.aupro); every value distinct, no pattern
SYN = {
    ("patchcore", "syn_disc", 0): (0.91, 0.95, 0.71),
    ("patchcore", "syn_disc", 1): (0.97, 0.93, 0.75),
    ("patchcore", "syn_tiles", 0): (0.88, 0.90, 0.62),
    ("patchcore", "syn_tiles", 1): (0.84, 0.96, 0.66),
    ("padim", "syn_disc", 0): (0.79, 0.97, 0.81),
    ("padim", "syn_disc", 1): (0.83, 0.94, 0.77),
    ("padim", "syn_tiles", 0): (0.99, 0.89, 0.58),
    ("padim", "syn_tiles", 1): (0.93, 0.92, 0.69),
}
BOTTLE_PATCHCORE = 0.995  # mvtec bottle: image-level only here (pixel: null)
BAD_ROOT_ERROR = "DataError: dataset.root=/nonexistent/mvtec does not exist; set dataset.root to your MVTec AD folder"


@pytest.fixture()
def sweep(tmp_path: Path) -> Path:
    """Two sweeps under one parent: 8 ok synthetic jobs (2 models × 2 categories × 2 seeds), plus an ok
    PatchCore job on bottle, a failed PaDiM job on bottle (bad root), and a crashed job (no results.json)."""
    root = tmp_path / "multirun"
    for i, ((model, cat, seed), (ia, pa, pro)) in enumerate(SYN.items()):
        make_job(root / "2024-01-01_10-00-00", f"{i}_{model}_synthetic_{cat}_seed={seed}",
                 [f"model={model}", f"category={cat}", f"seed={seed}", "trainer=smoke", "launcher=joblib"],
                 fake_results(model, "synthetic", cat, seed, ia, pa, pro),
                 model=model, dataset="synthetic", category=cat, seed=seed)
    make_job(root / "2024-01-02_09-00-00", "0_patchcore_mvtec_bottle", ["model=patchcore", "category=bottle"],
             fake_results("patchcore", "mvtec", "bottle", 0, BOTTLE_PATCHCORE), model="patchcore",
             dataset="mvtec", category="bottle")
    make_job(root / "2024-01-02_09-00-00", "1_padim_mvtec_bottle_dataset.root=-nonexistent-mvtec",
             ["model=padim", "category=bottle", "dataset.root=/nonexistent/mvtec"],
             fake_results("padim", "mvtec", "bottle", 0, None, status="failed", error=BAD_ROOT_ERROR),
             model="padim", dataset="mvtec", category="bottle")
    make_job(root / "2024-01-01_10-00-00", "8_padim_synthetic_syn_disc_seed=2",
             ["model=padim", "category=syn_disc", "seed=2", "trainer=smoke", "launcher=joblib"], None,
             model="padim", dataset="synthetic", category="syn_disc", seed=2)
    return root


def md_cells(md: str) -> dict:
    """The tidy tables of results.md as {(dataset, category or "mean"): {"<variant> · <metric>": text}}; the
    variant is written like a column label ("padim", "padim seed=0", "PatchCore-25% (paper)"), bold removed."""
    from ad.aggregate.table import metric_label

    out: dict = {}
    place = None
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## ") or line.startswith("### "):
            title = line.lstrip("#").strip()
            if title.startswith("All datasets"):
                place = ("all", "mean")
            elif " — mean over " in title:
                place = (title.split(" — ")[0], "mean")
            elif title.endswith(" per category"):
                place = (title[: -len(" per category")], None)
            elif " / " in title:
                place = tuple(title.split(" / ", 1))
            else:
                place = None
        elif line.startswith("| ") and place is not None and i + 1 < len(lines) and lines[i + 1].startswith("|-"):
            header = [c.strip() for c in line.strip().strip("|").split(" | ")]
            is_metric = [h in {metric_label(m) for m in ALL_METRICS} for h in header]
            first_metric = is_metric.index(True)
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip().replace("**", "") for c in lines[i].strip().strip("|").split(" | ")]
                row = dict(zip(header, cells))
                key = (place[0], row["category"] if place[1] is None else place[1])
                variant_keys = [h for h in header[:first_metric] if h != "category"]
                parts = [row[h] for h in variant_keys if row[h] != ""]
                if parts and parts[0].endswith("(paper)"):
                    variant = parts[0]
                else:
                    variant = " ".join(v if h in ("model", "backbone") else f"{h}={v}" for h, v in zip(variant_keys, parts))
                for h, c in zip(header[first_metric:], cells[first_metric:]):
                    out.setdefault(key, {})[f"{variant} · {h}"] = c
                i += 1
            continue
        i += 1
    return out


ALL_METRICS = ["image.auroc", "pixel.auroc", "pixel.aupro", "mad", "image.ap", "image.f1"]


def expected(model: str, cat: str, k: int) -> tuple[float, float]:
    vals = [v[k] for (m, c, _), v in SYN.items() if m == model and c == cat]
    return statistics.mean(vals), statistics.stdev(vals)


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def test_markdown_rows_cells_and_failures(sweep, tmp_path):
    res = agg.aggregate([sweep], out=tmp_path / "out", metrics=METRICS)
    md = res["markdown"]
    assert (tmp_path / "out" / "results.md").read_text() == md
    by = md_cells(md)
    # one table per dataset; a one-category dataset (mvtec: bottle) has no "mean" row repeating it
    assert list(by) == [("mvtec", "bottle"), ("synthetic", "mean"), ("synthetic", "syn_disc"),
                        ("synthetic", "syn_tiles"), ("all", "mean")]
    assert set(by[("synthetic", "mean")]) == {f"{m} · {lbl}" for m in ("padim", "patchcore")
                                               for lbl in ("image AUROC", "pixel AUROC", "pixel AUPRO")}
    assert "| model | image AUROC | pixel AUROC | pixel AUPRO |" in md  # metrics are columns, models are rows
    # per-category cells: mean ± sample std over the two seeds
    for model in ("patchcore", "padim"):
        for cat in ("syn_disc", "syn_tiles"):
            for k, lbl in enumerate(("image AUROC", "pixel AUROC", "pixel AUPRO")):
                m, s = expected(model, cat, k)
                text = by[("synthetic", cat)][f"{model} · {lbl}"]
                assert text.startswith(f"{pct(m)} ± {pct(s)}"), (model, cat, lbl, text)
    # the crashed seed-2 job flags its cell but does not change it
    assert by[("synthetic", "syn_disc")]["padim · image AUROC"].endswith("†")
    assert not by[("synthetic", "syn_tiles")]["padim · image AUROC"].endswith("†")
    # failed job: shown as failed, never a number; image-level-only data: pixel metrics n/a
    assert by[("mvtec", "bottle")]["padim · image AUROC"] == "failed"
    assert by[("mvtec", "bottle")]["patchcore · image AUROC"] == pct(BOTTLE_PATCHCORE)
    assert by[("mvtec", "bottle")]["patchcore · pixel AUROC"] == "n/a"
    # overall mean: padim has 2 of 3 categories (bottle failed) -> marked incomplete, failed job excluded
    padim_all = statistics.mean([expected("padim", c, 0)[0] for c in ("syn_disc", "syn_tiles")])
    assert by[("all", "mean")]["padim · image AUROC"] == f"{pct(padim_all)} (2/3)"
    pc_all = statistics.mean([expected("patchcore", c, 0)[0] for c in ("syn_disc", "syn_tiles")] + [BOTTLE_PATCHCORE])
    assert by[("all", "mean")]["patchcore · image AUROC"] == pct(pc_all)

    # failed and missing jobs are listed with their dirs and errors
    section = md.split("## Failed or missing jobs (2)", 1)[1]
    assert "1_padim_mvtec_bottle_dataset.root=-nonexistent-mvtec" in section and BAD_ROOT_ERROR in section
    assert "8_padim_synthetic_syn_disc_seed=2" in section and agg.MISSING_NOTE in section
    assert "Jobs: 11 (9 ok, 1 failed, 1 missing)" in md


def test_csv_means_exclude_failures(sweep, tmp_path):
    out = tmp_path / "out"
    agg.aggregate([sweep], out=out, metrics=METRICS)
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["dataset"], r["category"]) for r in rows] == [
        ("mvtec", "bottle"), ("mvtec", "mean"), ("synthetic", "syn_disc"), ("synthetic", "syn_tiles"),
        ("synthetic", "mean"), ("all", "mean")]
    by = {(r["dataset"], r["category"]): r for r in rows}

    def col(model, metric, stat):
        return f"{model} | {metric} | {stat}"

    for model in ("patchcore", "padim"):
        for k, metric in enumerate(METRICS):
            for cat in ("syn_disc", "syn_tiles"):
                m, s = expected(model, cat, k)
                r = by[("synthetic", cat)]
                assert float(r[col(model, metric, "mean")]) == pytest.approx(m, abs=1e-12)
                assert float(r[col(model, metric, "std")]) == pytest.approx(s, abs=1e-12)
                assert r[col(model, metric, "n")] == "2"
            # dataset mean = mean over categories; ± = std over seeds of the per-seed dataset means
            cat_means = [expected(model, c, k)[0] for c in ("syn_disc", "syn_tiles")]
            per_seed = [statistics.mean(SYN[(model, c, seed)][k] for c in ("syn_disc", "syn_tiles")) for seed in (0, 1)]
            r = by[("synthetic", "mean")]
            assert float(r[col(model, metric, "mean")]) == pytest.approx(statistics.mean(cat_means), abs=1e-12)
            assert float(r[col(model, metric, "std")]) == pytest.approx(statistics.stdev(per_seed), abs=1e-12)
    assert by[("synthetic", "syn_disc")][col("padim", "image.auroc", "n_failed")] == "1"  # the crashed seed
    bottle = by[("mvtec", "bottle")]
    assert bottle[col("padim", "image.auroc", "mean")] == "" and bottle[col("padim", "image.auroc", "n")] == "0"
    assert bottle[col("padim", "image.auroc", "n_failed")] == "1"
    assert float(bottle[col("patchcore", "image.auroc", "mean")]) == pytest.approx(BOTTLE_PATCHCORE)
    overall = by[("all", "mean")]
    assert float(overall[col("padim", "image.auroc", "mean")]) == pytest.approx(
        statistics.mean([expected("padim", c, 0)[0] for c in ("syn_disc", "syn_tiles")]), abs=1e-12)
    assert (overall[col("padim", "image.auroc", "n")], overall[col("padim", "image.auroc", "n_failed")]) == ("2", "1")

    with open(out / "jobs.csv", newline="") as f:
        jobs = list(csv.DictReader(f))
    assert len(jobs) == 11
    assert sorted(j["status"] for j in jobs) == ["failed", "missing"] + ["ok"] * 9
    failed = next(j for j in jobs if j["status"] == "failed")
    assert failed["error"] == BAD_ROOT_ERROR and failed["image.auroc"] == ""


def test_group_by_seed_gives_one_column_per_seed(sweep, tmp_path):
    res = agg.aggregate([sweep], out=tmp_path / "o", metrics=["image.auroc"], group=["model", "seed"], plots=False)
    by = md_cells(res["markdown"])
    assert list(by[("synthetic", "syn_disc")]) == [f"{m} seed={s} · image AUROC" for m in ("padim", "patchcore")
                                                   for s in (0, 1, 2) if not (m == "patchcore" and s == 2)]
    assert by[("synthetic", "syn_tiles")]["padim seed=1 · image AUROC"] == pct(SYN[("padim", "syn_tiles", 1)][0])
    assert by[("synthetic", "syn_disc")]["padim seed=2 · image AUROC"] == "missing"
    assert "±" not in by[("synthetic", "syn_disc")]["patchcore seed=0 · image AUROC"]


def test_auto_group_splits_swept_parameter_and_averages_seeds(tmp_path):
    vals = {(0.01, 0): 0.80, (0.01, 1): 0.86, (0.1, 0): 0.90, (0.1, 1): 0.94}
    for i, ((ratio, seed), v) in enumerate(vals.items()):
        make_job(tmp_path / "sw", f"{i}_patchcore", [f"model.coreset_ratio={ratio}", f"seed={seed}"],
                 fake_results("patchcore", "synthetic", "syn_weave", seed, v), model="patchcore",
                 dataset="synthetic", category="syn_weave", seed=seed, model_cfg={"coreset_ratio": ratio})
    jobs = agg.collect_jobs([tmp_path / "sw"])
    table = agg.build_table(jobs, ["image.auroc"])
    assert table.group == ["model", "model.coreset_ratio"] and table.replicate_keys == ["seed"]
    assert [c.label for c in table.columns] == ["patchcore coreset_ratio=0.01", "patchcore coreset_ratio=0.1"]
    for col, ratio in zip(table.columns, (0.01, 0.1)):
        cell = table.cell(("synthetic", "syn_weave"), col, "image.auroc")
        assert cell.mean == pytest.approx(statistics.mean([vals[(ratio, 0)], vals[(ratio, 1)]]))
        assert cell.std == pytest.approx(statistics.stdev([vals[(ratio, 0)], vals[(ratio, 1)]]))


def test_reference_columns_from_published_yaml(tmp_path):
    for i, (cat, v) in enumerate({"bottle": 0.97, "carpet": 0.93}.items()):
        make_job(tmp_path / "sw", f"{i}_patchcore_mvtec_{cat}", ["model=patchcore", f"category={cat}"],
                 fake_results("patchcore", "mvtec", cat, 0, v), model="patchcore", dataset="mvtec", category=cat)
    # PaDiM only ran on synthetic data, for which no paper reports numbers: no empty paper column for it
    make_job(tmp_path / "sw", "2_padim_synthetic_syn_disc", ["model=padim", "category=syn_disc"],
             fake_results("padim", "synthetic", "syn_disc", 0, 0.9, 0.9, 0.8), model="padim", dataset="synthetic",
             category="syn_disc")
    res = agg.aggregate([tmp_path / "sw"], out=tmp_path / "o", metrics=["image.auroc", "pixel.auroc"],
                        reference=True, plots=False)
    by = md_cells(res["markdown"])
    assert list(by[("synthetic", "syn_disc")]) == ["padim · image AUROC", "padim · pixel AUROC"]
    published = yaml.safe_load(agg.REFERENCE_FILE.read_text())["entries"]["patchcore_25"]["results"]["mvtec"]
    ref_img = published["image.auroc"]["per_category"]
    # pixel AUROC: the paper gives only its 15-category mean, not comparable with 2 categories -> no value
    assert by[("mvtec", "bottle")] == {
        "patchcore · image AUROC": pct(0.97), "patchcore · pixel AUROC": "n/a",
        "PatchCore-25% (paper) · image AUROC": f"{ref_img['bottle']:.1f}", "PatchCore-25% (paper) · pixel AUROC": "—"}
    assert by[("mvtec", "bottle")]["PatchCore-25% (paper) · image AUROC"] == f"{ref_img['bottle']:.1f}"
    assert by[("mvtec", "carpet")]["PatchCore-25% (paper) · image AUROC"] == f"{ref_img['carpet']:.1f}"
    # the paper column's mean covers the same categories as the measured mean
    assert by[("mvtec", "mean")]["PatchCore-25% (paper) · image AUROC"] == \
        f"{100 * statistics.mean([ref_img['bottle'] / 100, ref_img['carpet'] / 100]):.1f}"
    assert not any(k.startswith("PatchCore") for k in by[("synthetic", "syn_disc")])  # patchcore never ran there
    assert "Roth" in res["markdown"] and "CVPR 2022" in res["markdown"] and "Defard" not in res["markdown"]
    # a named subset; an unknown name is a one-line error naming the available entries
    assert agg.load_references(names=["reverse_distillation"])[0].label == "RD"
    with pytest.raises(agg.AggregateError, match="available: .*patchcore_25"):
        agg.load_references(names=["nope"])


MVTEC = ["bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill", "screw", "tile",
         "toothbrush", "transistor", "wood", "zipper"]


def test_paper_mean_shown_only_for_the_full_category_set(tmp_path):
    for i, cat in enumerate(MVTEC):
        make_job(tmp_path / "sw", f"{i}_draem_mvtec_{cat}", ["model=draem", f"category={cat}"],
                 fake_results("draem", "mvtec", cat, 0, 0.90 + 0.005 * i, 0.95, 0.9), model="draem",
                 dataset="mvtec", category=cat)
    res = agg.aggregate([tmp_path / "sw"], out=tmp_path / "o", metrics=["image.auroc", "pixel.auroc"],
                        reference=["draem"], plots=False)
    mean_row = md_cells(res["markdown"])[("mvtec", "mean")]
    published = yaml.safe_load(agg.REFERENCE_FILE.read_text())["entries"]["draem"]["results"]["mvtec"]
    # per-category list: the mean of the list over the same categories; mean-only metric: the paper's mean, `*`
    assert mean_row["DRAEM (paper) · image AUROC"] == f"{statistics.mean(published['image.auroc']['per_category'].values()):.1f}"
    assert mean_row["DRAEM (paper) · pixel AUROC"] == f"{published['pixel.auroc']['mean']:.1f}*"
    assert mean_row["draem · image AUROC"] == pct(statistics.mean(0.90 + 0.005 * i for i in range(15)))


def test_reference_yaml_is_consistent():
    data = yaml.safe_load(agg.REFERENCE_FILE.read_text())["entries"]
    mvtec = {"bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill", "screw",
             "tile", "toothbrush", "transistor", "wood", "zipper"}
    assert len(data) >= 5
    for name, e in data.items():
        assert e["citation"] and e["model"] and e["label"], name
        for ds, per_metric in e["results"].items():
            for metric, spec in per_metric.items():
                assert spec["source"] and 0 < spec["mean"] <= 100, (name, metric)
                per = spec.get("per_category")
                if per:
                    assert set(per) == mvtec, (name, metric)
                    # the list must reproduce the paper's printed mean (rounded to one decimal)
                    assert abs(statistics.mean(per.values()) - spec["mean"]) <= 0.05 + 1e-9, (name, metric)


def test_latex_table(sweep, tmp_path):
    res = agg.aggregate([sweep], out=tmp_path / "out", metrics=METRICS, plots=False)
    tex = (tmp_path / "out" / "results.tex").read_text()
    assert tex == agg.render_latex(res["table"])
    assert "\\begin{tabular}{ll" + "c" * 6 + "}" in tex and "\\toprule" in tex and "\\bottomrule" in tex
    assert "\\multicolumn{3}{c}{padim}" in tex and "syn\\_disc" in tex and "$\\pm$" in tex
    assert tex.count("{") == tex.count("}")
    body = tex.split("\\midrule", 1)[1].split("\\bottomrule", 1)[0]
    data_lines = [l for l in body.splitlines() if l.endswith("\\\\")]
    assert len(data_lines) == 6  # bottle, mvtec mean, syn_disc, syn_tiles, synthetic mean, overall mean
    m, s = expected("patchcore", "syn_disc", 0)
    assert f"{pct(m)} $\\pm$ {pct(s)}" in tex


def test_plots_are_valid_pngs(sweep, tmp_path):
    from PIL import Image

    out = tmp_path / "out"
    res = agg.aggregate([sweep], out=out, metrics=METRICS)
    pngs = {p.name for p in out.glob("*.png")}
    assert pngs == {f"bars_{d}_{m.replace('.', '_')}.png" for d in ("mvtec", "synthetic") for m in METRICS} | {
        "heatmap_image_auroc.png"}
    for name in pngs:
        data = (out / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE
        with Image.open(out / name) as im:
            im.verify()
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 150
    assert "![heatmap_image_auroc.png](heatmap_image_auroc.png)" in res["markdown"]


def test_heatmap_even_without_image_auroc_metric(sweep, tmp_path):
    agg.aggregate([sweep], out=tmp_path / "o", metrics=["pixel.aupro"])
    assert (tmp_path / "o" / "heatmap_image_auroc.png").read_bytes()[:8] == PNG_SIGNATURE


def test_cli_prints_table_and_defaults_out_to_first_dir(sweep, capsys):
    assert agg.main([str(sweep), "--no-plots"]) == 0
    printed = capsys.readouterr().out
    assert (sweep / "results.md").read_text().strip() == printed.strip()
    assert (sweep / "results.csv").is_file() and (sweep / "results.tex").is_file()
    # the written outputs are not mistaken for jobs on a second pass
    assert len(agg.collect_jobs([sweep])) == 11


def test_script_wrapper(sweep, tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "aggregate_results.py"), str(sweep), "--out",
                           str(tmp_path / "o"), "--metrics", "image.auroc", "--group", "model", "--no-plots"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "## synthetic — mean over 2 categories" in proc.stdout and "| model | image AUROC |" in proc.stdout


def test_bad_input_is_one_line_error(tmp_path, capsys, sweep):
    assert agg.main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope" in err and "python -m ad.train -m" in err
    (tmp_path / "empty").mkdir()
    assert agg.main([str(tmp_path / "empty")]) == 2
    assert "no job directories" in capsys.readouterr().err
    assert agg.main([str(sweep), "--metrics", "image.aurok", "--no-plots"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "image.aurok" in err and "image.auroc" in err


def test_job_discovery_stops_at_job_dirs_and_skips_hidden(tmp_path):
    job = make_job(tmp_path / "sw", "0_patchcore", ["model=patchcore"],
                   fake_results("patchcore", "synthetic", "syn_disc", 0, 0.9), model="patchcore",
                   dataset="synthetic", category="syn_disc")
    (job / "predict").mkdir()
    (job / "predict" / "results.json").write_text("{}")  # inside a job: not another job
    hidden = tmp_path / "sw" / ".submitit" / "123"
    hidden.mkdir(parents=True)
    (hidden / "results.json").write_text("{}")
    (tmp_path / "sw" / "multirun.yaml").write_text("hydra: {}\n")
    assert agg.find_job_dirs(tmp_path / "sw") == [job]
    broken = tmp_path / "sw" / "1_broken"
    broken.mkdir()
    (broken / "results.json").write_text("{not json")
    jobs = {j.path.name: j for j in agg.collect_jobs([tmp_path / "sw"])}
    assert jobs["1_broken"].status == "missing" and "unreadable results.json" in jobs["1_broken"].error


def test_values_are_normalised_for_grouping():
    assert agg.format_value(0.1) == agg.format_value(agg._parse_override_value("0.10"))
    assert agg.format_value([2, 3]) == agg.format_value(agg._parse_override_value("[2,3]")) == "[2,3]"
    assert agg.format_value(True) == "true" and agg.format_value(None) == "null"
    assert math.isclose(agg._std([1.0, 3.0]), math.sqrt(2.0)) and agg._std([1.0]) is None


def test_metric_vs_shots_plot(tmp_path):
    """A few-shot sweep (dataset.shots × seeds × categories × models) gets a metric-vs-shots line per model:
    each point the mean over categories of the seeds' mean, error bars the mean std over seeds."""
    from PIL import Image

    shots, seeds, cats = (1, 2, 4, 8), (0, 1), ("syn_disc", "syn_tiles")
    value = {}
    i = 0
    for model in ("patchcore", "padim"):
        for k in shots:
            for seed in seeds:
                for cat in cats:
                    v = 0.5 + 0.05 * k - 0.01 * seed + (0.02 if cat == "syn_tiles" else 0.0) \
                        + (0.03 if model == "patchcore" else 0.0)
                    value[(model, k, seed, cat)] = v
                    make_job(tmp_path / "sw", f"{i}_{model}", [f"model={model}", f"dataset.shots={k}", f"seed={seed}",
                                                               f"category={cat}"],
                             fake_results(model, "synthetic", cat, seed, v), model=model, dataset="synthetic",
                             category=cat, seed=seed)
                    i += 1
    # one failed job must not move its point: the mean stays over the categories every point has
    make_job(tmp_path / "sw", f"{i}_padim", ["model=padim", "dataset.shots=2", "seed=0", "category=syn_weave"],
             fake_results("padim", "synthetic", "syn_weave", 0, None, status="failed", error="boom"),
             model="padim", dataset="synthetic", category="syn_weave")
    table = agg.build_table(agg.collect_jobs([tmp_path / "sw"]), ["image.auroc"])
    assert "dataset.shots" in table.group
    series = agg.trend_series(table, "dataset.shots", "image.auroc")
    assert set(series) == {"patchcore", "padim"}
    for model, pts in series.items():
        assert [p[0] for p in pts] == [float(k) for k in shots]
        for x, mean, spread, n in pts:
            k = int(x)
            per_cat = [statistics.mean(value[(model, k, s, c)] for s in seeds) for c in cats]
            sds = [statistics.stdev([value[(model, k, s, c)] for s in seeds]) for c in cats]
            assert n == 2 and mean == pytest.approx(statistics.mean(per_cat))
            assert spread == pytest.approx(statistics.mean(sds))
    res = agg.aggregate([tmp_path / "sw"], out=tmp_path / "out", metrics=["image.auroc"], bootstrap=0)
    png = tmp_path / "out" / "trend_dataset.shots_image_auroc.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE and f"]({png.name})" in res["markdown"]
    with Image.open(png) as im:
        assert im.size[0] > 300


def test_identical_reruns_are_duplicates_not_seeds(sweep, tmp_path):
    """A job repeated with the same configuration and seed is used once (no '± 0.0' as if it were seeds),
    flagged ‡ in its cell and listed with the job it repeats."""
    make_job(sweep / "2024-01-03_08-00-00", "0_patchcore_mvtec_bottle", ["model=patchcore", "category=bottle"],
             fake_results("patchcore", "mvtec", "bottle", 0, 0.5), model="patchcore", dataset="mvtec", category="bottle")
    res = agg.aggregate([sweep], out=tmp_path / "o", metrics=METRICS, plots=False, bootstrap=0)
    table = res["table"]
    assert [(str(d.path.parent.name), str(f.path.parent.name)) for d, f in table.duplicates] == [
        ("2024-01-03_08-00-00", "2024-01-02_09-00-00")]
    col = next(c for c in table.columns if c.model == "patchcore")
    cell = table.cell(("mvtec", "bottle"), col, "image.auroc")
    assert cell.values == [BOTTLE_PATCHCORE] and cell.std is None and len(cell.duplicates) == 1
    assert md_cells(res["markdown"])[("mvtec", "bottle")]["patchcore · image AUROC"] == f"{pct(BOTTLE_PATCHCORE)} ‡"
    assert "## Duplicate runs (1)" in res["markdown"]
    # seeds stay seeds: the synthetic cells still average their two seeds
    assert table.cell(("synthetic", "syn_tiles"), col, "image.auroc").n == 2
    df = agg.load(sweep)
    dup = df[df.duplicate_of.notna()]
    assert len(dup) == 1 and dup.iloc[0]["duplicate_of"].endswith("2024-01-02_09-00-00/0_patchcore_mvtec_bottle")


def test_load_gives_a_dataframe_of_every_job_and_category(sweep):
    df = agg.load([sweep])
    assert len(df) == 11 and sorted(df.status) == ["failed", "missing"] + ["ok"] * 9
    ok = df[(df.status == "ok") & (df.dataset == "synthetic")]
    # a notebook one-liner reproduces the table's cell means
    means = ok.groupby(["model", "category"])["image.auroc"].mean()
    for (model, cat), v in means.items():
        assert v == pytest.approx(expected(model, cat, 0)[0])
    assert set(ok.seed) == {0, 1} and ok["timing.fit_s"].eq(1.5).all()
    failed = df[df.status == "failed"].iloc[0]
    assert failed["error"] == BAD_ROOT_ERROR and math.isnan(failed["image.auroc"])


def test_long_csv_has_one_line_per_variant_category_and_metric(sweep, tmp_path):
    import pandas as pd

    agg.aggregate([sweep], out=tmp_path / "o", metrics=METRICS, plots=False, bootstrap=0)
    long = pd.read_csv(tmp_path / "o" / "results_long.csv")
    cat = long[(long.scope == "category") & (long.dataset == "synthetic")]
    assert len(cat) == 2 * 2 * 3  # models x categories x metrics
    row = cat[(cat.model == "padim") & (cat.category == "syn_tiles") & (cat.metric == "pixel.aupro")].iloc[0]
    m, s = expected("padim", "syn_tiles", 2)
    assert row["mean"] == pytest.approx(m) and row["std"] == pytest.approx(s) and row["n"] == 2
    means = long[(long.scope == "dataset_mean") & (long.dataset == "synthetic") & (long.metric == "image.auroc")]
    assert set(means.model) == {"padim", "patchcore"}
    assert not len(long[(long.scope == "dataset_mean") & (long.dataset == "mvtec")])  # one category: no mean


def test_bars_put_models_side_by_side_on_a_fitted_axis(tmp_path):
    """Per dataset and metric one chart; 91 vs 95 is visible because the axis is fitted, not 0-100."""
    from ad.aggregate.plots import plot_bars

    for i, (model, cat, v) in enumerate([("a", "syn_disc", 0.91), ("b", "syn_disc", 0.95), ("a", "syn_tiles", 0.93),
                                         ("b", "syn_tiles", 0.94)]):
        make_job(tmp_path / "sw", f"{i}", [f"model={model}", f"category={cat}"],
                 fake_results(model, "synthetic", cat, 0, v), model=model, dataset="synthetic", category=cat)
    table = agg.build(agg.collect_jobs([tmp_path / "sw"]), ["image.auroc"], bootstrap=0)
    import matplotlib.pyplot as plt

    captured = {}
    original = plt.Figure.savefig

    def keep(fig, *a, **k):
        captured["ax"] = fig.axes[0]
        return original(fig, *a, **k)

    plt.Figure.savefig = keep
    try:
        (png,) = plot_bars(table, tmp_path)
    finally:
        plt.Figure.savefig = original
    assert png.name == "bars_synthetic_image_auroc.png" and png.read_bytes()[:8] == PNG_SIGNATURE
    ax = captured["ax"]
    lo, hi = ax.get_ylim()
    assert 85 < lo < 91 and 95 < hi <= 100  # fitted around 91..95 %, not 0..100
    assert [t.get_text() for t in ax.get_xticklabels()] == ["syn_disc", "syn_tiles", "mean"]
    heights = sorted(round(p.get_height(), 6) for p in ax.patches)
    assert heights == sorted([91.0, 95.0, 93.0, 94.0, 92.0, 94.5])  # 2 models x (2 categories + mean)


def test_bold_marks_the_best_variant_within_each_category(sweep, tmp_path):
    res = agg.aggregate([sweep], out=tmp_path / "o", metrics=METRICS, plots=False, bootstrap=0)
    lines = res["markdown"].split("### synthetic per category", 1)[1].split("\n\n", 2)[1].splitlines()[2:]
    for cat in ("syn_disc", "syn_tiles"):
        for k, lbl in enumerate(("image AUROC", "pixel AUROC", "pixel AUPRO")):
            means = {m: expected(m, cat, k)[0] for m in ("padim", "patchcore")}
            for line in lines:
                cells = [c.strip() for c in line.strip("|").split(" | ")]
                if cells[0] == cat:
                    assert cells[2 + k].startswith("**") == (means[cells[1]] == max(means.values())), (cat, lbl, line)
