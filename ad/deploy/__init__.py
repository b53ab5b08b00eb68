"""Score images with an exported run, without torch: numpy, Pillow (+ pyspng when present) and onnxruntime
(or openvino). `Inferencer(export_dir).predict(image)`; `python -m ad.deploy.predict model=... input=...`."""
from ad.deploy.bundle import DEPLOY_FILE, DEPLOY_FORMAT_VERSION, Bundle, read_bundle
from ad.deploy.inferencer import Inferencer, Result, normalize_score

__all__ = ["DEPLOY_FILE", "DEPLOY_FORMAT_VERSION", "Bundle", "Inferencer", "Result", "normalize_score", "read_bundle"]
