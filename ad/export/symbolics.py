"""ONNX translations for the two resizes that torch's TorchScript exporter cannot write.

- `aten::_upsample_bilinear2d_aa` (bilinear with antialias=True: the autoencoders', DRAEM's and the PDN
  models' input resampling) -> two MatMuls with torch's own per-axis resize matrices (sizes are static).
- `aten::upsample_bicubic2d` with `scale_factor` (the ViT position-embedding resampling, DINOv2 style) ->
  Resize `cubic` (a = -0.75, PyTorch's kernel) with the *given* scales, which set the sampling positions
  exactly as torch does when it is handed a scale factor.

Both are checked by the export parity test of the models that use them.
"""
from __future__ import annotations

import torch

OPSET = 17
_REGISTERED = False


def _static_sizes(g) -> list:
    sizes = g.original_node.output().type().sizes()
    if sizes is None or any(s is None for s in sizes):
        raise RuntimeError("resize output size is not static")
    return [int(s) for s in sizes]


def _const(g, values, dtype):
    return g.op("Constant", value_t=torch.tensor(values, dtype=dtype))


def _aa_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """[n_out, n_in] float32: torch's own antialiased bilinear resize along one axis, applied to the identity
    basis. The resize is separable and linear, so A_h · x · A_wᵀ reproduces it (ONNX Runtime's Resize
    `antialias=1` uses other filter weights: up to 4 % of the range apart on a 48 -> 32 px downsampling)."""
    import torch.nn.functional as F

    # the identity image resized along its height only: column j is basis vector j resized. (Not a batch of
    # width-1 images: torch's antialiased kernel returns a constant column for those.)
    basis = torch.eye(n_in, dtype=torch.float64)[None, None]
    cols = F.interpolate(basis, size=(n_out, n_in), mode="bilinear", align_corners=False, antialias=True)
    return cols[0, 0].contiguous().float()


def _bilinear_aa(g, x, output_size, align_corners, scale_factors):
    from torch.onnx import symbolic_helper as sh

    if sh._maybe_get_const(align_corners, "b"):
        raise RuntimeError("antialiased bilinear resize with align_corners=True is not translated")
    in_sizes = x.type().sizes()
    out_sizes = _static_sizes(g)
    if in_sizes is None or len(in_sizes) != 4 or any(s is None for s in in_sizes):
        raise RuntimeError("antialiased resize of an input without a static size")
    a_h = _const_tensor(g, _aa_matrix(int(in_sizes[2]), out_sizes[2]))
    a_w_t = _const_tensor(g, _aa_matrix(int(in_sizes[3]), out_sizes[3]).T.contiguous())
    return g.op("MatMul", g.op("MatMul", a_h, x), a_w_t)


def _const_tensor(g, t: torch.Tensor):
    return g.op("Constant", value_t=t)


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
