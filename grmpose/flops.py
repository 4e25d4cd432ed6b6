"""Parameter and FLOP counts, with torch's own FLOP counter (``torch.utils.flop_counter``).

``torch.utils.flop_counter`` counts convolutions and matrix products (2 FLOPs per multiply-add)
but counts ``grid_sample`` as zero. The adaptive convolution's 3x3 weights are applied by a
grouped 1x1 convolution, which the counter sees; its bilinear sampling is ``grid_sample``, which
we count here as 4 multiply-adds per sampled value (one per neighbour of the bilinear stencil).

GMACs are multiply-accumulates; papers' "GFLOPs" for DEKR and HRNet are in fact GMACs.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from grmpose.runtime import standard_operators

aten = torch.ops.aten


def _grid_sample_flops(x_shape, grid_shape, *args, out_shape=None, **kwargs) -> int:
    """2 FLOPs x 4 neighbours per output value: N x C x H_out x W_out."""
    n, c = x_shape[0], x_shape[1]
    h_out, w_out = grid_shape[1], grid_shape[2]
    return 2 * 4 * n * c * h_out * w_out


CUSTOM_FLOPS = {aten.grid_sampler_2d: _grid_sample_flops}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_size: int | tuple[int, int], batch: int = 1) -> dict[str, float]:
    """FLOPs of one forward pass at ``input_size`` (square int or (H, W)).

    Returns ``{"flops": total FLOPs, "macs": multiply-adds, "grid_sample_flops": part of flops}``.
    """
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    param = next(model.parameters())
    x = torch.zeros(batch, 3, h, w, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False, custom_mapping=CUSTOM_FLOPS)
    # count the standard operators: grid_sample for the adaptive convolution, F.interpolate, ...
    with torch.no_grad(), counter, standard_operators():
        model(x)
    model.train(was_training)
    flops = counter.get_total_flops()
    by_op = counter.get_flop_counts().get("Global", {})
    grid = sum(v for k, v in by_op.items() if "grid_sampler" in str(k))
    return {"flops": float(flops), "macs": flops / 2.0, "grid_sample_flops": float(grid)}


def summarize(preset: str, spec: str = "coco", input_size: int | None = None) -> dict:
    """``{"preset", "input_size", "params", "gmacs", "gflops"}`` for a named preset."""
    from grmpose.config import get_preset
    from grmpose.model.net import build_model

    config = get_preset(preset)
    size = input_size or config.input_size
    model = build_model(config, spec)
    counts = count_flops(model, size)
    return {
        "preset": preset,
        "input_size": size,
        "params": count_parameters(model),
        "gmacs": counts["macs"] / 1e9,
        "gflops": counts["flops"] / 1e9,
        "sampling_gmacs": counts["grid_sample_flops"] / 2e9,
    }
