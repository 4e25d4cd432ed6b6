"""Upsampling by an integer factor (HRNet's fusion, DEKR's head input) as two small matrix products.

``upsample(x, f, mode)`` equals ``F.interpolate(x, scale_factor=f, mode=mode)`` for "nearest" and for
"bilinear" with ``align_corners=False``. Both interpolations are separable and linear: along one axis,
output row ``i`` of a bilinear upsampling reads the input rows around ``(i + 0.5) / f - 0.5``
(clamped to the map) with weights ``1 - l`` and ``l``; a nearest one copies row ``i // f``. So the
upsampled map is ``Mh @ x @ Mw^T`` with two small (n*f) x n weight matrices, and its backward is
``Mh^T @ g @ Mw``: matrix products both ways instead of PyTorch's CPU interpolation kernels, whose
backward is especially slow. Measured by ``benchmarks/op_profile.py``'s training step (see
``docs/performance.md``).

When a graph is being captured (ONNX export, ``torch.compile``) or operators are counted
(``grmpose.runtime.standard_operators``), ``F.interpolate`` is used as it is: the exported graph keeps
the standard Resize operator and its dynamic sizes.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from grmpose.runtime import standard_operators_only

MODES = ("nearest", "bilinear")


@functools.lru_cache(maxsize=128)
def interpolation_matrix(
    size: int, factor: int, mode: str, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """The (size * factor) x size matrix of one axis's interpolation weights (bilinear: align_corners=False)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    rows = torch.arange(size * factor)
    matrix = torch.zeros(size * factor, size, dtype=torch.float64)
    if mode == "nearest":
        matrix[rows, rows // factor] = 1.0
    else:
        src = ((rows.double() + 0.5) / factor - 0.5).clamp(min=0.0)
        lo = src.floor().long().clamp(max=size - 1)
        hi = (lo + 1).clamp(max=size - 1)
        frac = src - lo
        matrix.index_put_((rows, lo), 1.0 - frac, accumulate=True)
        matrix.index_put_((rows, hi), frac, accumulate=True)
    return matrix.to(dtype=dtype, device=device)


def upsample(x: torch.Tensor, factor: int, mode: str) -> torch.Tensor:
    """B x C x H x W -> B x C x fH x fW by interpolation ``mode`` (see the module notes)."""
    if factor == 1:
        return x
    if standard_operators_only():
        corners = {"align_corners": False} if mode == "bilinear" else {}
        return F.interpolate(x, scale_factor=float(factor), mode=mode, **corners)
    h, w = x.shape[-2:]
    mh = interpolation_matrix(h, factor, mode, x.dtype, x.device)
    mw = interpolation_matrix(w, factor, mode, x.dtype, x.device)
    # along W first: one matrix product over all B*C*H rows; then along H, batched over B*C
    return torch.matmul(mh, torch.matmul(x, mw.t()))
