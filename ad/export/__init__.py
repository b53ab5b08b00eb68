"""Export a finished run for deployment: `python -m ad.export run_dir=<run> format=onnx|openvino`.

Writes `<run>/export/<format>/` with the model file and deploy.json (see `ad.deploy` for scoring it without
torch). The exported graph is the model's own `predict` at the run's input size; export checks parity against
`ad.predict` before it publishes anything.
"""
from ad.export.graph import ExportError
from ad.export.run import export_run

__all__ = ["ExportError", "export_run"]
