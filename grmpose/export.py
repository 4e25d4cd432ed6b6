"""ONNX export with a dynamic batch and image size, and static int8 quantisation (QDQ)."""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from grmpose.fileio import atomic_path
from grmpose.model import adaptive_conv_kernel

if TYPE_CHECKING:
    import onnx

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
        with warnings.catch_warnings(), adaptive_conv_kernel.disabled():  # ONNX has no fused kernel
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


# ------------------------------------------------------------------------------------------ int8
# Op types left in float32 by default. GridSample is outside ONNX Runtime's QDQ registry anyway
# (it would run in float between a DequantizeLinear and a QuantizeLinear); naming it keeps the
# sampled offsets' input (the sampling grid) in float too, so a tap position is never rounded
# to an int8 step of the grid's range.
KEEP_FP32_OPS = ("GridSample",)


@dataclass(frozen=True)
class Int8Report:
    """What ``quantize_int8`` did.

    Attributes:
        path: the quantised model.
        calibration_images: images whose activations set the int8 ranges.
        kept_fp32: names of the nodes left in float32 (``fp32_nodes``).
        quantized_ops: ``{op type: count}`` of the nodes that run in int8 (``quantized_op_counts``).
        kept_fp32_ops: ``{op type: count}`` of the compute nodes (Conv, MatMul, Gemm, GridSample)
            among ``kept_fp32``.
    """

    path: Path
    calibration_images: int
    kept_fp32: tuple[str, ...]
    quantized_ops: dict[str, int]
    kept_fp32_ops: dict[str, int]


HEAD_STOP_OPS = ("Conv", "MatMul", "Gemm")


def path_nodes(model: onnx.ModelProto, tensors: Sequence[str], stop_ops: Sequence[str]) -> list[str]:
    """Names of the nodes on every path that ends in ``tensors``, walking back to (and including)
    the first node of a type in ``stop_ops`` on each path. Shape computations are not followed."""
    producer = {out: node for node in model.graph.node for out in node.output}
    found: set[str] = set()
    stack = list(tensors)
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in found or node.op_type == "Shape":  # shapes carry no data
            continue
        found.add(node.name)
        if node.op_type not in stop_ops:
            stack.extend(node.input)
    return sorted(found)


def fp32_nodes(
    model: onnx.ModelProto, keep_heads: bool = True, keep_ops: Sequence[str] = KEEP_FP32_OPS
) -> list[str]:
    """Nodes to leave in float32 when quantising ``model``.

    * every node of a type in ``keep_ops``, and the path that computes its second and later
      inputs back to the convolution that starts it (for ``GridSample``: the sampling grid, from
      the A/t predictor conv through the fixed 18x6 grid product), so no tap position is rounded;
    * with ``keep_heads``: the path from each graph output back to the last Conv/MatMul/Gemm (the
      1x1 convs that write heatmaps, tags and the K offset maps, and the concatenations after
      them), so scores and sub-pixel offsets are not rounded to int8 steps of their range.
    """
    keep: set[str] = set()
    for node in model.graph.node:
        if node.op_type in set(keep_ops):
            keep.add(node.name)
            keep.update(path_nodes(model, list(node.input[1:]), ("Conv",)))
    if keep_heads:
        keep.update(path_nodes(model, [o.name for o in model.graph.output], HEAD_STOP_OPS))
    return sorted(keep)


class ImageCalibrationReader:
    """ONNX Runtime ``CalibrationDataReader`` over image files: each image prepared as at test time
    (short side ``input_size``, padded to /32, ImageNet-normalised), one 1x3xHxW batch per image."""

    def __init__(self, paths: Sequence[str | Path], input_size: int, input_name: str = "images") -> None:
        self.paths = [Path(p) for p in paths]
        self.input_size = int(input_size)
        self.input_name = input_name
        self._next, self._end = 0, len(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def set_range(self, start_index: int, end_index: int) -> None:
        """Serve images ``start_index:end_index`` next (ONNX Runtime's strided calibration)."""
        self._next, self._end = start_index, min(end_index, len(self.paths))

    def get_next(self) -> dict[str, np.ndarray] | None:
        from grmpose.data.coco import load_image
        from grmpose.inference import prepare_image

        if self._next >= self._end:
            return None
        path = self.paths[self._next]
        self._next += 1
        tensor, _ = prepare_image(load_image(path, exif_transpose=True), self.input_size)
        return {self.input_name: tensor[None].numpy()}

    def rewind(self) -> None:
        self._next, self._end = 0, len(self.paths)


def calibration_images(pattern: str | Path, limit: int | None = None) -> list[Path]:
    """Image files of a folder or glob for ``--calibration`` (sorted; the first ``limit``).

    Raises:
        ValueError: nothing matches, naming the flag and the pattern.
    """
    from grmpose.predict import resolve_source

    try:
        src = resolve_source(str(pattern))
    except FileNotFoundError as err:
        raise ValueError(f"--calibration {pattern}: {err}") from err
    if src.kind not in ("image", "images"):
        raise ValueError(f"--calibration {pattern}: expected image files, got a {src.kind}")
    return src.images[:limit] if limit else src.images


def quantized_op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """``{op type: count}`` of the nodes that run in int8 in a QDQ model: some input comes from a
    ``DequantizeLinear`` and some output goes into a ``QuantizeLinear`` (ONNX Runtime fuses such a
    DQ -> op -> Q group into one integer kernel, e.g. ``QLinearConv``)."""
    dq_out = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    q_in = {i for n in model.graph.node if n.op_type == "QuantizeLinear" for i in n.input}
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if any(i in dq_out for i in node.input) and any(o in q_in for o in node.output):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def quantize_int8(
    fp32_path: str | Path,
    path: str | Path,
    images: Sequence[str | Path],
    input_size: int,
    keep_heads: bool = True,
    keep_ops: Sequence[str] = KEEP_FP32_OPS,
    reduce_range: bool = True,
) -> Int8Report:
    """Statically quantise an exported model with ONNX Runtime's own tools (QDQ format).

    Weights are int8 per output channel (symmetric), activations int8 with ranges from the
    calibration images (MinMax). ``keep_heads`` leaves the final 1x1 convs (and what follows
    them) in float32: their outputs are the heatmap peaks (scores near 0.01-1) and sub-pixel
    offsets that decoding reads directly, so one int8 step of their range is a visible error; they
    cost little time. ``keep_ops`` (default ``GridSample``) stay float with their sampling grids
    (``fp32_nodes``).
    ``reduce_range`` quantises weights to 7 bits: x86 CPUs without VNNI multiply u8 x s8 pairs with
    ``vpmaddubsw``, whose 16-bit sums saturate with full 8-bit weights.

    The model is first run through ONNX Runtime's ``quant_pre_process`` (shape inference and
    graph optimisation) when that succeeds. Written atomically: a failure leaves nothing at ``path``.

    Raises:
        ImportError: onnxruntime missing; ValueError: no calibration images.
    """
    try:
        import onnx
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as err:
        raise ImportError("int8 export needs onnxruntime (pip install 'grmpose[onnx]')") from err
    if not images:
        raise ValueError("int8 export needs at least one calibration image (--calibration)")
    fp32_path, path = Path(fp32_path), Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="grmpose-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        except Exception as err:  # a graph the optimiser cannot take is quantised as it is
            log.warning("quant_pre_process failed (%s); quantising the model as exported", err)
            prepared = fp32_path
        model = onnx.load(str(prepared))
        keep = fp32_nodes(model, keep_heads, keep_ops)
        input_name = model.graph.input[0].name
        reader = ImageCalibrationReader(images, input_size, input_name)
        tmp_out = Path(tmp) / "int8.onnx"
        quantize_static(
            str(prepared),
            str(tmp_out),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=reduce_range,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=keep,
            calibrate_method=CalibrationMethod.MinMax,
            # ranges are merged after every image (set_range), so the calibrator holds one image's
            # activations at a time, not all of them
            extra_options={
                "ActivationSymmetric": False,
                "WeightSymmetric": True,
                "CalibStridedMinMax": 1,
            },
        )
        quantized = onnx.load(str(tmp_out))
        with atomic_path(path) as out:
            onnx.save(quantized, str(out))
    counts = quantized_op_counts(quantized)
    log.info("int8 model %s: %d nodes kept in float32", path, len(keep))
    kept_set = set(keep)
    kept_ops: dict[str, int] = {}
    for node in model.graph.node:
        if node.name in kept_set and node.op_type in (*HEAD_STOP_OPS, *keep_ops):
            kept_ops[node.op_type] = kept_ops.get(node.op_type, 0) + 1
    return Int8Report(path, len(images), tuple(keep), counts, dict(sorted(kept_ops.items())))


def export_int8(
    model: nn.Module,
    path: str | Path,
    images: Sequence[str | Path],
    input_size: int,
    opset: int = 18,
    **options: object,
) -> Int8Report:
    """Export ``model`` to float32 ONNX in a temporary folder, then ``quantize_int8`` it to ``path``
    (calibration at ``input_size``; ``options`` go to ``quantize_int8``)."""
    with tempfile.TemporaryDirectory(prefix="grmpose-int8-") as tmp:
        fp32 = export_onnx(model, Path(tmp) / "fp32.onnx", input_size=input_size, opset=opset)
        return quantize_int8(fp32, path, images, input_size, **options)
