"""ONNX export with a dynamic batch and image size."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

OUTPUT_NAMES = ["heatmaps", "offsets", "tags"]


def export_onnx(model: nn.Module, path: str | Path, input_size: int = 256, opset: int = 18) -> Path:
    """Export ``model`` (eval mode) to ``path``; batch, height and width stay dynamic.

    Height and width must be multiples of 32 at run time (the inference code pads to that).
    The file is written to a temporary name and renamed, so a failed export leaves nothing behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    model = model.eval()
    device = next(model.parameters()).device
    # batch 2 in the example: with batch 1 the exporter may specialise broadcasting matmuls to it
    x = torch.zeros(2, 3, input_size, input_size, device=device)
    batch = torch.export.Dim("batch", min=1, max=1024)
    height = torch.export.Dim("h32", min=1, max=256)
    width = torch.export.Dim("w32", min=1, max=256)
    dynamic_shapes = {"images": {0: batch, 2: 32 * height, 3: 32 * width}}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                (x,),
                input_names=["images"],
                output_names=OUTPUT_NAMES,
                dynamic_shapes=dynamic_shapes,
                opset_version=opset,
                dynamo=True,
                verbose=False,
            )
        program.save(str(tmp))
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()
        data = tmp.with_name(tmp.name + ".data")
        if data.exists():
            data.unlink()
    log.info("exported ONNX model to %s", path)
    return path
