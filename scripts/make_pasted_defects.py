#!/usr/bin/env python
"""Make a real-photo anomaly set with exact masks from the MVTec AD bottle photos (which ship without masks).

    python scripts/make_pasted_defects.py --out /data/bottle_pasted            # 512 px, ~1 min on 2 cores
    python scripts/make_pasted_defects.py --out /tmp/bp --side 256 --per-image 2

Layout (MVTec AD's, so `ad` and anomalib both read it as category `bottle_pasted` of the MVTec format):

    <out>/bottle_pasted/train/good/NNN.png             the 209 real training photos, resized to --side
    <out>/bottle_pasted/test/good/NNN.png              the 20 real good test photos
    <out>/bottle_pasted/test/pasted/NNN.png            each good test photo with --per-image different pasted
    <out>/bottle_pasted/ground_truth/pasted/NNN_mask.png   defects (default 4 -> 80), and the exact blob mask

A defect is a colour-shifted, rotated patch moved from elsewhere in the same photo inside an irregular blob
(`make_mvtec_like._add_defect`, the same defects as the scale benchmark). The real defective test photos are
left out: their masks do not exist. The set is written to a hidden folder and renamed into place with a marker
recording the parameters; an existing set with the same parameters is kept.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO))

from PIL import Image  # noqa: E402

from ad.io.images import load_image  # noqa: E402
from make_mvtec_like import _add_defect, _rng  # noqa: E402

VERSION = 1
MARKER = ".pasted_defects.json"
CATEGORY = "bottle_pasted"


def _resized(path: Path, side: int) -> Image.Image:
    return load_image(path).convert("RGB").resize((side, side), Image.BILINEAR)


def make(out: Path, bottle: Path, side: int, per_image: int, seed: int) -> Path:
    """Write the set under `out/bottle_pasted` unless it is there with the same parameters; return its path."""
    train = sorted((bottle / "train" / "good").glob("*.png"))
    good = sorted((bottle / "test" / "good").glob("*.png"))
    if not train or not good:
        sys.exit(f"no bottle photos under {bottle}/train/good and test/good; pass --bottle <MVTec AD>/bottle")
    params = {"version": VERSION, "side": side, "per_image": per_image, "seed": seed,
              "train": len(train), "good": len(good)}
    final = out / CATEGORY
    if (final / MARKER).is_file() and json.loads((final / MARKER).read_text()) == params:
        print(f"{final} is up to date")
        return final
    tmp = out / f".{CATEGORY}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    for d in ("train/good", "test/good", "test/pasted", "ground_truth/pasted"):
        (tmp / d).mkdir(parents=True)
    for i, f in enumerate(train):
        _resized(f, side).save(tmp / "train" / "good" / f"{i:03d}.png", compress_level=1)
    n = 0
    for i, f in enumerate(good):
        im = _resized(f, side)
        im.save(tmp / "test" / "good" / f"{i:03d}.png", compress_level=1)
        for k in range(per_image):
            defect, mask = _add_defect(im, _rng(seed, "pasted", i, k))
            defect.save(tmp / "test" / "pasted" / f"{n:03d}.png", compress_level=1)
            mask.save(tmp / "ground_truth" / "pasted" / f"{n:03d}_mask.png", compress_level=1)
            n += 1
    (tmp / MARKER).write_text(json.dumps(params))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    print(f"wrote {final}: {len(train)} train, {len(good)} good + {n} pasted test images at {side} px")
    return final


def main(argv: Sequence[str] | None = None) -> None:
    shared = Path(os.environ.get("AD_SHARED_DATA", REPO.parent / "shared" / "data"))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="dataset root to write (MVTec layout; not the repo)")
    p.add_argument("--bottle", type=Path, default=shared / "mvtec_ad" / "bottle", help="MVTec AD bottle folder")
    p.add_argument("--side", type=int, default=512, help="image side in pixels")
    p.add_argument("--per-image", type=int, default=4, help="defective copies of each good test photo")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    make(a.out, a.bottle, a.side, a.per_image, a.seed)


if __name__ == "__main__":
    main()
