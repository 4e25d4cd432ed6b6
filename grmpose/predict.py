"""``grmpose predict``: poses for images, folders, globs, videos and cameras, with pictures.

``predict_main`` writes into the output folder:

* ``results.json`` -- COCO keypoint results (``grmpose.evaluate.ResultsWriter``, atomic);
* ``images.json`` -- ``{"images": [{"id", "file_name", "width", "height"[, "frame"]}]}``, what
  each image id refers to;
* ``<stem>.jpg`` per image (skeleton overlay; with ``show_maps`` the heat/centre/offset panels
  beside it), or ``<stem>_pose.mp4`` for a video or camera.

Image ids: for folders and globs, the numeric file stems when every stem is an integer and they
are unique (COCO names such as ``000000000785.jpg`` give id 785), else the running index 0, 1, ...
in sorted order; for videos, the frame index.

Every file appears whole or not at all (temporary files + rename). A corrupt image inside a folder
or glob is logged, skipped and counted; a single corrupt image is an error.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from grmpose.api import PoseEstimator, open_video, poses_from_arrays
from grmpose.data.coco import DataError, load_image
from grmpose.evaluate import ResultsWriter
from grmpose.fileio import atomic_path, check_output_dir
from grmpose.visualize import draw_poses, render_maps, save_image, side_by_side

log = logging.getLogger(__name__)

__all__ = [
    "IMAGE_SUFFIXES",
    "MULTI_SCALES",
    "VIDEO_SUFFIXES",
    "InputSource",
    "predict_main",
    "resolve_source",
]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"})
MULTI_SCALES = (0.5, 1.0, 2.0)  # DESIGN.md §3


@dataclass
class InputSource:
    """What a SOURCE argument names.

    Attributes:
        kind: ``"image"`` (one file), ``"images"`` (folder or glob), ``"video"`` or ``"camera"``.
        images: image files, sorted (image kinds).
        names: ``file_name`` recorded for each image (relative to a folder source).
        video: video path or camera index (video kinds).
    """

    kind: str
    images: list[Path] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    video: str | int | None = None


def resolve_source(source: str) -> InputSource:
    """Classify SOURCE: image file, folder, glob pattern, video file or camera index (digits).

    Raises:
        FileNotFoundError: nothing exists under that name, or a folder/glob holds no images.
    """
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {source}")
        return InputSource("images", files, [p.name for p in files])
    if path.is_file():
        if path.suffix.lower() in VIDEO_SUFFIXES:
            return InputSource("video", video=str(path))
        return InputSource("image", [path], [path.name])
    if source.isdigit():
        return InputSource("camera", video=int(source))
    if any(c in source for c in "*?["):
        matches = sorted(glob.glob(source, recursive=True))
        files = [Path(m) for m in matches if Path(m).is_file() and Path(m).suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise FileNotFoundError(f"no image files match the pattern {source}")
        return InputSource("images", files, [str(p) for p in files])
    raise FileNotFoundError(f"source not found: {source} (not a file, folder, glob pattern or camera index)")


def assign_image_ids(paths: list[Path]) -> list[int]:
    """Numeric file stems when all are distinct integers, else 0, 1, 2, ..."""
    stems = [p.stem for p in paths]
    if all(s.isdigit() for s in stems):
        ids = [int(s) for s in stems]
        if len(set(ids)) == len(ids):
            return ids
    return list(range(len(paths)))


def picture_paths(paths: list[Path], out: Path, image_ids: list[int]) -> list[Path]:
    """``out/<stem>.jpg`` per input, made unique, and never the path of an input file."""
    inputs = {p.resolve() for p in paths}
    used: set[Path] = set()
    result = []
    for p, image_id in zip(paths, image_ids):
        for name in (f"{p.stem}.jpg", f"{p.stem}_pose.jpg", f"{p.stem}_{image_id}_pose.jpg"):
            candidate = out / name
            if candidate not in used and candidate.resolve() not in inputs:
                break
        used.add(candidate)
        result.append(candidate)
    return result


def _make_output_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".grmpose-write-test-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise PermissionError(f"output folder {out} is not writable: {err.strerror or err}") from err


def _write_json(path: Path, payload: object) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=1))


def _picture(
    estimator: PoseEstimator, image: np.ndarray, poses, show_maps: bool, score_threshold: float
) -> np.ndarray:
    picture = draw_poses(image, poses, estimator.spec, score_threshold=score_threshold)
    if show_maps:
        heat, off, m = estimator.maps(image)
        picture = side_by_side(picture, render_maps(image, heat, off, estimator.spec, image_to_input=m))
    return picture


def build_estimator(
    checkpoint: str | None,
    preset: str | None,
    spec: str,
    device: str,
    backend: str,
    flip: bool,
    multi_scale: bool,
    decoder: str,
    max_people: int = 30,
    cache_dir: str | Path | None = None,
    input_size: int | None = None,
) -> PoseEstimator:
    """The estimator for the predict command: a checkpoint (or .onnx), or a preset's random weights."""
    if (checkpoint is None) == (preset is None):
        raise ValueError("give either a checkpoint or a preset (random weights), not both or neither")
    scales = MULTI_SCALES if multi_scale else (1.0,)
    options = dict(
        device=device,
        backend=backend,
        flip=flip,
        scales=scales,
        decoder=decoder,
        max_people=max_people,
        input_size=input_size,
    )
    if checkpoint is not None:
        return PoseEstimator.from_checkpoint(checkpoint, cache_dir=cache_dir, **options)
    log.warning(
        "preset %r with random weights: the poses are noise (give a checkpoint for real ones)", preset
    )
    return PoseEstimator.from_preset(preset, spec=spec, **options)


def _predict_images(
    estimator: PoseEstimator,
    src: InputSource,
    out: Path,
    show_maps: bool,
    score_threshold: float,
    progress: bool,
) -> dict:
    ids = assign_image_ids(src.images)
    pictures = picture_paths(src.images, out, ids)
    entries, written, skipped, people = [], [], [], 0
    items = list(zip(src.images, src.names, ids, pictures))
    bar = tqdm(items, desc="predict", unit="img", disable=not progress or len(items) < 2)
    with ResultsWriter(out / "results.json") as writer:
        for path, name, image_id, picture_path in bar:
            try:
                image = load_image(path, exif_transpose=True)
            except DataError as err:
                if src.kind == "image":
                    raise
                log.warning("skipping %s", err)
                skipped.append(str(path))
                continue
            poses, scores = estimator.predict_arrays(image)
            people += writer.write(image_id, poses, scores)
            picture = _picture(estimator, image, poses_from_arrays(poses, scores), show_maps, score_threshold)
            save_image(picture_path, picture)
            written.append(str(picture_path))
            h, w = image.shape[:2]
            entries.append({"id": image_id, "file_name": name, "width": w, "height": h})
    _write_json(out / "images.json", {"images": entries})
    return {
        "processed": len(entries),
        "skipped": len(skipped),
        "skipped_files": skipped,
        "people": people,
        "pictures": written,
    }


def _frames(cap, max_frames: int | None, catch_interrupt: bool) -> Iterator[np.ndarray]:
    """BGR frames; a camera stream ends cleanly on Ctrl-C."""
    count = 0
    try:
        while max_frames is None or count < max_frames:
            ok, frame = cap.read()
            if not ok:
                return
            count += 1
            yield frame
    except KeyboardInterrupt:
        if not catch_interrupt:
            raise
        log.info("camera stream stopped after %d frames", count)


def _predict_video(
    estimator: PoseEstimator,
    src: InputSource,
    out: Path,
    show_maps: bool,
    score_threshold: float,
    progress: bool,
    max_frames: int | None,
) -> dict:
    import cv2

    cap = open_video(src.video)
    camera = src.kind == "camera"
    stem = f"camera{src.video}" if camera else Path(str(src.video)).stem
    name = str(src.video) if camera else Path(str(src.video)).name
    video_path = out / f"{stem}_pose.mp4"
    tmp = out / f".{stem}_pose.{uuid.uuid4().hex[:8]}.tmp.mp4"
    fps = cap.get(cv2.CAP_PROP_FPS)
    fps = fps if math.isfinite(fps) and 0 < fps <= 240 else 25.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if not camera else 0
    total = min(total, max_frames) if max_frames and total > 0 else total
    writer = None
    entries, people = [], 0
    try:
        frames = _frames(cap, max_frames, catch_interrupt=camera)
        bar = tqdm(frames, desc="predict", unit="frame", total=total or None, disable=not progress)
        with ResultsWriter(out / "results.json") as results:
            for index, bgr in enumerate(bar):
                image = np.ascontiguousarray(bgr[..., ::-1])
                poses, scores = estimator.predict_arrays(image)
                people += results.write(index, poses, scores)
                picture = _picture(
                    estimator, image, poses_from_arrays(poses, scores), show_maps, score_threshold
                )
                if writer is None:
                    fourcc = cv2.VideoWriter_fourcc(*"mp4v")
                    writer = cv2.VideoWriter(str(tmp), fourcc, fps, (picture.shape[1], picture.shape[0]))
                    if not writer.isOpened():
                        raise OSError(f"cannot write video {video_path} (OpenCV VideoWriter failed)")
                writer.write(np.ascontiguousarray(picture[..., ::-1]))
                h, w = image.shape[:2]
                entries.append({"id": index, "file_name": name, "frame": index, "width": w, "height": h})
            if not entries:
                raise OSError(
                    f"no frames could be read from {'camera' if camera else 'video file'} {src.video}"
                )
        writer.release()
        writer = None
        os.replace(tmp, video_path)
    finally:
        cap.release()
        if writer is not None:
            writer.release()
        if tmp.exists():
            tmp.unlink()
    _write_json(out / "images.json", {"images": entries})
    return {
        "processed": len(entries),
        "skipped": 0,
        "skipped_files": [],
        "people": people,
        "video": str(video_path),
        "fps": fps,
    }


def predict_main(
    source: str,
    out: str,
    checkpoint: str | None = None,
    preset: str | None = None,
    spec: str = "coco",
    device: str = "cpu",
    backend: str = "torch",
    flip: bool = False,
    multi_scale: bool = False,
    decoder: str = "regression",
    show_maps: bool = False,
    score_threshold: float = 0.1,
    progress: bool = True,
    max_frames: int | None = None,
    max_people: int = 30,
    cache_dir: str | None = None,
    input_size: int | None = None,
) -> dict:
    """Predict poses for SOURCE and write results and pictures into ``out``.

    Args:
        source: image file, folder (its images, sorted), glob pattern (quote it in a shell), video
            file (.mp4/.avi/.mov/.mkv/...) or camera index (digits).
        out: output folder (created).
        checkpoint: ``.safetensors``/``.pt`` checkpoint or ``.onnx`` model with its sidecar.
        preset: a preset name with random weights instead of a checkpoint (smoke tests, timing).
        spec: keypoint spec for a preset (a checkpoint carries its own).
        device: ``cpu``, ``cuda``, ``cuda:1``, ... (both backends).
        backend: ``torch`` or ``onnxruntime`` (exported once into the cache folder).
        flip, multi_scale, decoder: test-time options (multi-scale = scales 0.5, 1, 2).
        show_maps: put the heat / centre / offset panels beside each picture (one more network
            run per image, at scale 1).
        score_threshold: joints and people below it are not drawn (all are written to results).
        progress: tqdm bar for folders, globs and videos.
        max_frames: stop a video or camera after this many frames.
        max_people: centres kept per image.
        cache_dir: where ONNX exports are cached (default ``grmpose.api.default_cache_dir()``).
        input_size: test short side at scale 1 (default: the model config's input size).

    Returns:
        Summary dict: ``source``, ``kind``, ``processed``, ``skipped``, ``skipped_files``,
        ``people``, ``results``, ``images_json``, ``pictures`` (image kinds) or ``video`` and
        ``fps`` (video kinds), ``seconds``, ``backend``, ``device``.

    Raises:
        FileNotFoundError: missing source, or a folder/glob without images.
        PermissionError, NotADirectoryError: the output folder cannot be written.
        ValueError: unknown preset/spec/backend, bad option combination, a single unreadable image
            (``DataError``), unusable checkpoint (``CheckpointError``).
        OSError: a video or camera that cannot be opened or read.
    """
    start = time.perf_counter()
    src = resolve_source(source)
    out_dir = Path(out)
    check_output_dir(out_dir)
    estimator = build_estimator(
        checkpoint,
        preset,
        spec,
        device,
        backend,
        flip,
        multi_scale,
        decoder,
        max_people,
        cache_dir,
        input_size,
    )
    if src.kind in ("video", "camera"):
        # open the source before creating anything, so a bad video leaves no output folder behind
        open_video(src.video).release()
    _make_output_dir(out_dir)
    log.info("predicting %s (%s) with %r", source, src.kind, estimator)
    if src.kind in ("image", "images"):
        summary = _predict_images(estimator, src, out_dir, show_maps, score_threshold, progress)
    else:
        summary = _predict_video(estimator, src, out_dir, show_maps, score_threshold, progress, max_frames)
    summary.update(
        source=source,
        kind=src.kind,
        results=str(out_dir / "results.json"),
        images_json=str(out_dir / "images.json"),
        seconds=round(time.perf_counter() - start, 3),
        backend=backend,
        device=device,
    )
    if summary["skipped"]:
        log.warning("skipped %d unreadable image(s)", summary["skipped"])
    return summary
