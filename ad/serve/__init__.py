"""Serve an exported model over HTTP: `python -m ad.serve model=<export dir> [host=127.0.0.1] [port=8000]`."""
from ad.serve.app import create_app

__all__ = ["create_app"]
