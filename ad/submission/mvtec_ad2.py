"""MVTec AD 2's private test sets, scored and written in the format the official evaluation server accepts.

    python -m ad.submission.mvtec_ad2 run_dir=<trained run> out=<submission dir> root=<dataset root>
        [categories=can,fabric] [device=cpu] [batch_size=8]
    python -m ad.submission.mvtec_ad2 check=<submission dir> root=<dataset root> [complete=true]

The rules, read from MVTec's `check_and_prepare_data_for_upload.py` / `utils.py` (MVTecAD2_public_code_utils):

* `<submission>/anomaly_images/<object>/test_private/<stem>.tiff` and `.../test_private_mixed/<stem>.tiff`:
  one single-channel (2-D) float16 TIFF per private image, at the image's own resolution;
* `<submission>/anomaly_images_thresholded/<object>/{test_private,test_private_mixed}/<stem>.png`: 2-D, values in
  {0, 255} only (anomalous = 255);
* nothing else anywhere in the folder: no extra directory or file at any level, every private image present
  (`<stem>` is the image's name: `000_regular`, `000_mixed`, ...). The official server wants all 8 objects;
  `complete=true` checks that too.

The binarisation threshold is the run's SegF1 threshold (mean + 3·std of the validation images' pixel scores),
the rule the official checker proposes. There is no ground truth for these images: `submission.json` beside
(never inside) the submission folder says so, with the counts and the thresholds used.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from ad.errors import ADError, ConfigError
from ad.io.cli import parse_key_values, run_tool

OBJECTS = ("can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial", "wallplugs", "walnuts")
SPLITS = ("test_private", "test_private_mixed")
TOP = ("anomaly_images", "anomaly_images_thresholded")
NO_GROUND_TRUTH = ("no ground truth: test_private and test_private_mixed are unlabelled; submit the folder to the "
                   "MVTec evaluation server (benchmark.mvtec.com) for AU-PRO@0.05 and SegF1")


class SubmissionError(ADError):
    """A submission folder breaks an official rule (one line naming the path)."""


# --- writing --------------------------------------------------------------------------------------------------
def write_maps(out: Path, obj: str, split: str, stems: Sequence[str], maps: Sequence[np.ndarray],
               threshold: float) -> None:
    """One float16 TIFF and one 0/255 PNG per map (each already at its image's resolution)."""
    import tifffile
    from PIL import Image

    tdir, pdir = out / TOP[0] / obj / split, out / TOP[1] / obj / split
    tdir.mkdir(parents=True, exist_ok=True)
    pdir.mkdir(parents=True, exist_ok=True)
    for stem, m in zip(stems, maps):
        m = np.asarray(m, dtype=np.float32)
        tmp = tdir / f".{stem}.tiff.tmp"
        tifffile.imwrite(tmp, np.clip(m, -65504, 65504).astype(np.float16))  # float16's range: no inf
        tmp.replace(tdir / f"{stem}.tiff")
        tmp = pdir / f".{stem}.png.tmp"
        Image.fromarray(np.where(m >= threshold, 255, 0).astype(np.uint8)).save(tmp, format="PNG")
        tmp.replace(pdir / f"{stem}.png")


def score_private(run_dir: Path, out: Path, root: Path, categories: Optional[Sequence[str]] = None,
                  device: str = "cpu", batch_size: int = 8) -> Dict[str, object]:
    """Score every private image of the run's categories with its saved model (`ad.predict`'s path: same
    transform, precision and model) and write the submission; maps are resized (bilinear) to each image's size."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from ad.data.mvtec_ad2 import list_private
    from ad.predict import load_run, predict_paths

    results = json.loads((Path(run_dir) / "results.json").read_text())
    if not Path(root).is_dir():
        raise ConfigError(f"MVTec AD 2 root {root} not found; pass root=<dataset root>")
    cats = list(categories or results.get("run", {}).get("categories") or [])
    if not cats:
        raise ConfigError("no categories: pass categories=can,fabric,...")
    threshold = _segf1_threshold(results)
    model, meta = load_run(run_dir, device=device)
    if (meta.get("data") or {}).get("center_crop"):
        raise ConfigError("the run used dataset.center_crop: its maps do not cover the whole image, which the "
                          "server scores; train with dataset.center_crop=null")
    counts: Dict[str, int] = {}
    for obj in cats:
        for split in SPLITS:
            paths = list_private(root, obj, split)
            for i in range(0, len(paths), batch_size):  # one batch in memory at a time
                chunk = paths[i:i + batch_size]
                maps = torch.from_numpy(predict_paths(model, meta, chunk, batch_size, device)["maps"])
                full = []
                for m, p in zip(maps, chunk):
                    with Image.open(p) as im:
                        w, h = im.size
                    full.append(F.interpolate(m[None, None], size=(h, w), mode="bilinear",
                                              align_corners=False)[0, 0].numpy())
                write_maps(out, obj, split, [p.stem for p in chunk], full, threshold)
            counts[f"{obj}/{split}"] = len(paths)
    summary = {"metrics": NO_GROUND_TRUTH, "threshold": threshold, "threshold_rule": "mean + 3 std of validation pixels",
               "run_dir": str(run_dir), "images": counts}
    side = out.parent / f"{out.name}.submission.json"  # beside the folder: nothing else may be inside it
    side.write_text(json.dumps(summary, indent=2))
    return summary


def _segf1_threshold(results: dict) -> float:
    bench = results.get("benchmark") or {}
    t = bench.get("segf1_threshold")
    if t is None:
        for c in (results.get("categories") or {}).values():
            t = (c.get("benchmark") or {}).get("segf1_threshold")
            if t is not None:
                break
    if t is None:
        raise ConfigError("the run has no SegF1 threshold (benchmark.segf1_threshold): train on dataset=mvtec_ad2 "
                          "with its validation/good images")
    return float(t)


# --- checking -------------------------------------------------------------------------------------------------
def _entries(folder: Path) -> tuple[set, set]:
    files = {p.name for p in folder.iterdir() if p.is_file()}
    dirs = {p.name for p in folder.iterdir() if p.is_dir()}
    return files, dirs


def _exactly(folder: Path, dirs: set, files: set) -> None:
    found_files, found_dirs = _entries(folder)
    for what, found, want in (("directories", found_dirs, dirs), ("files", found_files, files)):
        extra, missing = sorted(found - want), sorted(want - found)
        if extra:
            raise SubmissionError(f"superfluous {what} in {folder}: {', '.join(extra[:4])}"
                                  f"{f' (+{len(extra) - 4} more)' if len(extra) > 4 else ''}; remove them")
        if missing:
            raise SubmissionError(f"missing {what} in {folder}: {', '.join(missing[:4])}"
                                  f"{f' (+{len(missing) - 4} more)' if len(missing) > 4 else ''}")


def check_submission(folder: "str | Path", expected: Dict[str, Dict[str, List[str]]], complete: bool = False) -> int:
    """Check a submission against the official rules; `expected` = {object: {split: [stems]}}. Returns the number
    of files checked; raises SubmissionError (one line naming the path) at the first violation."""
    import tifffile
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise SubmissionError(f"{folder} is not a directory")
    if complete and set(expected) != set(OBJECTS):
        raise SubmissionError(f"the evaluation server wants all of {', '.join(OBJECTS)}; "
                              f"missing: {', '.join(sorted(set(OBJECTS) - set(expected)))}")
    _exactly(folder, set(TOP), set())
    n = 0
    for top, ext in zip(TOP, (".tiff", ".png")):
        _exactly(folder / top, set(expected), set())
        for obj, splits in expected.items():
            _exactly(folder / top / obj, set(SPLITS), set())
            for split in SPLITS:
                d = folder / top / obj / split
                _exactly(d, set(), {f"{s}{ext}" for s in splits.get(split, [])})
                for f in sorted(d.iterdir()):
                    arr = tifffile.imread(f) if ext == ".tiff" else np.asarray(Image.open(f))
                    if arr.ndim != 2:
                        raise SubmissionError(f"{f} is not a single-channel image (shape {arr.shape})")
                    if ext == ".tiff" and arr.dtype != np.float16:
                        raise SubmissionError(f"{f} is {arr.dtype}, not float16; convert the anomaly images")
                    if ext == ".png" and not np.isin(np.unique(arr), (0, 255)).all():
                        raise SubmissionError(f"{f} has values other than 0 and 255; anomaly-free pixels must be 0, "
                                              "anomalous ones 255")
                    n += 1
    return n


def expected_from_root(root: "str | Path", objects: Sequence[str]) -> Dict[str, Dict[str, List[str]]]:
    from ad.data.mvtec_ad2 import list_private

    return {o: {s: [p.stem for p in list_private(root, o, s)] for s in SPLITS} for o in objects}


USAGE = ("usage: python -m ad.submission.mvtec_ad2 run_dir=<trained run> out=<submission dir> root=<dataset root> "
         "[categories=can,fabric] [device=cpu] [batch_size=8], or check=<submission dir> root=<dataset root> "
         "[complete=true]")
KEYS = ("run_dir", "out", "root", "categories", "device", "batch_size", "check", "complete")


def _submission(argv: List[str]) -> int:
    from ad.values import boolean, positive_int

    args = parse_key_values(argv, KEYS, (), USAGE)
    cats = [c for c in args["categories"].split(",") if c] if args.get("categories") else None
    if "check" in args:
        folder = Path(args["check"])
        objects = cats or (sorted(p.name for p in (folder / TOP[0]).iterdir() if p.is_dir())
                           if (folder / TOP[0]).is_dir() else [])
        if not args.get("root"):
            raise ConfigError("check needs root=<MVTec AD 2 root> (the private image names come from it)")
        n = check_submission(folder, expected_from_root(args["root"], objects),
                             boolean(args.get("complete", "false"), "complete"))
        print(f"ok: {n} files follow the MVTec AD 2 submission rules")
        return 0
    missing = [k for k in ("run_dir", "out", "root") if not args.get(k)]
    if missing:
        raise ConfigError(f"missing {', '.join(k + '=...' for k in missing)}; {USAGE}")
    summary = score_private(Path(args["run_dir"]), Path(args["out"]), Path(args["root"]), cats,
                            args.get("device", "cpu"), positive_int(args.get("batch_size", "8"), "batch_size"))
    print(json.dumps(summary, indent=2))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Exit 0 when done, 2 for a mistake on the command line, 1 when the data or a submission check fails."""
    try:
        return run_tool(argv, __doc__, USAGE, _submission, error_codes={ConfigError: 2, ADError: 1})
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
