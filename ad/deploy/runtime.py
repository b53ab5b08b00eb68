"""Run an exported graph: ONNX Runtime for `.onnx`, OpenVINO for its IR. Input: float32 [1,3,H,W] in [0,1];
outputs: the raw image score [1] and the anomaly map [1,H,W] (no threshold, no normalisation: those live in
deploy.json)."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from ad.errors import ConfigError


class OnnxRunner:
    def __init__(self, path: str, threads: Optional[int] = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ConfigError("onnxruntime is not installed; pip install onnxruntime (or install ad[deploy])") from None
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # warnings about unused initialisers are noise to a user
        try:
            self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ConfigError(f"onnxruntime cannot load {path} ({str(exc).splitlines()[0][:200]}); export again "
                              "with this ad version") from None
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        score, amap = self.session.run(None, {self.input: x})
        return np.asarray(score, np.float32).reshape(-1), np.asarray(amap, np.float32)


class OpenVinoRunner:
    def __init__(self, path: str, threads: Optional[int] = None) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise ConfigError("openvino is not installed; pip install openvino (or use the onnx export)") from None
        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": int(threads)} if threads else {}
        config["INFERENCE_PRECISION_HINT"] = "f32"  # CPUs with bf16/fp16 would otherwise change the scores
        self.compiled = core.compile_model(core.read_model(path), "CPU", config)
        self.request = self.compiled.create_infer_request()

    def __call__(self, x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        out = self.request.infer({0: x})
        score, amap = (np.asarray(out[self.compiled.output(i)], np.float32) for i in range(2))
        return score.reshape(-1), amap


def runner(fmt: str, path: str, threads: Optional[int] = None):
    return OnnxRunner(path, threads) if fmt == "onnx" else OpenVinoRunner(path, threads)
