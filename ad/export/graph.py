"""The exported graph: a model's own `predict` traced into ONNX (then OpenVINO IR).

`PredictGraph` wraps a fitted model so that `forward(image) = (score [1], anomaly_map [1,H,W])` — exactly
`model.predict`, the path `ad.predict` and test scoring take. The only substitution is the nearest-neighbour
search of the memory models: their `KnnIndex` builds faiss indexes and pruned searches with data-dependent
control flow that a trace cannot record, so for the trace it is swapped for `BruteForceKnn`, the models' own
brute-force torch search (Gram-trick GEMM + top-k, neighbour distances recomputed directly) — the same
neighbours and distances up to float32 rounding, with the bank baked into the graph as a constant.
Thresholds and normalisation are never in the graph: they live in deploy.json.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Iterator, Sequence, Tuple

import torch
from torch import nn

from ad.errors import ADError
from ad.export.symbolics import OPSET, register

INPUT_NAME = "image"
OUTPUT_NAMES = ("score", "anomaly_map")


class ExportError(ADError):
    """A run that cannot be exported (the message names the model and the reason)."""


class PredictGraph(nn.Module):
    """`forward(image [1,3,H,W] in [0,1]) -> (raw image score [1], raw anomaly map [1,H,W])` via `model.predict`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        out = self.model.predict(image)
        return out.scores.float().reshape(-1), out.maps.float()


class _TraceableKnn:
    """`KnnIndex.search`'s contract (L2 distances, indices [Q,k]) by the models' own brute-force torch search."""

    def search(self, bank: torch.Tensor, queries: torch.Tensor, k: int, chunk: int = 0):
        from ad.models.memory import BruteForceKnn

        return BruteForceKnn(bank).search(queries.float(), min(int(k), bank.shape[0]))


@contextlib.contextmanager
def traceable(model: nn.Module) -> Iterator[nn.Module]:
    """The model with every `KnnIndex` attribute swapped for `_TraceableKnn` (restored afterwards)."""
    from ad.models.memory import KnnIndex

    swapped = []
    for module in model.modules():
        for name, value in list(vars(module).items()):
            if isinstance(value, KnnIndex):
                swapped.append((module, name, value))
                setattr(module, name, _TraceableKnn())
    try:
        yield model
    finally:
        for module, name, value in swapped:
            setattr(module, name, value)


def export_onnx(model: nn.Module, input_size: Sequence[int], path: Path, model_name: str) -> None:
    """Trace `model.predict` at batch 1 and `input_size` (h, w) into an ONNX file at `path`."""
    reason = getattr(model, "export_unsupported", None)
    if reason:
        raise ExportError(f"model '{model_name}' cannot be exported: {reason}")
    h, w = (int(v) for v in input_size)
    example = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    model = model.cpu().eval()
    register()
    graph = PredictGraph(model)
    with traceable(model), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")  # tracer warnings about constants: shapes are fixed on purpose
        try:
            # one eager pass first: lazily built, cached constants (the resize-and-blur operators of the
            # memory models' maps) then enter the trace as constants instead of as traced float64 ops
            graph(example)
            torch.onnx.export(graph, (example,), str(path), dynamo=False, opset_version=OPSET,
                              input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), do_constant_folding=True)
        except ADError:
            raise
        except Exception as exc:  # the tracer/exporter's own error types; the first line says which op
            raise ExportError(f"model '{model_name}' cannot be exported to ONNX: {_reason(exc)}") from None


def export_openvino(onnx_path: Path, xml_path: Path, model_name: str) -> None:
    """Convert the ONNX graph to OpenVINO IR (model.xml + model.bin), fp32 weights (no silent compression)."""
    try:
        import openvino as ov
    except ImportError:
        raise ExportError("format=openvino needs the openvino package; pip install openvino") from None
    try:
        ov_model = ov.convert_model(str(onnx_path))
        ov.save_model(ov_model, str(xml_path), compress_to_fp16=False)
    except Exception as exc:
        raise ExportError(f"model '{model_name}' cannot be converted to OpenVINO: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    lines = [l.strip() for l in str(exc).splitlines() if l.strip()]
    return (f"{exc.__class__.__name__}: {lines[0]}" if lines else exc.__class__.__name__)[:300]
