"""``grmpose track``: poses with identities for a video file, camera or folder of frames.

``track_main`` writes into the output folder:

* ``<stem>_track.mp4`` -- the frames with skeletons, each person's track id in its own colour
  and a short trail of where the person was (the mean of its confident joints) over the last
  ``trail`` frames;
* ``tracks.json`` -- every frame, PoseTrack-style (COCO-style with ``track_id``): ``images``
  (``id``, ``frame_id``, ``file_name``, ``width``, ``height``), ``annotations`` (``image_id``,
  ``track_id``, ``keypoints`` as x, y, score triples, ``score``), ``categories`` and ``info``.
  ``grmpose.data.synthetic_sequences.load_sequence`` reads it back.

Both appear whole or not at all (temporary files + rename).
"""

from __future__ import annotations

import colorsys
import json
import logging
import math
import os
import time
import uuid
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from grmpose.api import open_video
from grmpose.data.coco import DataError, load_image
from grmpose.data.synthetic import categories
from grmpose.fileio import atomic_path, check_output_dir
from grmpose.predict import _frames, _make_output_dir, build_estimator, resolve_source
from grmpose.spec import KeypointSpec
from grmpose.track import PoseTracker, TrackConfig
from grmpose.visualize import _font, draw_poses

log = logging.getLogger(__name__)

__all__ = ["draw_tracks", "track_color", "track_main"]


def track_color(track_id: int) -> tuple[int, int, int]:
    """A bright colour per id; consecutive ids get well-separated hues (golden-ratio steps)."""
    r, g, b = colorsys.hsv_to_rgb((track_id * 0.618034) % 1.0, 0.9, 1.0)
    return round(255 * r), round(255 * g), round(255 * b)


def _centre(keypoints: np.ndarray, threshold: float) -> np.ndarray | None:
    ok = keypoints[:, 2] >= threshold
    return keypoints[ok, :2].mean(0) if ok.any() else None


def draw_tracks(
    image: np.ndarray,
    keypoints: np.ndarray,
    ids: np.ndarray,
    spec: KeypointSpec,
    trails: dict[int, deque],
    score_threshold: float = 0.1,
) -> np.ndarray:
    """Skeletons, ``#id`` labels and trails on a copy of ``image``.

    Args:
        image: RGB uint8 H×W×3.
        keypoints: N×K×3 tracked poses (x, y, score).
        ids: N track ids.
        trails: per id the recent centres (drawn as a line), updated by the caller.
        score_threshold: joints below it are not drawn.
    """
    picture = draw_poses(image, keypoints, spec, score_threshold=score_threshold, show_scores=False)
    canvas = Image.fromarray(picture)
    draw = ImageDraw.Draw(canvas)
    size = min(image.shape[:2])
    width = max(1, round(size / 120))
    font_size = max(10, round(size / 30))
    font = _font(font_size)
    for track_id, trail in trails.items():
        if len(trail) > 1:
            draw.line([tuple(p) for p in trail], fill=track_color(track_id), width=width)
    for kps, track_id in zip(keypoints, ids):
        ok = kps[:, 2] >= score_threshold
        if not ok.any():
            continue
        x, y = float(kps[ok, 0].min()), float(kps[ok, 1].min())
        text = f"#{int(track_id)}"
        x0, y0, x1, y1 = draw.textbbox((x, y - font_size - 2), text, font=font)
        draw.rectangle((x0 - 2, y0 - 2, x1 + 2, y1 + 2), fill=track_color(int(track_id)))
        draw.text((x, y - font_size - 2), text, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def _image_frames(paths: list[Path]) -> Iterator[tuple[np.ndarray | None, str]]:
    """RGB frames of image files (``None`` for an unreadable one) with their names."""
    for path in paths:
        try:
            yield load_image(path, exif_transpose=True), path.name
        except DataError as err:
            log.warning("skipping %s", err)
            yield None, path.name


def _video_frames(cap, max_frames: int | None, camera: bool, name: str) -> Iterator[tuple[np.ndarray, str]]:
    for bgr in _frames(cap, max_frames, catch_interrupt=camera):
        yield np.ascontiguousarray(bgr[..., ::-1]), name


def track_main(
    source: str,
    out: str,
    checkpoint: str | None = None,
    preset: str | None = None,
    spec: str = "coco",
    device: str = "cpu",
    backend: str = "torch",
    flip: bool = False,
    decoder: str = "regression",
    config: TrackConfig | None = None,
    trail: int = 20,
    score_threshold: float = 0.1,
    fps: float | None = None,
    progress: bool = True,
    max_frames: int | None = None,
    input_size: int | None = None,
) -> dict:
    """Track people through SOURCE; write the annotated video and ``tracks.json`` into ``out``.

    Args:
        source: video file, camera index (digits), folder of frames or glob (frames in name order).
        out: output folder (created).
        checkpoint, preset, spec, device, backend, flip, decoder, input_size: the estimator, as
            for ``grmpose predict``.
        config: tracker settings (``TrackConfig``); its One-Euro ``fps`` is replaced by the
            video's frame rate.
        trail: frames of trail drawn behind each person (0: none).
        score_threshold: joints below it are not drawn (all tracked poses are written).
        fps: frame rate of a folder of frames (default 25) or to override the video's.
        max_frames: stop after this many frames.

    Returns:
        Summary: ``source``, ``kind``, ``frames``, ``people`` (tracked person-frames), ``tracks``
        (distinct ids), ``video``, ``tracks_json``, ``fps``, ``seconds``, ``ms_per_frame_tracking``.
    """
    import cv2

    start = time.perf_counter()
    if trail < 0:
        raise ValueError(f"--trail must be >= 0, got {trail}")
    src = resolve_source(source)
    out_dir = Path(out)
    check_output_dir(out_dir)
    estimator = build_estimator(
        checkpoint, preset, spec, device, backend, flip, False, decoder, input_size=input_size
    )
    cap = None
    if src.kind in ("video", "camera"):
        cap = open_video(src.video)
        video_fps = cap.get(cv2.CAP_PROP_FPS)
        fps = fps or (video_fps if math.isfinite(video_fps) and 0 < video_fps <= 240 else 25.0)
        camera = src.kind == "camera"
        stem = f"camera{src.video}" if camera else Path(str(src.video)).stem
        name = str(src.video) if camera else Path(str(src.video)).name
        total = 0 if camera else int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        total = min(total, max_frames) if max_frames and total > 0 else total
        frames: Iterator = _video_frames(cap, max_frames, camera, name)
    else:
        fps = fps or 25.0
        paths = src.images[:max_frames] if max_frames else src.images
        stem = Path(source).stem if src.kind != "images" or Path(source).is_dir() else "frames"
        total = len(paths)
        frames = _image_frames(paths)
    config = config or TrackConfig()
    if config.smoothing is not None:
        from dataclasses import replace

        config = replace(config, smoothing=replace(config.smoothing, fps=fps))
    tracker = PoseTracker(estimator.spec.sigmas, config)
    _make_output_dir(out_dir)
    video_path = out_dir / f"{stem}_track.mp4"
    tmp = out_dir / f".{stem}_track.{uuid.uuid4().hex[:8]}.tmp.mp4"
    writer = None
    images, annotations, trails = [], [], {}
    all_ids: set[int] = set()
    track_seconds = 0.0
    try:
        bar = tqdm(frames, desc="track", unit="frame", total=total or None, disable=not progress)
        for index, (image, name) in enumerate(bar):
            if image is None:
                continue
            poses, scores = estimator.predict_arrays(image)
            t0 = time.perf_counter()
            ids = tracker.update(poses, scores, (image.shape[1], image.shape[0]))
            kps = tracker.smoothed(poses, ids)
            track_seconds += time.perf_counter() - t0
            keep = np.flatnonzero(ids >= 0)
            kps, ids, scores = kps[keep], ids[keep], np.asarray(scores)[keep]
            seen = {int(i) for i in ids}
            for track_id in list(trails):  # trails of people not seen now shrink, then vanish
                if track_id not in seen:
                    trails[track_id].popleft()
                    if not trails[track_id]:
                        del trails[track_id]
            for p, track_id in zip(kps, ids):
                centre = _centre(p, score_threshold)
                if centre is not None and trail > 0:
                    trails.setdefault(int(track_id), deque(maxlen=trail)).append(centre.tolist())
            picture = draw_tracks(image, kps, ids, estimator.spec, trails, score_threshold)
            if writer is None:
                writer = cv2.VideoWriter(
                    str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (picture.shape[1], picture.shape[0])
                )
                if not writer.isOpened():
                    raise OSError(f"cannot write video {video_path} (OpenCV VideoWriter failed)")
            writer.write(np.ascontiguousarray(picture[..., ::-1]))
            h, w = image.shape[:2]
            image_id = len(images) + 1
            images.append({"id": image_id, "frame_id": index, "file_name": name, "width": w, "height": h})
            for p, s, track_id in zip(kps, scores, ids):
                all_ids.add(int(track_id))
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": 1,
                        "track_id": int(track_id),
                        "keypoints": [round(float(v), 3) for v in p.reshape(-1)],
                        "score": round(float(s), 5),
                    }
                )
        if not images:
            raise OSError(f"no frames could be read from {source}")
        writer.release()
        writer = None
        os.replace(tmp, video_path)
    finally:
        if cap is not None:
            cap.release()
        if writer is not None:
            writer.release()
        if tmp.exists():
            tmp.unlink()
    payload = {
        "info": {"description": "grmpose track", "source": source, "fps": fps, "frames": len(images)},
        "images": images,
        "annotations": annotations,
        "categories": categories(estimator.spec),
    }
    json_path = out_dir / "tracks.json"
    with atomic_path(json_path) as tmp_json:
        tmp_json.write_text(json.dumps(payload, separators=(",", ":")))
    return {
        "source": source,
        "kind": src.kind,
        "frames": len(images),
        "people": len(annotations),
        "tracks": len(all_ids),
        "video": str(video_path),
        "tracks_json": str(json_path),
        "fps": fps,
        "seconds": round(time.perf_counter() - start, 3),
        "ms_per_frame_tracking": round(1000.0 * track_seconds / len(images), 4),
    }
