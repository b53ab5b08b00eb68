"""`python -m ad.deploy.predict model=<export dir> input=<image or folder> [out=<dir>] [threshold=<raw score>]`

Scores images with an exported model without torch and writes `<out>/predictions.csv` (path, score,
normalized_score, is_anomalous, overlay — the columns and number format of `ad.predict`) and one heat-map
overlay PNG per image. Default out: `<export dir>/predict/`. Other keys: overlays=true, threads=<n>.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ad.io.cli import parse_key_values, run_tool

USAGE = ("usage: python -m ad.deploy.predict model=<export dir> input=<image or folder> [out=<dir>] "
         "[threshold=<raw score>] [overlays=true] [threads=<n>]")
KEYS = {"model", "input", "out", "threshold", "overlays", "threads"}
COLUMNS = ["path", "score", "normalized_score", "is_anomalous"]


def parse_args(argv: Sequence[str]) -> Dict[str, str]:
    return parse_key_values(argv, KEYS, ("model", "input"), USAGE)


def _predict(argv: List[str]) -> int:
    from PIL import Image

    from ad.deploy import Inferencer
    from ad.io import image_inputs, write_csv
    from ad.io.outdir import check_out_dir, prepare_out_dir
    from ad.values import boolean, positive_int

    args = parse_args(argv)
    write_overlays = boolean(args.get("overlays", "true"), "overlays")
    threads = positive_int(args["threads"], "threads") if "threads" in args else None
    # checked before the model loads: a wrong out= costs nothing
    out = check_out_dir(args.get("out") or Path(args["model"]) / "predict", "out=")
    inf = Inferencer(args["model"], threshold=args.get("threshold"), threads=threads)
    paths = image_inputs(Path(args["input"]), exclude=out)
    out = prepare_out_dir(out, "out=")
    rows = []
    for i, p in enumerate(paths):
        res = inf.predict(p)
        row = {"path": str(p), **{k: getattr(res, k) for k in ("score", "normalized_score", "is_anomalous")}}
        if write_overlays:
            row["overlay"] = f"{i:05d}_{p.stem}.png"
            Image.fromarray(res.overlay()).save(out / row["overlay"])
        rows.append(row)
    write_csv(out / "predictions.csv", rows, COLUMNS + (["overlay"] if write_overlays else []))
    if inf.threshold is None:
        print(f"{len(rows)} images scored; the export has no threshold (pass threshold=...), so no decisions; "
              f"wrote {out / 'predictions.csv'}")
    else:
        n_bad = sum(bool(r["is_anomalous"]) for r in rows)
        print(f"{len(rows)} images scored, {n_bad} anomalous (threshold {inf.threshold:.6g}); wrote "
              f"{out / 'predictions.csv'}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_tool(argv, __doc__, USAGE, _predict)


if __name__ == "__main__":
    sys.exit(main())
