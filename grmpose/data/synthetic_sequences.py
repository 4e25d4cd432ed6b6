"""Synthetic video sequences with ground-truth identities, for tracking tests and benchmarks.

People (the synthetic figures of ``grmpose.data.synthetic_body`` / ``synthetic_render``) walk
across a static background along a street-like band: in both directions, with a walking gait,
turning (their heading drifts and sometimes reverses, and they face where they walk), pausing,
passing in front of each other (a person lower in the image is nearer and drawn later, so they
occlude the ones behind), entering from the left or right edge and leaving the image. Keypoint
visibility follows the single-image generator: ``v = 0`` outside the image (coordinates 0),
``v = 1`` covered by someone in front, ``v = 2`` visible.

A sequence folder, COCO-style with PoseTrack's ``track_id``::

    out/annotations.json   images (one per frame: id, file_name, frame_id, width, height),
                           annotations (image_id, track_id, keypoints, num_keypoints, bbox, area),
                           categories, info {seed, fps, frames, people}
    out/frames/000000.jpg  the frames (optional)

Only people with at least one labelled keypoint in a frame get an annotation there. Determinism:
sequence ``seed`` is drawn from ``np.random.default_rng(seed)`` (paths, looks) and
``np.random.default_rng([seed, frame])`` (per-frame texture noise) alone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from grmpose.data.synthetic import categories, mask_box
from grmpose.data.synthetic_body import Body, Pose, sample_body
from grmpose.data.synthetic_render import (
    Appearance,
    draw_figure,
    make_background,
    pose_figure,
    sample_appearance,
    spec_body_points,
    visibility_flags,
)
from grmpose.spec import KeypointSpec, get_spec

__all__ = ["Frame", "SequenceConfig", "load_sequence", "render_sequence", "write_sequence"]


@dataclass(frozen=True)
class SequenceConfig:
    """What a sequence looks like.

    Attributes:
        frames: number of frames.
        people: number of distinct people over the whole sequence.
        width, height: frame size in pixels.
        fps: frame rate written into the annotations (speeds below are per frame).
        height_range: person heights as fractions of the frame height.
        speed_range: walking speed in person heights per frame (0.02 ≈ 1.2 m/s at 25 fps).
        enter_fraction: share of people who enter from an edge after the first frame (the others
            start inside the image).
        pause_probability: chance per frame that a walking person stops for a while.
        reverse_probability: chance per frame that a person turns round.
    """

    frames: int = 100
    people: int = 6
    width: int = 320
    height: int = 240
    fps: float = 25.0
    height_range: tuple[float, float] = (0.35, 0.6)
    speed_range: tuple[float, float] = (0.012, 0.03)
    enter_fraction: float = 0.4
    pause_probability: float = 0.01
    reverse_probability: float = 0.004

    def __post_init__(self) -> None:
        if self.frames < 1 or self.people < 1:
            raise ValueError(
                f"a sequence needs frames >= 1 and people >= 1, got {self.frames}, {self.people}"
            )
        if self.width < 32 or self.height < 32:
            raise ValueError(f"frame size must be at least 32×32, got {self.width}×{self.height}")


@dataclass
class Frame:
    """One frame: the image (or ``None``) and its people, nearest last.

    Attributes:
        image: RGB uint8 H×W×3, or ``None`` when not rendered.
        keypoints: N×K×3 (x, y, v) with COCO visibility flags.
        track_ids: N ground-truth identities.
        boxes: N×4 silhouette boxes ``(x, y, w, h)``.
        areas: N silhouette areas in px².
    """

    image: np.ndarray | None
    keypoints: np.ndarray
    track_ids: np.ndarray
    boxes: np.ndarray
    areas: np.ndarray


@dataclass
class _Walker:
    body: Body
    look: Appearance
    height_px: float
    x: float  # mid-hip, image pixels
    y: float
    heading: float  # radians in the image plane: 0 walks right, pi/2 walks down (towards the camera)
    speed: float  # px per frame when walking
    start: int  # first frame in the scene
    phase: float
    pause: int = 0  # frames left standing still
    gone: bool = False


def _walkers(rng: np.random.Generator, c: SequenceConfig) -> list[_Walker]:
    walkers = []
    band = (0.45 * c.height, 0.62 * c.height)  # where the hips are: a street seen from the side
    for _ in range(c.people):
        h = float(rng.uniform(*c.height_range)) * c.height
        direction = 1.0 if rng.random() < 0.5 else -1.0
        heading = (0.0 if direction > 0 else math.pi) + float(rng.normal(0.0, 0.25))
        enters = rng.random() < c.enter_fraction
        margin = 0.35 * h
        if enters:
            x = -margin if direction > 0 else c.width + margin
            start = int(rng.integers(1, max(2, int(0.7 * c.frames))))
        else:
            x, start = float(rng.uniform(0.1, 0.9) * c.width), 0
        y = float(rng.uniform(*band))
        speed = float(rng.uniform(*c.speed_range)) * h
        walkers.append(
            _Walker(
                sample_body(rng), sample_appearance(rng), h, x, y, heading, speed, start, rng.uniform(0, 6.3)
            )
        )
    return walkers


def _gait_pose(w: _Walker, moving: bool) -> Pose:
    """A walking (or standing) pose facing the walking direction."""
    dx, dy = math.cos(w.heading), math.sin(w.heading)
    yaw = math.atan2(dx, dy)  # yaw 0 faces the camera (walking down the image), pi/2 faces right
    amp = math.radians(25.0) if moving else 0.0
    s = math.sin(w.phase)
    hip = (amp * s, -amp * s)
    knee_l = math.radians(8.0) + (math.radians(35.0) if moving else 0.0) * max(0.0, -s)
    knee_r = math.radians(8.0) + (math.radians(35.0) if moving else 0.0) * max(0.0, s)
    elbow = math.radians(20.0)
    return Pose(
        yaw=yaw,
        lean=math.radians(4.0 if moving else 0.0),
        side_bend=0.0,
        head_turn=0.0,
        head_nod=0.0,
        shoulder_flex=(-0.8 * hip[0], -0.8 * hip[1]),
        shoulder_abd=(math.radians(8.0), math.radians(8.0)),
        elbow=(elbow, elbow),
        elbow_plane=(0.0, 0.0),
        hip_flex=hip,
        hip_abd=(math.radians(3.0), math.radians(3.0)),
        knee=(knee_l, knee_r),
    )


def _step(rng: np.random.Generator, w: _Walker, c: SequenceConfig) -> bool:
    """Advance one frame; return whether the person walked."""
    if w.pause > 0:
        w.pause -= 1
        return False
    if rng.random() < c.pause_probability:
        w.pause = int(rng.integers(5, 25))
        return False
    if rng.random() < c.reverse_probability:
        w.heading += math.pi
    w.heading += float(rng.normal(0.0, 0.05))
    # keep the hips inside the street band: steer back when drifting out of it
    dy = math.sin(w.heading)
    if (w.y < 0.4 * c.height and dy < 0) or (w.y > 0.68 * c.height and dy > 0):
        w.heading = -w.heading
    w.x += w.speed * math.cos(w.heading)
    w.y += 0.4 * w.speed * math.sin(w.heading)  # moving in depth looks slower
    w.phase += w.speed / (0.12 * w.height_px) * 1.0
    return True


def render_sequence(
    spec: str | KeypointSpec, seed: int, config: SequenceConfig | None = None, images: bool = True
) -> Iterator[Frame]:
    """The frames of sequence ``seed``, one at a time.

    Args:
        spec: keypoint spec whose names the synthetic figures provide (coco, crowdpose).
        seed: the sequence's seed.
        config: sequence settings.
        images: return the rendered images (``False``: ``Frame.image`` is ``None``; silhouettes
            are still drawn for the occlusion flags).
    """
    c = config or SequenceConfig()
    spec = get_spec(spec)
    names = spec_body_points(spec)
    rng = np.random.default_rng(seed)
    background = make_background(rng, c.width, c.height)
    walkers = _walkers(rng, c)
    k = len(names)
    for t in range(c.frames):
        frame_rng = np.random.default_rng([seed, t])
        canvas = background.copy()
        live, figures = [], []
        for i, w in enumerate(walkers):
            if w.gone or t < w.start:
                continue
            moving = _step(rng, w, c) if t > w.start else w.pause == 0
            fig = pose_figure(w.body, _gait_pose(w, moving), w.look, w.height_px, 0.0, np.zeros(2))
            fig.points = {n: p + np.array([w.x, w.y]) for n, p in fig.points.items()}
            xs = np.array([p[0] for p in fig.points.values()])
            heading_out = (xs.min() > c.width and math.cos(w.heading) > 0) or (
                xs.max() < 0 and math.cos(w.heading) < 0
            )
            if heading_out:
                w.gone = True  # left the scene for good
                continue
            live.append(i)
            figures.append(fig)
        order = np.argsort([w.y for w in (walkers[i] for i in live)], kind="stable")  # far (higher) first
        live = [live[j] for j in order]
        figures = [figures[j] for j in order]
        masks = [draw_figure(frame_rng, canvas, fig) for fig in figures]
        coords = np.array([[fig.points[n] for n in names] for fig in figures], np.float64).reshape(-1, k, 2)
        keypoints = visibility_flags(coords, masks, c.width, c.height)
        keep = [j for j in range(len(live)) if keypoints[j, :, 2].any() and masks[j].any()]
        image = None
        if images:
            canvas += np.float32(2.0) * frame_rng.standard_normal(canvas.shape, dtype=np.float32)
            image = np.clip(canvas, 0, 255).astype(np.uint8)
        yield Frame(
            image=image,
            keypoints=keypoints[keep].reshape(-1, k, 3),
            track_ids=np.array([live[j] for j in keep], np.int64),
            boxes=np.array([mask_box(masks[j]) for j in keep], np.float64).reshape(-1, 4),
            areas=np.array([float(masks[j].sum()) for j in keep], np.float64),
        )


def write_sequence(
    out_dir: str | Path,
    spec: str | KeypointSpec,
    seed: int,
    config: SequenceConfig | None = None,
    images: bool = True,
) -> Path:
    """Write sequence ``seed`` into ``out_dir`` (``annotations.json``, ``frames/``); return the JSON path."""
    c = config or SequenceConfig()
    spec = get_spec(spec)
    out = Path(out_dir)
    frame_dir = out / "frames"
    if images:
        frame_dir.mkdir(parents=True, exist_ok=True)
    image_entries, annotations = [], []
    for t, frame in enumerate(render_sequence(spec, seed, c, images)):
        file_name = f"frames/{t:06d}.jpg"
        if frame.image is not None:
            Image.fromarray(frame.image).save(out / file_name, quality=92)
        image_entries.append(
            {"id": t + 1, "file_name": file_name, "frame_id": t, "width": c.width, "height": c.height}
        )
        for kp, track_id, box, area in zip(frame.keypoints, frame.track_ids, frame.boxes, frame.areas):
            flat = [v for x, y, f in kp for v in (round(float(x), 2), round(float(y), 2), int(f))]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": t + 1,
                    "category_id": 1,
                    "track_id": int(track_id),
                    "keypoints": flat,
                    "num_keypoints": int((kp[:, 2] > 0).sum()),
                    "bbox": [float(v) for v in box],
                    "area": float(area),
                    "iscrowd": 0,
                }
            )
    data = {
        "info": {
            "description": f"grmpose synthetic sequence ({spec.name} keypoints)",
            "seed": seed,
            "fps": c.fps,
            "frames": c.frames,
            "people": c.people,
        },
        "images": image_entries,
        "annotations": annotations,
        "categories": categories(spec),
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / "annotations.json"
    path.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    return path


def load_sequence(path: str | Path) -> list[Frame]:
    """Frames (without images) of an ``annotations.json`` written by ``write_sequence`` or by
    ``grmpose track`` (there ``keypoints`` hold scores instead of flags, and ``area`` may be absent).

    Raises:
        ValueError: the file is not such a JSON (the message names the file and field).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        images = sorted(data["images"], key=lambda im: im["frame_id"])
        by_image: dict[int, list[dict]] = {im["id"]: [] for im in images}
        for ann in data["annotations"]:
            by_image[ann["image_id"]].append(ann)
        k = len(data["categories"][0]["keypoints"])
    except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
        raise ValueError(f"{path}: not a tracking annotation file ({type(err).__name__}: {err})") from err
    frames = []
    for im in images:
        anns = by_image[im["id"]]
        kps = np.array([a["keypoints"] for a in anns], np.float64).reshape(-1, k, 3)
        frames.append(
            Frame(
                image=None,
                keypoints=kps,
                track_ids=np.array([a["track_id"] for a in anns], np.int64),
                boxes=np.array([a.get("bbox", [0, 0, 0, 0]) for a in anns], np.float64).reshape(-1, 4),
                areas=np.array([a.get("area", 0.0) for a in anns], np.float64),
            )
        )
    return frames
