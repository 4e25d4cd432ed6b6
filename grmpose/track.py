"""Pose tracking: identities across video frames, and optional One-Euro smoothing of keypoints.

``PoseTracker.update(keypoints, scores)`` takes one frame's poses (N×K×3, x y score in image
pixels) and returns a track id per pose. Association, per frame:

1. Every live track predicts where its person is now: its last pose moved by its velocity (the
   smoothed frame-to-frame displacement of its visible joints' mean) times the frames since it
   was last seen (constant-velocity motion).
2. Similarity = OKS between each pose and each prediction, with the spec's sigmas (as
   ``grmpose.oks``, written out here for two sets of poses with per-joint confidence): joints
   count where both have score >= ``keypoint_threshold``; the scale ``s²`` is the track's area:
   the largest of its keypoint box's area, its slowly decaying earlier area (a person seen only
   in part keeps the size seen before) and ``min_area``.
3. One optimal assignment on ``1 − OKS`` (the Hungarian method, ``scipy.optimize.
   linear_sum_assignment``); pairs with OKS below ``min_oks`` stay unmatched.
4. Unmatched poses with score >= ``min_score`` start new tracks (ids 0, 1, 2, ... in order of
   creation); tracks unmatched for more than ``max_missed`` frames end, so a person who comes
   back later gets a new id.

Poses with score < ``min_score`` are never tracked (id -1). Why not a tracking library: see
``docs/tracking.md`` (norfair pins NumPy < 2; box trackers match on IoU, not OKS).

``OneEuroFilter`` (Casiez, Roussel & Vogel, CHI 2012) smooths each track's keypoint coordinates
when a ``OneEuroConfig`` is given; association always uses the raw poses.

Shapes: N poses, T tracks, K keypoints.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["OneEuroConfig", "OneEuroFilter", "PoseTracker", "TrackConfig", "one_euro_step", "pose_similarity"]


@dataclass(frozen=True)
class OneEuroConfig:
    """One-Euro filter parameters (Casiez et al. 2012).

    Attributes:
        min_cutoff: cut-off frequency (Hz) at rest; lower = smoother, more lag when slow.
        beta: how fast the cut-off rises with speed (per pixel/s); higher = less lag when fast.
        d_cutoff: cut-off frequency (Hz) of the speed estimate.
        fps: frame rate; one frame is ``1 / fps`` seconds.
    """

    min_cutoff: float = 1.0
    beta: float = 0.01
    d_cutoff: float = 1.0
    fps: float = 25.0

    def __post_init__(self) -> None:
        for name in ("min_cutoff", "d_cutoff", "fps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"One-Euro {name} must be positive, got {getattr(self, name)}")
        if self.beta < 0:
            raise ValueError(f"One-Euro beta must be >= 0, got {self.beta}")


@dataclass(frozen=True)
class TrackConfig:
    """Tracker settings.

    Attributes:
        max_missed: frames a track survives unmatched (occlusions, missed detections); a person
            unseen for longer gets a new id.
        min_oks: least OKS between a pose and a track's prediction for a match.
        min_score: poses below this person score are not tracked.
        keypoint_threshold: joints below this score are ignored in the similarity.
        velocity_smoothing: weight of the newest displacement in the velocity average (0..1].
        motion: predict with the constant-velocity model (``False``: a track stays where it
            was last seen; an ablation).
        min_area: least OKS scale ``s²`` (px²); 32² is COCO's smallest evaluated person size.
        area_decay: a track's scale is ``max(min_area, box area, area_decay × its previous
            scale)``, so a person seen partly (entering, occluded) keeps the size seen before.
        smoothing: One-Euro settings, or ``None`` for raw keypoints (the default).
    """

    max_missed: int = 15
    min_oks: float = 0.2
    min_score: float = 0.1
    keypoint_threshold: float = 0.1
    velocity_smoothing: float = 0.5
    motion: bool = True
    min_area: float = 32.0**2
    area_decay: float = 0.95
    smoothing: OneEuroConfig | None = None

    def __post_init__(self) -> None:
        if self.min_area <= 0:
            raise ValueError(f"min_area must be positive, got {self.min_area}")
        if self.max_missed < 0:
            raise ValueError(f"max_missed must be >= 0, got {self.max_missed}")
        if not 0.0 <= self.min_oks < 1.0:
            raise ValueError(f"min_oks must be in [0, 1), got {self.min_oks}")
        if not 0.0 < self.velocity_smoothing <= 1.0:
            raise ValueError(f"velocity_smoothing must be in (0, 1], got {self.velocity_smoothing}")


# ------------------------------------------------------------------------------------ similarity
def _keypoint_box_area(keypoints: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Area (px², at least 1) of the box around each pose's valid joints. N×K×3, N×K -> N."""
    big = np.float64(1e18)
    xy = keypoints[..., :2]
    lo = np.where(valid[..., None], xy, big).min(1)
    hi = np.where(valid[..., None], xy, -big).max(1)
    wh = np.where(valid.any(1)[:, None], hi - lo, 0.0)
    return np.maximum(wh[:, 0] * wh[:, 1], 1.0)


def _inside(keypoints: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Which joints lie inside a ``(width, height)`` image. ...×K×3 -> ...×K."""
    w, h = image_size
    x, y = keypoints[..., 0], keypoints[..., 1]
    return (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)


def pose_similarity(
    poses: np.ndarray,
    refs: np.ndarray,
    areas: np.ndarray,
    sigmas: Sequence[float],
    keypoint_threshold: float = 0.1,
) -> np.ndarray:
    """OKS of every pose against every reference pose, on joints confident in both.

    ``OKS = mean over joints k valid in both of exp(-d_k² / (2 s² (2 σ_k)²))``, with ``s²`` the
    reference's area; 0 where no joint is valid in both.

    Args:
        poses: N×K×3 (x, y, score).
        refs: T×K×3 (x, y, score).
        areas: T reference areas ``s²`` in px².
        sigmas: K OKS sigmas (``KeypointSpec.sigmas``).
        keypoint_threshold: a joint is valid when its score is at least this.

    Returns:
        N×T similarities in [0, 1].
    """
    poses = np.asarray(poses, np.float64)
    refs = np.asarray(refs, np.float64)
    if len(poses) == 0 or len(refs) == 0:
        return np.zeros((len(poses), len(refs)))
    inv = 1.0 / (2.0 * (2.0 * np.asarray(sigmas, np.float64)) ** 2)  # K: 1 / (2 (2σ)²)
    dx = poses[:, None, :, 0] - refs[None, :, :, 0]  # N×T×K
    dy = poses[:, None, :, 1] - refs[None, :, :, 1]
    e = (dx * dx + dy * dy) * inv / np.asarray(areas, np.float64)[None, :, None]
    both = (poses[:, None, :, 2] >= keypoint_threshold) & (refs[None, :, :, 2] >= keypoint_threshold)
    count = both.sum(-1)
    total = (np.exp(-e) * both).sum(-1)
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


# ------------------------------------------------------------------------------------ smoothing
def one_euro_step(
    x: np.ndarray, x_prev: np.ndarray, dx_prev: np.ndarray, dt: np.ndarray | float, config: OneEuroConfig
) -> tuple[np.ndarray, np.ndarray]:
    """One step of the One-Euro filter, element-wise; ``dt`` (seconds) broadcasts against ``x``.

    With ``a(fc) = 1 / (1 + 1 / (2π fc dt))``: ``dx̂ = a(d_cutoff) (x − x̂_prev) / dt + (1 − a) dx̂_prev``,
    ``fc = min_cutoff + beta |dx̂|``, ``x̂ = a(fc) x + (1 − a(fc)) x̂_prev``.

    Returns:
        ``(x̂, dx̂)``.
    """
    c = config
    a_d = 1.0 / (1.0 + 1.0 / (2.0 * math.pi * c.d_cutoff * dt))
    dx = a_d * (x - x_prev) / dt + (1.0 - a_d) * dx_prev
    a = 1.0 / (1.0 + 1.0 / (2.0 * math.pi * (c.min_cutoff + c.beta * np.abs(dx)) * dt))
    return a * x + (1.0 - a) * x_prev, dx


class OneEuroFilter:
    """The One-Euro filter on an array of values (all filtered independently, ``one_euro_step``).

    The first value passes unchanged; a call ``frames`` frames after the previous one uses
    ``dt = frames / fps``.
    """

    def __init__(self, config: OneEuroConfig) -> None:
        self.config = config
        self.x: np.ndarray | None = None
        self.dx: np.ndarray | None = None

    def __call__(self, x: np.ndarray, frames: int = 1) -> np.ndarray:
        """Filter the next value ``x`` (any shape), ``frames`` frames after the previous one."""
        x = np.asarray(x, np.float64)
        if self.x is None or self.dx is None:
            self.x, self.dx = x.copy(), np.zeros_like(x)
        else:
            self.x, self.dx = one_euro_step(x, self.x, self.dx, max(1, frames) / self.config.fps, self.config)
        return self.x.copy()


# ------------------------------------------------------------------------------------ tracker
@dataclass
class _Track:
    track_id: int
    keypoints: np.ndarray  # K×3, the last matched pose
    velocity: np.ndarray  # 2, px per frame
    last_frame: int
    hits: int
    area: float  # OKS scale s² (px²)
    gap: int = 1  # frames between the last two matches (the smoother's time step)
    smooth_x: np.ndarray | None = None  # One-Euro state: K×2 filtered joints and their speed
    smooth_dx: np.ndarray | None = None


class PoseTracker:
    """Gives poses identities across frames (see the module docstring for the rule).

    Args:
        sigmas: K OKS sigmas of the keypoint spec (``KeypointSpec.sigmas``).
        config: tracker settings.
    """

    def __init__(self, sigmas: Sequence[float], config: TrackConfig | None = None) -> None:
        self.sigmas = np.asarray(sigmas, np.float64)
        self.config = config or TrackConfig()
        self.tracks: list[_Track] = []
        self.frame = -1
        self.next_id = 0

    def reset(self) -> None:
        """Forget every track (a new video); ids start again at 0."""
        self.tracks, self.frame, self.next_id = [], -1, 0

    def _predictions(self) -> tuple[np.ndarray, np.ndarray]:
        """Predicted poses T×K×3 of the live tracks for the current frame and their OKS areas T."""
        if not self.tracks:
            return np.zeros((0, len(self.sigmas), 3)), np.zeros(0)
        gaps = np.array([self.frame - t.last_frame for t in self.tracks], np.float64)  # >= 1
        velocity = np.stack([t.velocity for t in self.tracks])
        pred = np.stack([t.keypoints for t in self.tracks])
        pred[..., :2] += (velocity * gaps[:, None])[:, None, :]
        areas = np.array([t.area for t in self.tracks])
        return pred, areas

    def update(
        self,
        keypoints: np.ndarray,
        scores: np.ndarray | Sequence[float],
        image_size: tuple[int, int] | None = None,
    ) -> np.ndarray:
        """Track one frame.

        Args:
            keypoints: N×K×3 (x, y, score) in image pixels.
            scores: N person scores.
            image_size: ``(width, height)`` of the frame; when given, a track whose predicted
                joints have all left the image ends (that person walked out).

        Returns:
            N track ids (int64); -1 for poses below ``min_score``.
        """
        c = self.config
        keypoints = np.array(keypoints, np.float64).reshape(
            -1, len(self.sigmas), 3
        )  # a copy: tracks keep rows
        scores = np.asarray(scores, np.float64).reshape(-1)
        if len(scores) != len(keypoints):
            raise ValueError(f"{len(keypoints)} poses but {len(scores)} scores")
        self.frame += 1
        ids = np.full(len(keypoints), -1, np.int64)
        candidates = np.flatnonzero(scores >= c.min_score)
        pred, areas = self._predictions()
        if image_size is not None and len(pred):
            inside = _inside(pred, image_size) & (pred[..., 2] >= c.keypoint_threshold)
            keep = inside.any(1)
            self.tracks = [t for t, k in zip(self.tracks, keep) if k]
            pred, areas = pred[keep], areas[keep]
        sim = pose_similarity(keypoints[candidates], pred, areas, self.sigmas, c.keypoint_threshold)
        det, trk = np.zeros(0, np.int64), np.zeros(0, np.int64)
        if sim.size:
            rows, cols = linear_sum_assignment(1.0 - sim)
            ok = (sim[rows, cols] >= c.min_oks) & (sim[rows, cols] > 0)
            det, trk = candidates[rows[ok]], cols[ok]
            self._update_tracks([self.tracks[t] for t in trk], keypoints[det])
            ids[det] = [self.tracks[t].track_id for t in trk]
        new = candidates[ids[candidates] < 0]
        new = new[(keypoints[new, :, 2] >= c.keypoint_threshold).any(1)]
        ids[new] = self._new_tracks(keypoints[new])
        self.tracks = [t for t in self.tracks if self.frame - t.last_frame <= c.max_missed]
        return ids

    def smoothed(self, keypoints: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """``keypoints`` (N×K×3) with the coordinates of tracked poses One-Euro filtered.

        Call once per frame right after ``update``; without ``config.smoothing`` a copy is returned.
        A track's first pose passes unchanged; later ones are filtered with ``dt = gap / fps``.
        """
        out = np.array(keypoints, np.float64).reshape(len(ids), len(self.sigmas), 3)
        c = self.config.smoothing
        if c is None:
            return out
        by_id = {t.track_id: t for t in self.tracks}
        rows, tracks = [], []
        for n, track_id in enumerate(ids):
            track = by_id.get(int(track_id))
            if track is None or track.last_frame != self.frame:
                continue
            if track.smooth_x is None:
                track.smooth_x, track.smooth_dx = out[n, :, :2].copy(), np.zeros((len(self.sigmas), 2))
            else:
                rows.append(n)
                tracks.append(track)
        if rows:
            dt = np.array([t.gap for t in tracks], np.float64)[:, None, None] / c.fps
            x_prev = np.stack([t.smooth_x for t in tracks])
            dx_prev = np.stack([t.smooth_dx for t in tracks])
            x, dx = one_euro_step(out[rows, :, :2], x_prev, dx_prev, dt, c)
            out[rows, :, :2] = x
            for track, xi, dxi in zip(tracks, x, dx):
                track.smooth_x, track.smooth_dx = xi, dxi
        return out

    def _update_tracks(self, tracks: list[_Track], poses: np.ndarray) -> None:
        """Matched tracks take their new poses (M×K×3); velocities from the shift of the mean of
        the joints confident in both the new and the previous pose."""
        c = self.config
        if not tracks:
            return
        previous = np.stack([t.keypoints for t in tracks])
        gaps = np.array([self.frame - t.last_frame for t in tracks], np.float64)
        valid = poses[..., 2] >= c.keypoint_threshold
        both = (valid & (previous[..., 2] >= c.keypoint_threshold))[..., None]
        count = np.maximum(both.sum(1), 1)
        shift = ((poses[..., :2] * both).sum(1) - (previous[..., :2] * both).sum(1)) / count
        steps = shift / gaps[:, None]  # M×2 px per frame
        boxes = _keypoint_box_area(poses, valid)
        for track, pose, step, has_both, gap, box in zip(tracks, poses, steps, both.any((1, 2)), gaps, boxes):
            if has_both and c.motion:
                w = c.velocity_smoothing if track.hits > 1 else 1.0
                track.velocity = w * step + (1.0 - w) * track.velocity
            track.keypoints = pose
            track.area = max(c.min_area, float(box), track.area * c.area_decay**gap)
            track.gap = int(gap)
            track.last_frame = self.frame
            track.hits += 1

    def _new_tracks(self, poses: np.ndarray) -> list[int]:
        """Start a track per pose (M×K×3); return their ids."""
        c = self.config
        boxes = _keypoint_box_area(poses, poses[..., 2] >= c.keypoint_threshold)
        ids = []
        for pose, box in zip(poses, boxes):
            area = max(c.min_area, float(box))
            self.tracks.append(_Track(self.next_id, pose, np.zeros(2), self.frame, 1, area))
            ids.append(self.next_id)
            self.next_id += 1
        return ids
