"""An export folder (`<run>/export/<format>/`): `deploy.json` plus the model file it names.

`deploy.json` is versioned (`format_version`); a reader refuses a newer format, and refuses a model file whose
sha256 differs from the one export recorded (a copied-over or edited file would score differently without
saying so).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from ad.errors import ConfigError

DEPLOY_FILE = "deploy.json"
DEPLOY_FORMAT_VERSION = 1
FORMATS = ("onnx", "openvino")


def sha256_file(path: "str | Path", chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A verified export folder: its manifest and the paths of its model file(s)."""

    root: Path
    manifest: Dict[str, Any]

    @property
    def format(self) -> str:
        return self.manifest["format"]

    @property
    def model_path(self) -> Path:
        return self.root / self.manifest["model"]["file"]

    @property
    def preprocess(self) -> Mapping[str, Any]:
        return self.manifest["preprocess"]

    @property
    def image_threshold(self) -> Optional[float]:
        return self.manifest["thresholds"]["image"]

    @property
    def image_normalization(self) -> Optional[Mapping[str, float]]:
        return self.manifest["normalization"]["image"]

    @property
    def pixel_normalization(self) -> Optional[Mapping[str, float]]:
        return self.manifest["normalization"]["pixel"]


def read_bundle(path: "str | Path", verify: bool = True) -> Bundle:
    """Read and check an export folder (or its deploy.json); one-line `ConfigError` for anything wrong."""
    root = Path(path)
    if root.is_file() and root.name == DEPLOY_FILE:
        root = root.parent
    manifest_path = root / DEPLOY_FILE
    if not root.is_dir():
        raise ConfigError(f"model={path}: no such folder; pass an export folder (<run>/export/<format>) written by "
                          "python -m ad.export")
    if not manifest_path.is_file():
        raise ConfigError(f"{manifest_path} not found: {root} is not an export folder; run python -m ad.export "
                          "run_dir=<run> format=onnx first")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{manifest_path} is unreadable ({exc.__class__.__name__}); export the run again") from None
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if not isinstance(version, int) or version > DEPLOY_FORMAT_VERSION:
        raise ConfigError(f"{manifest_path} has format_version {version!r}; this ad.deploy reads up to "
                          f"{DEPLOY_FORMAT_VERSION}: upgrade ad on this machine or export with the older version")
    bundle = Bundle(root, manifest)
    if bundle.format not in FORMATS:
        raise ConfigError(f"{manifest_path}: unknown format {bundle.format!r} ({' | '.join(FORMATS)})")
    if verify:
        verify_files(bundle)
    return bundle


def verify_files(bundle: Bundle) -> None:
    """Every file the manifest lists exists and has the recorded sha256."""
    for name, digest in bundle.manifest["model"]["sha256"].items():
        p = bundle.root / name
        if not p.is_file():
            raise ConfigError(f"{p} is missing from the export folder; copy the whole folder or export again")
        actual = sha256_file(p)
        if actual != digest:
            raise ConfigError(f"{p} has sha256 {actual[:12]}… but deploy.json records {digest[:12]}…: the model "
                              "file was modified or replaced; export the run again")
