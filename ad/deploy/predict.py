"""`python -m ad.deploy.predict model=<export dir> input=<image or folder> [out=<dir>] [threshold=<raw score>]`

Scores images with an exported model without torch and writes `<out>/predictions.csv` (path, score,
normalized_score, is_anomalous, overlay — the columns and number format of `ad.predict`) and one heat-map
overlay PNG per image. Default out: `<export dir>/predict/`. Other keys: overlays=true, threads=<n>.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ad.errors import ADError, ConfigError

USAGE = ("usage: python -m ad.deploy.predict model=<export dir> input=<image or folder> [out=<dir>] "
         "[threshold=<raw score>] [overlays=true] [threads=<n>]")
KEYS = {"model", "input", "out", "threshold", "overlays", "threads"}
COLUMNS = ["path", "score", "normalized_score", "is_anomalous"]


def parse_args(argv: Sequence[str]) -> Dict[str, str]:
    args: Dict[str, str] = {}
    for a in argv:
        key, sep, value = a.partition("=")
        if not sep or key not in KEYS:
            raise ConfigError(f"unknown argument '{a}'; {USAGE}")
        args[key] = value
    for key in ("model", "input"):
        if key not in args:
            raise ConfigError(f"missing {key}=...; {USAGE}")
    return args


def gather_inputs(inp: Path, exclude: Optional[Path] = None) -> List[Path]:
    from ad.deploy.images import IMAGE_EXTENSIONS, list_images

    if inp.is_file():
        return [inp]
    if inp.is_dir():
        files = list(list_images(inp, exclude))
        if not files:
            raise ConfigError(f"input folder {inp} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        return files
    raise ConfigError(f"input {inp} does not exist; pass an image file or a folder of images")


def _flag(key: str, value: str) -> bool:
    v = value.lower()
    if v not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise ConfigError(f"{key}={value!r} is not a boolean; use {key}=true or {key}=false")
    return v in ("1", "true", "yes", "on")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip() + "\n\n" + USAGE)
        return 0
    try:
        from PIL import Image

        from ad.deploy import Inferencer
        from ad.io import write_csv
        from ad.values import positive_int

        args = parse_args(argv)
        write_overlays = _flag("overlays", args.get("overlays", "true"))
        threads = positive_int(args["threads"], "threads") if "threads" in args else None
        inf = Inferencer(args["model"], threshold=args.get("threshold"), threads=threads)
        out = Path(args.get("out") or Path(args["model"]) / "predict")
        paths = gather_inputs(Path(args["input"]), exclude=out)
        out.mkdir(parents=True, exist_ok=True)
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
    except ADError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
