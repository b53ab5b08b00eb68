"""`export_run(run_dir, fmt)`: a finished run -> `<run>/export/<fmt>/` (model file + deploy.json), checked for
parity before it is published. The folder appears whole or not at all: everything is written into a hidden
temporary folder beside it and renamed into place only after the parity check passed."""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from ad.deploy.bundle import DEPLOY_FILE, FORMATS
from ad.errors import ConfigError
from ad.export.graph import ExportError, export_onnx, export_openvino

MODEL_FILES = {"onnx": ["model.onnx"], "openvino": ["model.xml", "model.bin"]}


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt!r} is not an export format; use format=onnx or format=openvino")
    return fmt


def export_run(run_dir: "str | Path", fmt: str = "onnx", images: Optional["str | Path"] = None,
               out: Optional["str | Path"] = None, check_parity: bool = True) -> Path:
    """Export a finished run; returns the export folder. Raises ConfigError/ExportError (one line)."""
    from ad.io import write_json
    from ad.rundir.records import load_record
    from ad.export import parity
    from ad.export.manifest import build_manifest
    from ad.predict import load_run

    check_format(fmt)
    if fmt == "openvino":
        try:
            import openvino  # noqa: F401  (checked before any work)
        except ImportError:
            raise ConfigError("format=openvino needs the openvino package; pip install openvino") from None
    run_dir = Path(run_dir)
    extra = Path(images) if images else None
    if extra is not None and not extra.exists():
        raise ConfigError(f"images={extra} does not exist; pass an image file or a folder of images")
    model, meta = load_run(run_dir, "cpu")  # missing dir, failed run, unreadable model.pt: one line each
    record = load_record(run_dir / "results.json")
    paths = parity.parity_images(run_dir, meta, extra) if check_parity else []
    if check_parity and not paths:
        raise ConfigError("no images to check the export with: the run's data and test images are gone; pass "
                          "images=<folder of images like the run's> to python -m ad.export")
    final = Path(out) if out else run_dir / "export" / fmt
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    tmp.chmod(_dir_mode())  # mkdtemp's private 0700 would hide the export from the service's user
    try:
        name = meta.get("model_name") or type(model).__name__
        onnx_path = tmp / "model.onnx"
        export_onnx(model, _input_size(meta), onnx_path, name)
        if fmt == "openvino":
            export_openvino(onnx_path, tmp / "model.xml", name)
            onnx_path.unlink()
        manifest = build_manifest(fmt, MODEL_FILES[fmt], tmp, run_dir, meta, record)
        write_json(tmp / DEPLOY_FILE, manifest)
        if check_parity:
            result = parity.check(model, meta, tmp, paths)
            if not result.ok:
                raise ExportError(
                    f"exported {name} does not score like the run: max image-score difference "
                    f"{result.max_score_error:.3g} (relative; allowed {parity.SCORE_RTOL:g}), max map difference "
                    f"{result.max_map_error:.3g} (allowed {parity.MAP_RTOL:g}) over {result.images} images "
                    f"(worst: {result.worst_image}); nothing was written")
            manifest["parity"] = result.to_dict()
            write_json(tmp / DEPLOY_FILE, manifest)
        _publish(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _dir_mode() -> int:
    import os

    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


def _input_size(meta) -> list:
    from ad.export.manifest import preprocess_recipe

    return preprocess_recipe(meta["data"])["input_size"]


def _publish(tmp: Path, final: Path) -> None:
    """Rename the finished folder into place; an earlier export there is replaced only once the new one is
    complete (moved aside, then removed)."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{tmp.name.rsplit('.', 2)[-2]}")
        final.rename(old)
    try:
        tmp.rename(final)
    except BaseException:
        if old is not None:
            old.rename(final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def describe(export_dir: Path) -> str:
    m = json.loads((export_dir / DEPLOY_FILE).read_text())
    p = m.get("parity")
    check = (f"parity over {p['images']} images: score error {p['max_score_rel_error']:.2g} (rel), map error "
             f"{p['max_map_rel_error']:.2g}" if p else "parity not checked")
    return f"exported {m['model']['name']} to {export_dir} ({m['format']}; {check})"
