"""fp32 against int8 (ONNX Runtime) and bfloat16 (PyTorch): latency and AP of one checkpoint, side by side.

    python -m benchmarks.precision --checkpoint runs/demo/run/last.safetensors --data runs/demo/data
    python -m benchmarks.precision --checkpoint CKPT --data DATA --max-images 300 --flip

Variants: PyTorch float32 and bfloat16 (BatchNorm folded), ONNX Runtime float32, and two int8 models
made by ``grmpose.export.quantize_int8`` from the same float32 export, calibrated on the first
``--calibration-images`` images of the *training* split (never the evaluated ones): ``int8`` keeps
the heads' last convs and the sampling grids in float32 (the export default), ``int8-all``
quantises everything ONNX Runtime can, to show what keeping those layers buys.

Latency: batch 1 at the model's input size on the first evaluated image, the variants timed
interleaved call by call (fair under a drifting load), median of ``--repeats``. AP: the held-out
split through ``evaluate_forward`` (same decoder and options for every variant). Writes
``precision.json`` and ``precision.md``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import logging
import os
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.provenance import write_results_json
from grmpose.bench import _interleaved

RESULTS = Path(__file__).resolve().parent / "results"

log = logging.getLogger("benchmarks.precision")


def run(
    checkpoint: str,
    data: str,
    split: str = "val",
    max_images: int | None = 100,
    calibration_images: int = 32,
    repeats: int = 5,
    warmup: int = 1,
    flip: bool = False,
    threads: int = 2,
    out_dir: Path = RESULTS,
) -> dict:
    """Measure every variant; returns the result dict (also written to ``out_dir``)."""
    from grmpose.api import OnnxForward, TorchForward
    from grmpose.checkpoint import load_model
    from grmpose.data.coco import load_image, resolve_dataset
    from grmpose.evaluate import load_ground_truth
    from grmpose.evaluate_run import evaluate_forward
    from grmpose.export import export_onnx, quantize_int8
    from grmpose.fuse import fuse_model
    from grmpose.inference import prepare_image

    torch.set_num_threads(threads)
    ann, image_dir, data_spec = resolve_dataset(data, split)
    train_ann, train_dir, _ = resolve_dataset(data, "train")
    model, config, spec = load_model(checkpoint, spec=data_spec)
    size = config.input_size
    train_gt, _ = load_ground_truth(train_ann)
    calibration = [Path(train_dir) / im["file_name"] for im in train_gt["images"][:calibration_images]]
    gt, _ = load_ground_truth(ann)
    first = sorted(gt["images"], key=lambda im: im["id"])[0]
    x = prepare_image(load_image(Path(image_dir) / first["file_name"], exif_transpose=False), size)[0][None]
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="grmpose-precision-") as tmp:
        t0 = time.perf_counter()
        fp32_path = export_onnx(copy.deepcopy(model).eval(), Path(tmp) / "fp32.onnx", input_size=size)
        export_s = time.perf_counter() - t0
        reports = {}
        for name, keep in (("int8", True), ("int8-all", False)):
            t0 = time.perf_counter()
            reports[name] = quantize_int8(fp32_path, Path(tmp) / f"{name}.onnx", calibration, size,
                                          keep_heads=keep, keep_ops=("GridSample",) if keep else ())  # fmt: skip
            reports[name] = {"seconds": time.perf_counter() - t0, "quantized_ops": reports[name].quantized_ops,
                             "kept_fp32_ops": reports[name].kept_fp32_ops}  # fmt: skip
        fused = fuse_model(model)
        forwards = {
            "torch float32": TorchForward(copy.deepcopy(fused), "cpu"),
            "torch bfloat16": TorchForward(copy.deepcopy(fused), "cpu", "bfloat16"),
            "onnxruntime float32": OnnxForward(fp32_path),
            "onnxruntime int8": OnnxForward(Path(tmp) / "int8.onnx"),
            "onnxruntime int8-all": OnnxForward(Path(tmp) / "int8-all.onnx"),
        }
        latency = _interleaved({name: (lambda f=f: f(x)) for name, f in forwards.items()}, repeats, warmup)
        for name, forward in forwards.items():
            log.info("evaluating %s", name)
            t0 = time.perf_counter()
            metrics = evaluate_forward(forward, spec, size, ann, image_dir, Path(tmp) / f"{name}.json", flip=flip,
                                       max_images=max_images, progress=False)  # fmt: skip
            rows[name] = {**latency[name], "AP": metrics["AP"], "AP50": metrics.get("AP50"),
                          "AR": metrics.get("AR"), "images": metrics["images"],
                          "eval_s": time.perf_counter() - t0}  # fmt: skip
    ref_ort, ref_torch = rows["onnxruntime float32"], rows["torch float32"]
    for name, row in rows.items():
        ref = ref_ort if name.startswith("onnxruntime") else ref_torch
        row["latency_vs_fp32"] = row["median_ms"] / ref["median_ms"]
        row["AP_minus_fp32"] = row["AP"] - ref["AP"]
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": str(checkpoint), "data": str(data), "split": split, "input_size": size,
        "input_shape": list(x.shape), "flip": flip, "max_images": max_images, "threads": threads,
        "calibration_images": len(calibration), "export_s": export_s, "quantization": reports,
        "load_average": [round(v, 2) for v in os.getloadavg()], "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "rows": rows,
    }  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    write_results_json(out_dir / "precision.json", result, "benchmarks.precision", indent=1, default=None)
    (out_dir / "precision.md").write_text(markdown(result))
    return result


def latency_only(preset: str = "grmpose-w32", threads: int = 2, repeats: int = 5, warmup: int = 1,
                 calibration_images: int = 8, input_size: int | None = None) -> dict:  # fmt: skip
    """Latency of the variants for a preset's random weights (no AP: that needs a trained model), for
    ``benchmarks.run_all``. Calibration images are synthetic crowds at the input size.

    Returns:
        ``{"preset", "input_size", "rows": {variant: {"median_ms", "min_ms", "vs_fp32"}}, "quantized_ops",
        "kept_fp32_ops", "export_s", "quantize_s"}``.
    """
    from grmpose.api import OnnxForward, TorchForward
    from grmpose.bench import peak_rss_mib
    from grmpose.config import get_preset
    from grmpose.data.synthetic import generate
    from grmpose.export import export_onnx, quantize_int8
    from grmpose.fuse import fuse_model
    from grmpose.model.net import build_model
    from grmpose.runtime import keep_freed_memory_for_inference

    torch.set_num_threads(threads)
    keep_freed_memory_for_inference()  # as a CPU PoseEstimator does
    size = input_size or get_preset(preset).input_size
    torch.manual_seed(0)
    model = build_model(preset, "coco").eval()
    with tempfile.TemporaryDirectory(prefix="grmpose-precision-") as tmp:
        generate(f"{tmp}/data", "coco", calibration_images, 1, 0, image_size=size, max_people=8)
        images = sorted((Path(tmp) / "data" / "train").glob("*.jpg"))
        t0 = time.perf_counter()
        fp32_path = export_onnx(copy.deepcopy(model), Path(tmp) / "fp32.onnx", input_size=size)
        export_s, t0 = time.perf_counter() - t0, time.perf_counter()
        report = quantize_int8(fp32_path, Path(tmp) / "int8.onnx", images, size)
        quantize_s = time.perf_counter() - t0
        fused = fuse_model(model)
        forwards = {
            "torch float32": TorchForward(copy.deepcopy(fused), "cpu"),
            "torch bfloat16": TorchForward(copy.deepcopy(fused), "cpu", "bfloat16"),
            "onnxruntime float32": OnnxForward(fp32_path),
            "onnxruntime int8": OnnxForward(Path(tmp) / "int8.onnx"),
        }
        x = torch.randn(1, 3, size, size)
        rows = _interleaved({name: (lambda f=f: f(x)) for name, f in forwards.items()}, repeats, warmup)
    for name, row in rows.items():
        ref = rows["onnxruntime float32" if name.startswith("onnxruntime") else "torch float32"]
        row["vs_fp32"] = row["median_ms"] / ref["median_ms"]
    return {"preset": preset, "input_size": size, "threads": threads, "rows": rows,
            "quantized_ops": report.quantized_ops, "kept_fp32_ops": report.kept_fp32_ops, "export_s": export_s,
            "quantize_s": quantize_s, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "peak_rss_mib": peak_rss_mib()}  # fmt: skip


def markdown(result: dict) -> str:
    lines = [f"# fp32, int8 and bf16 ({result['date']})", "",
             f"`{result['checkpoint']}` on `{result['data']}` ({result['split']}, {result['rows']['torch float32']['images']} "
             f"images{', flip' if result['flip'] else ''}); latency at batch 1, input {result['input_shape']}, "
             f"{result['threads']} threads, CPU capability {result['cpu_capability']}, interleaved; "
             f"load average {result['load_average']} at the end.", "",
             "| variant | latency ms (min) | vs fp32 | AP | AP - fp32 | AP50 |", "|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in result["rows"].items():
        lines.append(f"| {name} | {r['median_ms']:.0f} ({r['min_ms']:.0f}) | {r['latency_vs_fp32']:.2f} | "
                     f"{r['AP']:.4f} | {r['AP_minus_fp32']:+.4f} | {r['AP50']:.4f} |")  # fmt: skip
    for name, q in result["quantization"].items():
        lines.append(
            f"\n{name}: int8 nodes {q['quantized_ops']}; float32 compute nodes {q['kept_fp32_ops']}."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True, help="dataset with train (calibration) and val splits")
    parser.add_argument("--split", default="val")
    parser.add_argument("--max-images", type=int, default=100)
    parser.add_argument("--calibration-images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--flip", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    result = run(args.checkpoint, args.data, args.split, args.max_images, args.calibration_images, args.repeats,
                 flip=args.flip, threads=args.threads, out_dir=args.out)  # fmt: skip
    print(markdown(result))


if __name__ == "__main__":
    main()
