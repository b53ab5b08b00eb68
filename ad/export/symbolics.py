"""ONNX translations for the two resizes that torch's TorchScript exporter cannot write.

- `aten::_upsample_bilinear2d_aa` (bilinear with antialias=True: the autoencoders', DRAEM's and the PDN
  models' input downsampling) -> ONNX Resize-18 `linear` with `antialias=1`, output size from the trace.
- `aten::upsample_bicubic2d` with `scale_factor` (the ViT position-embedding resampling, DINOv2 style) ->
  Resize `cubic` (a = -0.75, PyTorch's kernel) with the *given* scales, which set the sampling positions
  exactly as torch does when it is handed a scale factor.

Both are checked by the export parity test of the models that use them.
"""
from __future__ import annotations

import torch

OPSET = 18  # Resize's `antialias` attribute needs opset 18
_REGISTERED = False


def _static_sizes(g) -> list:
    sizes = g.original_node.output().type().sizes()
    if sizes is None or any(s is None for s in sizes):
        raise RuntimeError("resize output size is not static")
    return [int(s) for s in sizes]


def _const(g, values, dtype):
    return g.op("Constant", value_t=torch.tensor(values, dtype=dtype))


def _bilinear_aa(g, x, output_size, align_corners, scale_factors):
    from torch.onnx import symbolic_helper as sh

    if sh._maybe_get_const(align_corners, "b"):
        raise RuntimeError("antialiased bilinear resize with align_corners=True has no ONNX equivalent")
    empty = _const(g, [], torch.float32)
    return g.op("Resize", x, empty, empty, _const(g, _static_sizes(g), torch.int64), mode_s="linear",
                coordinate_transformation_mode_s="half_pixel", antialias_i=1)


def _bicubic(g, x, output_size, align_corners, scale_factors):
    from torch.onnx import symbolic_helper as sh

    if sh._maybe_get_const(align_corners, "b"):
        raise RuntimeError("bicubic resize with align_corners=True is not translated")
    scales = sh._maybe_get_const(scale_factors, "fs")
    empty = _const(g, [], torch.float32)
    common = dict(mode_s="cubic", cubic_coeff_a_f=-0.75, coordinate_transformation_mode_s="half_pixel")
    if sh._is_none(scale_factors) or scales is None or not isinstance(scales, (list, tuple)):
        return g.op("Resize", x, empty, empty, _const(g, _static_sizes(g), torch.int64), **common)
    return g.op("Resize", x, empty, _const(g, [1.0, 1.0, *[float(s) for s in scales]], torch.float32), **common)


def register() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    torch.onnx.register_custom_op_symbolic("aten::_upsample_bilinear2d_aa", _bilinear_aa, OPSET)
    torch.onnx.register_custom_op_symbolic("aten::upsample_bicubic2d", _bicubic, OPSET)
    _REGISTERED = True
