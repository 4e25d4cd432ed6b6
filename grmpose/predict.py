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
import itertools
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from grmpose.api import PoseEstimator, open_video, poses_from_arrays
from grmpose.data.coco import DataError, load_image
from grmpose.evaluate import ResultsWriter
from grmpose.fileio import atomic_path, check_output_dir
from grmpose.readahead import prefetch, read_ahead
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


def _images_in(folder: Path) -> list[Path]:
    """The image files directly in ``folder`` (by suffix), sorted."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _subfolder_hint(folder: Path) -> str:
    """``"; its subfolder X holds N images"`` for the first subfolder with images (folders are not searched
    recursively), else ``""``."""
    for sub in sorted(d for d in folder.iterdir() if d.is_dir()):
        n = len(_images_in(sub))
        if n:
            return f"; its subfolder {sub.name!r} holds {n} images (subfolders are not searched: give {sub})"
    return ""


def resolve_source(source: str) -> InputSource:
    """Classify SOURCE: image file, folder, glob pattern, video file or camera index (digits).

    Raises:
        FileNotFoundError: nothing exists under that name, or a folder/glob holds no images.
    """
    path = Path(source)
    if path.is_dir():
        files = _images_in(path)
        if not files:
            raise FileNotFoundError(
                f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {source}{_subfolder_hint(path)}"
            )
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
    dtype: str = "float32",
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
        dtype=dtype,
    )
    if checkpoint is not None:
        return PoseEstimator.from_checkpoint(checkpoint, cache_dir=cache_dir, **options)
    log.warning(
        "preset %r with random weights: the poses are noise (give a checkpoint for real ones)", preset
    )
    return PoseEstimator.from_preset(preset, spec=spec, **options)


def _header_key(path: Path) -> tuple[float, int, int]:
    """``(aspect, height, width)`` as displayed (EXIF orientation applied), from the file header
    only; ``(0, 0, 0)`` for a file PIL cannot open (it fails again, and is reported, when read)."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated by 90 degrees
                w, h = h, w
    except Exception:  # any unreadable file sorts first; load_image reports it
        return (0.0, 0, 0)
    return (round(w / max(h, 1), 3), h, w)


def image_batches(paths: list[Path], batch_size: int) -> list[list[int]]:
    """Indices into ``paths`` in batches of at most ``batch_size``.

    With ``batch_size`` > 1 the images are first ordered by aspect ratio and size (from their file
    headers, without decoding), so that a batch holds images of one prepared input size where the
    folder allows it: ``grmpose.tta.predict_batch`` runs equal sizes in one forward call.
    """
    if batch_size <= 1:
        return [[i] for i in range(len(paths))]
    order = sorted(range(len(paths)), key=lambda i: (_header_key(paths[i]), i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _load_photo(path: Path) -> np.ndarray:
    return load_image(path, exif_transpose=True)


class _Pictures:
    """Draws and saves pictures in one background thread (JPEG encoding overlaps the network);
    the first failure is raised in the caller at the next ``submit`` or at ``wait``."""

    def __init__(self, threaded: bool) -> None:
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="grmpose-write") if threaded else None
        self.futures: list[Future] = []

    def submit(self, fn, *args) -> None:
        self._raise_failures(block=False)
        if self.pool is None:
            fn(*args)
        else:
            self.futures.append(self.pool.submit(fn, *args))

    def _raise_failures(self, block: bool) -> None:
        keep = []
        for future in self.futures:
            if block or future.done():
                future.result()  # raises the thread's exception
            else:
                keep.append(future)
        self.futures = keep

    def wait(self) -> None:
        self._raise_failures(block=True)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)


def _save_picture(path: Path, image: np.ndarray, poses, spec, score_threshold: float, maps) -> None:
    picture = draw_poses(image, poses, spec, score_threshold=score_threshold)
    if maps is not None:
        picture = side_by_side(picture, maps)
    save_image(path, picture)


def _predict_images(
    estimator: PoseEstimator,
    src: InputSource,
    out: Path,
    show_maps: bool,
    score_threshold: float,
    progress: bool,
    batch_size: int = 1,
    workers: int = 2,
) -> dict:
    ids = assign_image_ids(src.images)
    pictures = picture_paths(src.images, out, ids)
    batches = image_batches(src.images, batch_size)
    order = [i for batch in batches for i in batch]
    entries: list[tuple[int, dict]] = []
    written, skipped, people = [], [], 0
    bar = tqdm(total=len(order), desc="predict", unit="img", disable=not progress or len(order) < 2)
    images = read_ahead([src.images[i] for i in order], _load_photo, workers, depth=2 * max(1, batch_size))
    drawer = _Pictures(threaded=workers > 0)
    start = time.perf_counter()
    try:
        with ResultsWriter(out / "results.json") as writer:
            for batch in batches:
                loaded = []
                for i in batch:
                    image = next(images)
                    if isinstance(image, DataError):
                        if src.kind == "image":
                            raise image
                        log.warning("skipping %s", image)
                        skipped.append(str(src.images[i]))
                    else:
                        loaded.append((i, image))
                if not loaded:
                    bar.update(len(batch))
                    continue
                if len(loaded) == 1:
                    results = [estimator.predict_arrays(loaded[0][1])]
                else:
                    results = estimator.predict_many([image for _, image in loaded])
                for (i, image), (poses, scores) in zip(loaded, results):
                    people += writer.write(ids[i], poses, scores)
                    maps = None
                    if show_maps:
                        heat, off, m = estimator.maps(image)
                        maps = render_maps(image, heat, off, estimator.spec, image_to_input=m)
                    drawer.submit(
                        _save_picture, pictures[i], image, poses_from_arrays(poses, scores),
                        estimator.spec, score_threshold, maps,
                    )  # fmt: skip
                    written.append(str(pictures[i]))
                    h, w = image.shape[:2]
                    entries.append((i, {"id": ids[i], "file_name": src.names[i], "width": w, "height": h}))
                bar.update(len(batch))
            drawer.wait()
    finally:
        drawer.close()
        images.close()
        bar.close()
    seconds = time.perf_counter() - start
    _write_json(out / "images.json", {"images": [entry for _, entry in sorted(entries, key=lambda e: e[0])]})
    return {
        "processed": len(entries),
        "skipped": len(skipped),
        "skipped_files": skipped,
        "people": people,
        "pictures": written,
        "batch_size": batch_size,
        "workers": workers,
        "images_per_s": len(entries) / seconds if seconds > 0 else None,
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
    batch_size: int = 1,
    workers: int = 2,
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
    start = time.perf_counter()
    try:
        frames: Iterable = _frames(cap, max_frames, catch_interrupt=camera)
        if workers > 0 and not camera:  # a live camera is read when needed: reading ahead adds latency
            frames = prefetch(frames, depth=2 * max(1, batch_size))
        bar = tqdm(desc="predict", unit="frame", total=total or None, disable=not progress)
        with ResultsWriter(out / "results.json") as results:
            while True:
                chunk = [np.ascontiguousarray(bgr[..., ::-1]) for bgr in itertools.islice(frames, batch_size)]
                if not chunk:
                    break
                if len(chunk) == 1:
                    predicted = [estimator.predict_arrays(chunk[0])]
                else:
                    predicted = estimator.predict_many(chunk)
                for image, (poses, scores) in zip(chunk, predicted):
                    index = len(entries)
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
                bar.update(len(chunk))
            bar.close()
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
    seconds = time.perf_counter() - start
    _write_json(out / "images.json", {"images": entries})
    return {
        "processed": len(entries),
        "skipped": 0,
        "skipped_files": [],
        "people": people,
        "batch_size": batch_size,
        "workers": workers,
        "images_per_s": len(entries) / seconds if seconds > 0 else None,
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
    batch_size: int = 1,
    workers: int = 2,
    dtype: str = "float32",
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
        batch_size: images (or video frames) per network call; a folder's images are ordered by
            size first so that a batch holds one size (``image_batches``). Memory grows with it.
        workers: threads that decode images ahead of the network and write pictures behind it
            (0: everything in the calling thread). A video file is read by one thread ahead.
        dtype: ``float32``, ``bfloat16`` (torch backend) or ``float16`` (CUDA).

    Returns:
        Summary dict: ``source``, ``kind``, ``processed``, ``skipped``, ``skipped_files``,
        ``people``, ``results``, ``images_json``, ``pictures`` (image kinds) or ``video`` and
        ``fps`` (video kinds), ``batch_size``, ``workers``, ``images_per_s`` (images or frames
        over the wall time of the loop: reading, network, decoding, pictures), ``seconds``,
        ``backend``, ``device``.

    Raises:
        FileNotFoundError: missing source, or a folder/glob without images.
        PermissionError, NotADirectoryError: the output folder cannot be written.
        ValueError: unknown preset/spec/backend, bad option combination, a single unreadable image
            (``DataError``), unusable checkpoint (``CheckpointError``).
        OSError: a video or camera that cannot be opened or read.
    """
    start = time.perf_counter()
    if batch_size < 1 or workers < 0:
        raise ValueError(f"--batch-size must be >= 1 and --workers >= 0, got {batch_size} and {workers}")
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
        dtype,
    )
    if src.kind in ("video", "camera"):
        # open the source before creating anything, so a bad video leaves no output folder behind
        open_video(src.video).release()
    _make_output_dir(out_dir)
    log.info("predicting %s (%s) with %r", source, src.kind, estimator)
    if src.kind in ("image", "images"):
        summary = _predict_images(
            estimator, src, out_dir, show_maps, score_threshold, progress, batch_size, workers
        )
    else:
        summary = _predict_video(
            estimator, src, out_dir, show_maps, score_threshold, progress, max_frames, batch_size, workers
        )
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
