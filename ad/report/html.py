"""HTML fragments of the report (plain HTML + inline CSS; no script needed, nothing fetched)."""
from __future__ import annotations

from html import escape
from typing import Dict, List, Optional, Sequence

from ad.aggregate.jobs import Job
from ad.aggregate.table import MARKERS, Table, Value, fmt_number, printed_rows, value_columns
from ad.report.gallery import GalleryImage, ModelRun

CSS = """
body{font-family:system-ui,-apple-system,'DejaVu Sans',sans-serif;margin:1.5em;color:#222}img{max-width:100%}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}h3{margin-bottom:.3em}
details.cat{border:1px solid #ddd;border-radius:4px;margin:.6em 0;padding:0 .8em}
details.cat>summary{cursor:pointer;padding:.5em 0;font-size:15px}details.cat>summary h2{display:inline;border:0;font-size:1.15em}
details.cat>summary .gist{color:#555;font-size:13px;margin-left:1em}
td.best{background:#e3f4e6;box-shadow:inset 0 0 0 2px #0a7d20}
table.gallery{width:100%;table-layout:fixed}.gallery img{width:100%;max-width:280px}
.cscale{margin:4px auto 0;max-width:280px;font-size:11px;font-weight:400;color:#333}
.cscale .grad{position:relative;height:12px;border:1px solid #555}
.cscale .thr{position:absolute;top:-3px;bottom:-3px;width:2px;margin-left:-1px;background:#fff;outline:1px solid #000}
.cscale .thrlab{position:absolute;top:14px;transform:translateX(-50%);white-space:nowrap}
.cscale .ends{display:flex;justify-content:space-between;margin-top:16px}
table{border-collapse:collapse;font-size:13px;margin:.5em 0}
td,th{border:1px solid #ddd;padding:3px 6px;text-align:center;vertical-align:top}
th{background:#f4f4f4}tr.mean td{background:#fafafa;font-weight:600}
.ci{color:#666;font-size:11px}.up{color:#0a7d20;font-weight:700}.down{color:#c0261b;font-weight:700}
.muted{color:#777}.err{color:#c0261b;font-family:monospace;font-size:12px;text-align:left}
.gallery td{font-size:12px}.gallery img{display:block;margin:0 auto;height:auto}
.ok{color:#0a7d20}.bad{color:#c0261b;font-weight:700}.dis{background:#fff4e0}
nav a{margin-right:1em}.note{font-size:12px;color:#555;max-width:1100px}
"""


# Says at the bottom of the page whether every image loaded (e.g. index.html copied without assets/); the
# browser test reads the same line.
IMAGE_CHECK = ("window.addEventListener('load',function(){var a=Array.prototype.slice.call(document.images);"
               "var bad=a.filter(function(i){return !(i.complete&&i.naturalWidth>0);});"
               "var s=document.getElementById('img-status');s.setAttribute('data-broken',bad.length);"
               "s.textContent=bad.length?bad.length+' of '+a.length+' images failed to load (keep assets/ next to "
               "index.html): '+bad.map(function(i){return i.getAttribute('src');}).join(', ')"
               ":'All '+a.length+' images loaded.';"
               # page height and load time, for `scripts/bench_report_scale.py` (read from the DOM)
               "s.setAttribute('data-height',document.documentElement.scrollHeight);"
               "s.setAttribute('data-load-ms',Math.round(performance.now()));});")


def value_html(v: Value) -> str:
    """A table cell from the value's own numbers: mean ± std, interval, marker, incomplete flags."""
    if v.mean is None:
        return f"<span class=muted>{escape(v.text) or '&nbsp;'}</span>"
    m = v.vcol.metric
    out = escape(fmt_number(m, v.mean))
    if v.std is not None:
        out += f" ± {escape(fmt_number(m, v.std))}"
    if v.stat.ci is not None:
        out += f"<br><span class=ci>[{fmt_number(m, v.stat.ci[0])}, {fmt_number(m, v.stat.ci[1])}]</span>"
    if v.stat.sign:
        title = f"{v.stat.test} p = {v.stat.p:.3g}"
        out += f" <span class={'up' if v.stat.sign > 0 else 'down'} title='{escape(title)}'>{MARKERS[v.stat.sign]}</span>"
    if v.published:
        out += "*"
    for flag in ("†", "("):
        if flag in v.text:
            out += " " + escape(v.text[v.text.index(flag):])
            break
    return out


def best_in_row(values: Sequence[Value]) -> List[bool]:
    """Per value: whether it is the best measured one of its metric in this row (ties all marked, unless every
    column ties; paper numbers and rows with a single value are never marked)."""
    seen: Dict[str, List[float]] = {}
    for v in values:
        if v.vcol.ref is None and v.mean is not None:
            seen.setdefault(v.vcol.metric, []).append(v.mean)
    # a metric on which every column ties has no best: marking them all would say nothing
    best = {m: max(xs) for m, xs in seen.items() if len(xs) > 1 and max(xs) > min(xs)}
    return [v.vcol.ref is None and v.mean is not None and v.mean == best.get(v.vcol.metric) for v in values]


def results_table(table: Table) -> str:
    vcols = value_columns(table)
    head = "".join(f"<th>{escape(vc.header)}</th>" for vc in vcols)
    rows = [f"<table id=results><tr><th>dataset</th><th>category</th>{head}</tr>"]
    for r in printed_rows(table):
        cls = " class=mean" if r.kind != "category" else ""
        marks = best_in_row(r.values)
        cells = "".join(f"<td class=best title='best in this row'>{value_html(v)}</td>" if b else f"<td>{value_html(v)}</td>"
                        for v, b in zip(r.values, marks))
        rows.append(f"<tr{cls}><td>{escape(r.label[0])}</td><td>{escape(r.label[1])}</td>{cells}</tr>")
    return "\n".join(rows) + "</table>"


def summary(table: Table, metric: str, best: Dict[str, str]) -> str:
    """Best column per dataset and what differs significantly from the baseline (dataset-mean rows)."""
    items = []
    for r in printed_rows(table):
        if r.kind == "category":
            continue
        name = "all datasets" if r.kind == "overall_mean" else r.dataset
        vals = [v for v in r.values if v.vcol.metric == metric and v.vcol.ref is None and v.mean is not None]
        if not vals:
            continue
        top = max(vals, key=lambda v: v.mean)
        if r.kind == "dataset_mean":
            best[r.dataset] = top.vcol.column.label
        text = f"<b>{escape(name)}</b>: best {escape(top.vcol.column.label)} {value_html(top)}"
        if table.baseline is not None:
            better = [v.vcol.column.label for v in vals if v.stat.sign > 0]
            worse = [v.vcol.column.label for v in vals if v.stat.sign < 0]
            same = [v.vcol.column.label for v in vals if v.stat.p is not None and not v.stat.sign]
            base = escape(table.baseline.label)
            text += (f"; vs baseline {base}: significantly better: {escape(', '.join(better)) or 'none'}; "
                     f"significantly worse: {escape(', '.join(worse)) or 'none'}; "
                     f"not distinguishable: {escape(', '.join(same)) or 'none'}")
        items.append(f"<li>{text}</li>")
    return "<ul>" + "".join(items) + "</ul>"


def rankings(ranks: Dict[str, Dict], metric: str) -> str:
    """Friedman / Nemenyi ranks and the Wilcoxon-Holm pairs per dataset (from `ad.aggregate.ranking`)."""
    if not ranks:
        return "<p class=muted>Rankings need at least 2 columns on 2 categories with values.</p>"
    out = [f"<p class=note>{escape(metric)} across categories. Friedman test: average rank (1 = best); two "
           "methods whose ranks differ by less than the Nemenyi critical difference (CD) are not significantly "
           "different (the red bars of the diagram join them). Wilcoxon signed-rank per pair, Holm-corrected. "
           "With few categories these tests have little power.</p>"]
    for ds, r in ranks.items():
        f = r["friedman"]
        head = f"<h3>{escape(ds)} ({len(r['categories'])} categories)</h3>"
        if f is not None:
            ranked = ", ".join(f"{escape(m)} {v:.2f}" for m, v in sorted(f.ranks.items(), key=lambda kv: kv[1]))
            head += f"<p>Friedman χ² = {f.chi2:.2f}, p = {f.p:.3g}; CD = {f.cd:.2f}; ranks: {ranked}</p>"
        head += "".join(f"<p class=muted>{escape(n)}</p>" for n in r.get("notes", []))
        if r["pairs"] is None:
            out.append(head)
            continue
        rows = "".join(f"<tr><td>{escape(p['a'])}</td><td>{escape(p['b'])}</td><td>{100 * p['mean_diff']:+.2f}</td>"
                       f"<td>{p['p']:.3g}</td><td>{p['p_holm']:.3g}</td></tr>" for p in r["pairs"])
        out.append(head + "<table><tr><th>a</th><th>b</th><th>mean a − b (points)</th><th>p</th><th>p (Holm)</th>"
                   f"</tr>{rows}</table>")
    return "".join(out)


def failed_jobs(problems: Sequence[Job]) -> str:
    if not problems:
        return "<p>None.</p>"
    rows = ["<table><tr><th>status</th><th>model</th><th>category</th><th>job</th><th>error</th></tr>"]
    for j in sorted(problems, key=lambda j: str(j.path)):
        rows.append(f"<tr><td>{escape(j.status)}</td><td>{escape(j.get('model') or '?')}</td>"
                    f"<td>{escape(', '.join(c for _, c in j.rows))}</td><td class=err>{escape(str(j.path))}</td>"
                    f"<td class=err>{escape(j.error or '')}</td></tr>")
    return "\n".join(rows) + "</table>"


def per_defect(runs: Sequence[ModelRun], category: str) -> str:
    per = {}
    for r in runs:
        row = next((c for c in r.job.record.category_rows() if c.category == category or not r.job.unified), None)
        per[r.column.label] = (row.per_defect or {}) if row is not None else {}
    types = sorted({t for d in per.values() for t in d})
    if not types:
        return ""
    head = "".join(f"<th>{escape(t)}</th>" for t in types)
    body = "".join(f"<tr><td>{escape(label)}</td>" + "".join(
        f"<td>{fmt_number('auroc', d.get(t))}</td>" for t in types) + "</tr>" for label, d in per.items())
    return f"<table><tr><th>model</th>{head}</tr>{body}</table>"


def _img(name: Optional[str], alt: str) -> str:
    return f"<img src='assets/{escape(name)}' alt='{escape(alt)}'>" if name else "<span class=muted>—</span>"


def gallery(runs: Sequence[ModelRun], items: List[GalleryImage], scales: Sequence[Optional[str]]) -> str:
    """One row per image: the test image (ground truth as a green outline on it), then each model's heatmap
    with its score and decision; each model's colour scale under its name."""
    head = "".join(f"<th>{escape(r.column.label)}{b or ''}</th>" for r, b in zip(runs, scales))
    rows = [f"<table class=gallery><tr><th>test image (green: ground truth)</th>{head}</tr>"]
    for g in items:
        name = escape("/".join(g.path.rsplit("/", 2)[-2:]))
        truth = "anomalous" if g.label else "normal"
        cells = []
        for per in g.per_model:
            if per["decision"] is None:
                verdict, cls, mark = "no threshold", "muted", ""
            else:
                verdict = "anomalous" if per["decision"] else "normal"
                cls, mark = ("ok", "✓") if per["correct"] else ("bad", "✗")
            cells.append(f"<td>{_img(per['heatmap'], 'heatmap')}score {per['score']:.4g}<br>"
                         f"<span class={cls}>{verdict} {mark}</span></td>")
        cls = " class=dis" if g.disagreement else ""
        note = "" if g.has_truth or not g.label else " <span class=muted>(no mask)</span>"
        rows.append(f"<tr{cls}><td>{_img(g.image, name)}{name}<br>{escape(g.defect_type)} ({truth}){note}</td>"
                    + "".join(cells) + "</tr>")
    return "\n".join(rows) + "</table>"


def page(title: str, sections: Sequence[tuple], collapsible: Sequence[str] = (), open_ids: Sequence[str] = (),
         gists: Optional[Dict[str, str]] = None) -> str:
    """The page: sections in order; those in `collapsible` (the categories) are <details> blocks, open when in
    `open_ids`, with a one-line gist beside the title so a closed block still says what is inside."""
    gists = gists or {}
    nav = "".join(f"<a href='#{sid}'>{escape(h)}</a>" for sid, h, _ in sections if sid not in collapsible)
    body = []
    for sid, h, html in sections:
        if sid in collapsible:
            gist = f"<span class=gist>{gists[sid]}</span>" if sid in gists else ""
            body.append(f"<details class=cat id='{sid}'{' open' if sid in open_ids else ''}><summary><h2>{escape(h)}</h2>"
                        f"{gist}</summary>\n{html}\n</details>\n")
        else:
            body.append(f"<h2 id='{sid}'>{escape(h)}</h2>\n{html}\n")
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{escape(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{escape(title)}</h1><nav>{nav}</nav>\n{''.join(body)}"
            f"<p id=img-status class=note></p><script>{IMAGE_CHECK}</script></body></html>\n")
