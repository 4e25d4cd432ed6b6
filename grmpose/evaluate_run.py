"""Evaluate a model on a COCO-format split: predict every image, stream results, score them.

Also ``rescore_gain`` (AP without and with a rescoring net). Imports go one way: this module uses
``grmpose.rescore``; ``grmpose.rescore`` never imports this one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from grmpose.data.coco import DataError, load_image
from grmpose.evaluate import (
    ResultsWriter,
    check_ground_truth,
    coverage,
    evaluate_keypoints,
    load_ground_truth,
)
from grmpose.fileio import check_output_dir
from grmpose.rescore import load_rescorer
from grmpose.spec import KeypointSpec

log = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
Rescorer = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (poses N×K×3, scores N) -> new scores N


def evaluate_forward(
    forward: Forward,
    spec: KeypointSpec,
    input_size: int,
    ann_file: str | Path,
    image_dir: str | Path,
    results_path: str | Path,
    flip: bool = False,
    scales: tuple[float, ...] = (1.0,),
    decoder: str = "regression",
    max_images: int | None = None,
    progress: bool = True,
    rescorer: Rescorer | None = None,
    batch_size: int = 1,
    workers: int = 0,
) -> dict:
    """Predict each GT image, stream the poses to ``results_path``, return the OKS metrics.

    ``batch_size`` > 1 runs the images ordered by their ground-truth size, that many per network
    call (equal prepared sizes share one forward, ``grmpose.tta.predict_batch``); ``workers``
    threads decode images ahead of the network (``grmpose.readahead.read_ahead``).

    ``scales``: test scales (``(0.5, 1.0, 2.0)`` is the paper's multi-scale test); ``max_images``:
    only the first images by id, and the ground truth is cut to them too. ``rescorer(poses,
    scores)`` gives the scores written (``grmpose.rescore.Rescorer``: predicted OKS × score).

    The metrics dict also holds ``images`` (evaluated) and ``images_total``; unreadable images are
    skipped with a warning and counted in ``images_unreadable`` -- and they stay in the ground truth,
    so a skipped image costs recall rather than vanishing from the score.
    """
    from grmpose.tta import predict_poses

    gt, source = load_ground_truth(ann_file)
    check_ground_truth(gt, spec, source)  # before predicting: a bad GT must not cost a full run
    images = sorted(gt.get("images", []), key=lambda im: im["id"])
    if max_images is not None:
        images = images[:max_images]
        ids = {im["id"] for im in images}
        gt = {
            **gt,
            "images": images,
            "annotations": [a for a in gt.get("annotations", []) if a["image_id"] in ids],
        }
    from grmpose.readahead import read_ahead
    from grmpose.tta import predict_batch

    order = images
    if batch_size > 1:  # similar sizes next to each other (aspect, then size, from the ground truth)
        order = sorted(images, key=lambda im: (round(im.get("width", 0) / max(im.get("height", 1), 1), 3),
                                               im.get("height", 0), im.get("width", 0), im["id"]))  # fmt: skip
    loaded = read_ahead(
        [Path(image_dir) / im["file_name"] for im in order],
        lambda path: load_image(path, exif_transpose=False),
        workers,
        depth=2 * max(1, batch_size),
    )
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(order), desc="evaluate", dynamic_ncols=True, leave=False)
    unreadable = 0
    seen: list[int] = []
    try:
        with ResultsWriter(results_path) as writer:
            for start in range(0, len(order), max(1, batch_size)):
                batch = []
                for im in order[start : start + max(1, batch_size)]:
                    image = next(loaded)
                    if isinstance(image, DataError):
                        unreadable += 1
                        log.warning("skipping unreadable image %s", image)
                    else:
                        batch.append((im, image))
                if len(batch) == 1:
                    results = [predict_poses(forward, batch[0][1], spec, input_size, flip=flip, scales=scales,
                                             decoder=decoder)]  # fmt: skip
                elif batch:
                    results = predict_batch(forward, [image for _, image in batch], spec, input_size,
                                            flip=flip, scales=scales, decoder=decoder)  # fmt: skip
                for (im, _), (poses, scores) in zip(batch, results if batch else []):
                    if rescorer is not None and len(poses):
                        scores = rescorer(poses, scores)
                    writer.write(im["id"], poses, scores)
                    seen.append(im["id"])
                if bar is not None:
                    bar.update(min(batch_size, len(order) - start))
    finally:
        loaded.close()
        if bar is not None:
            bar.close()
    report = coverage(gt, seen)
    log.info(report.summary())
    metrics = evaluate_keypoints(gt, results_path, spec)
    metrics.update({"images": len(seen), "images_total": len(images), "images_unreadable": unreadable})
    return metrics


def evaluate_model(
    model: nn.Module,
    spec: KeypointSpec,
    input_size: int,
    ann_file: str | Path,
    image_dir: str | Path,
    results_path: str | Path,
    flip: bool = False,
    max_images: int | None = None,
    progress: bool = True,
    device: torch.device | str = "cpu",
    **kwargs,
) -> dict:
    """``evaluate_forward`` for a PyTorch model (restores its train/eval mode afterwards)."""
    from grmpose.api import TorchForward

    was_training = model.training
    try:
        return evaluate_forward(
            TorchForward(model, device), spec, input_size, ann_file, image_dir, results_path,
            flip=flip, max_images=max_images, progress=progress, **kwargs,
        )  # fmt: skip
    finally:
        model.train(was_training)


def write_metrics(path: str | Path, metrics: dict) -> None:
    Path(path).write_text(json.dumps(metrics, indent=2))


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str,
    split: str = "val",
    out: str | Path | None = None,
    flip: bool = False,
    multi_scale: bool = False,
    decoder: str = "regression",
    backend: str = "torch",
    device: str = "cpu",
    max_images: int | None = None,
    rescore: str | Path | None = None,
    progress: bool = True,
    dtype: str = "float32",
    batch_size: int = 1,
    workers: int = 2,
    input_size: int | None = None,
) -> dict:
    """What ``grmpose eval --checkpoint CKPT --data DATA`` does; writes results.json + metrics.json.

    ``input_size``: the test short side at scale 1 (default: the model's training size, as DEKR).

    ``checkpoint`` may be an ``.onnx`` model with its sidecar (e.g. from ``grmpose export --int8``),
    run with ``backend="onnxruntime"``. ``dtype``: the torch backend's ``float32`` / ``bfloat16``.
    """
    from grmpose.api import OnnxForward, TorchForward, export_cached, read_sidecar
    from grmpose.checkpoint import CheckpointError, load_model
    from grmpose.data.coco import resolve_dataset
    from grmpose.inference import check_short_side

    check_short_side(input_size)
    ann_file, image_dir, data_spec = resolve_dataset(data, split)
    out = Path(out) if out is not None else Path(checkpoint).parent / f"eval_{split}"
    check_output_dir(out)
    if Path(checkpoint).suffix == ".onnx":
        if backend != "onnxruntime" or dtype != "float32":
            raise ValueError(f"{checkpoint}: an ONNX model runs with --backend onnxruntime (and no --dtype)")
        stored = read_sidecar(checkpoint)
        if stored is None:
            raise ValueError(
                f"{checkpoint}: no sidecar {Path(checkpoint).with_suffix('.json').name} (config, spec)"
            )
        config, spec = stored
        if spec.num_keypoints != data_spec.num_keypoints:
            raise CheckpointError(
                f"{checkpoint}: model has {spec.num_keypoints} keypoints, the data {data_spec.num_keypoints}"
            )
        out.mkdir(parents=True, exist_ok=True)
        forward = OnnxForward(checkpoint, device=device)
    else:
        model, config, spec = load_model(checkpoint, spec=data_spec, device=device)
        out.mkdir(parents=True, exist_ok=True)
        if backend == "onnxruntime":
            if dtype != "float32":
                raise ValueError(f"--dtype {dtype} runs with --backend torch; for ONNX Runtime export --int8")
            forward = OnnxForward(export_cached(model, config, spec, out / "model.onnx"), device=device)
        elif backend == "torch":
            from grmpose.fuse import fuse_model

            forward = TorchForward(fuse_model(model, inplace=True), device, dtype)  # BatchNorm folded
        else:
            raise ValueError(f"unknown backend {backend!r}: choose torch or onnxruntime")
    rescorer = load_rescorer(rescore, spec) if rescore is not None else None
    metrics = evaluate_forward(
        forward, spec, input_size or config.input_size, ann_file, image_dir, out / "results.json",
        flip=flip, scales=(0.5, 1.0, 2.0) if multi_scale else (1.0,), decoder=decoder,
        max_images=max_images, progress=progress, rescorer=rescorer, batch_size=batch_size, workers=workers,
    )  # fmt: skip
    metrics["results"] = str(out / "results.json")
    write_metrics(out / "metrics.json", metrics)
    return metrics


def rescore_gain(
    checkpoint: str | Path,
    data: str | Path,
    rescore_path: str | Path,
    split: str = "val",
    out: str | Path | None = None,
    flip: bool = False,
    multi_scale: bool = False,
    decoder: str = "regression",
    device: str = "cpu",
    max_images: int | None = None,
    progress: bool = True,
) -> dict:
    """AP of the checkpoint on ``split`` without and with the rescoring net.

    Both evaluations go through ``evaluate_checkpoint``; their results land in ``out/without`` and
    ``out/with`` (default ``out``: ``<checkpoint folder>/rescore_gain_<split>``).

    Returns:
        ``{"AP_without", "AP_with", "metrics_without", "metrics_with"}``.
    """
    out = Path(out) if out is not None else Path(checkpoint).parent / f"rescore_gain_{split}"
    common = dict(
        split=split, flip=flip, multi_scale=multi_scale, decoder=decoder, device=device,
        max_images=max_images, progress=progress,
    )  # fmt: skip
    without = evaluate_checkpoint(checkpoint, str(data), out=out / "without", **common)
    with_ = evaluate_checkpoint(checkpoint, str(data), out=out / "with", rescore=rescore_path, **common)
    return {
        "AP_without": float(without["AP"]),
        "AP_with": float(with_["AP"]),
        "metrics_without": without,
        "metrics_with": with_,
    }
