"""Geometric augmentation as the paper trains (§IV-A-3), built on 2 x 3 affine matrices.

One matrix ``M`` maps image coordinates to crop coordinates, ``[x', y'] = M[:, :2] @ [x, y] + M[:, 2]``,
under the grmpose convention (x before y, integer coordinates are pixel centres). The same matrix
warps the image (bilinear), the ignore mask (nearest) and the keypoints, so they cannot disagree.
A horizontal flip is part of the matrix; it also swaps left/right keypoint indices
(``spec.flip_index``), which :func:`flip_keypoint_order` does.

Scale and translation follow DEKR / HigherHRNet (``lib/dataset/transforms/transforms.py``,
``RandomAffineTransform`` with ``SCALE_TYPE: short``): the crop shows a square box of side
``scale x short side`` around the image centre, so ``scale > 1`` zooms *out*, and at ``scale == 1``
people have exactly the size they have at test time, where ``grmpose.inference.prepare_image``
resizes the short side to the input size. DEKR draws the scale from 0.75-1.5, so the training
zoom relative to test is spread around 1 (1/1.5 .. 1/0.75). The translation is in DEKR's unit of
``input_size / 200`` crop pixels (its ``max_translate * scale`` image pixels): ±40 is ±102.4 crop
pixels at 512. (DEKR shifts the box centre along the image axes, we shift along the crop axes: the
same magnitudes, the square of shifts turned by the rotation.)

With augmentation off, :func:`eval_affine` shows the whole image (the box is the long side).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class AugmentRanges:
    """Sampling ranges of the training augmentation (defaults: the paper's, §IV-A-3).

    Attributes:
        max_rotation: rotation drawn uniformly from ``[-max_rotation, max_rotation]`` degrees.
        min_scale, max_scale: crop box side, as a multiple of the image's short side, drawn
            uniformly from ``[min_scale, max_scale]`` (> 1 zooms out; DEKR: 0.75-1.5).
        max_translate: shift of each axis, uniform in ``[-max_translate, max_translate]``, in
            units of ``input_size / 200`` crop pixels (DEKR: 40, i.e. ±102.4 px at 512).
        flip_prob: probability of a horizontal flip.
    """

    max_rotation: float = 30.0
    min_scale: float = 0.75
    max_scale: float = 1.5
    max_translate: float = 40.0
    flip_prob: float = 0.5


@dataclass(frozen=True)
class AugmentParams:
    """One draw of the augmentation.

    Attributes:
        rotation: degrees, counter-clockwise as seen on screen (y points down).
        scale: side of the square box the crop shows, as a multiple of the image's short side
            (1: people at their test-time size; > 1 zooms out).
        translate: ``(tx, ty)`` shift of the image centre from the crop centre, in units of
            ``input_size / 200`` crop pixels.
        flip: mirror horizontally (before rotating).
    """

    rotation: float = 0.0
    scale: float = 1.0
    translate: tuple[float, float] = (0.0, 0.0)
    flip: bool = False


def sample_augment(rng: np.random.Generator, ranges: AugmentRanges = AugmentRanges()) -> AugmentParams:  # noqa: B008
    """Draw augmentation parameters from ``rng`` (reproducible for a seeded generator)."""
    rotation = float(rng.uniform(-ranges.max_rotation, ranges.max_rotation))
    scale = float(rng.uniform(ranges.min_scale, ranges.max_scale))
    tx, ty = (float(t) for t in rng.uniform(-ranges.max_translate, ranges.max_translate, size=2))
    flip = bool(rng.random() < ranges.flip_prob)
    return AugmentParams(rotation=rotation, scale=scale, translate=(tx, ty), flip=flip)


def affine_matrix(params: AugmentParams, image_w: int, image_h: int, input_size: int) -> np.ndarray:
    """2 x 3 float64 matrix mapping image coordinates to ``input_size`` crop coordinates.

    ``M = T(crop centre + translate * input_size / 200) . R(rotation) . S(s) . F . T(-image centre)``
    with ``s = input_size / (scale * min(w, h))`` and ``F`` mirroring x when ``params.flip``.
    Centres are ``(w - 1) / 2`` etc. (pixel centres).
    """
    if not params.scale > 0:
        raise ValueError(f"augmentation scale must be > 0, got {params.scale}")
    cx, cy = (image_w - 1) / 2.0, (image_h - 1) / 2.0
    c_out = (input_size - 1) / 2.0
    s = input_size / (params.scale * min(image_w, image_h))
    unit = input_size / 200.0
    theta = math.radians(params.rotation)
    cos, sin = math.cos(theta), math.sin(theta)
    # y points down, so a counter-clockwise rotation on screen is [[cos, sin], [-sin, cos]]
    linear = s * np.array([[cos, sin], [-sin, cos]])
    if params.flip:
        linear = linear @ np.diag([-1.0, 1.0])
    shift = np.array([c_out + unit * params.translate[0], c_out + unit * params.translate[1]])
    offset = shift - linear @ np.array([cx, cy])
    return np.concatenate([linear, offset[:, None]], axis=1)


def eval_affine(image_w: int, image_h: int, input_size: int) -> np.ndarray:
    """The deterministic view used with augmentation off: the whole image, its longer side scaled
    to ``input_size``, centred, no flip (a box of ``long / short`` times the short side).

    Test-time inference does not use it: ``grmpose.inference.prepare_image`` resizes the short side
    to ``input_size`` (what ``AugmentParams(scale=1)`` matches).
    """
    scale = max(image_w, image_h) / min(image_w, image_h)
    return affine_matrix(AugmentParams(scale=scale), image_w, image_h, input_size)


def invert_affine(M: np.ndarray) -> np.ndarray:
    """Inverse of a 2 x 3 affine matrix (also 2 x 3)."""
    linear = np.linalg.inv(M[:, :2])
    return np.concatenate([linear, (-linear @ M[:, 2])[:, None]], axis=1)


def scale_affine(M: np.ndarray, factor: float) -> np.ndarray:
    """Compose ``M`` with ``x -> factor * x`` (e.g. ``1 / stride`` to land in map coordinates)."""
    return M * float(factor)


def apply_affine_image(
    img: np.ndarray, M: np.ndarray, size: int, interpolation: str = "bilinear"
) -> np.ndarray:
    """Warp an image into a ``size x size`` crop with the image-to-crop matrix ``M``.

    Args:
        img: H x W x C or H x W uint8 array.
        M: 2 x 3 image-to-crop matrix.
        size: crop side.
        interpolation: ``"bilinear"`` (images) or ``"nearest"`` (masks).

    Returns:
        size x size x C (or size x size) uint8; outside the source image is 0.
    """
    resample = {"bilinear": Image.BILINEAR, "nearest": Image.NEAREST}[interpolation]
    inv = invert_affine(M)
    # PIL samples output pixel (i, j) at (i + 0.5, j + 0.5) and places source pixel k on
    # [k, k + 1): its coordinates are ours + 0.5. Shift the inverse map accordingly.
    a, b, c = inv[0]
    d, e, f = inv[1]
    data = (a, b, c + 0.5 - 0.5 * (a + b), d, e, f + 0.5 - 0.5 * (d + e))
    if img.ndim == 3 and img.shape[2] == 1:
        return apply_affine_image(img[:, :, 0], M, size, interpolation)[:, :, None]
    out = Image.fromarray(np.ascontiguousarray(img)).transform(
        (size, size), Image.AFFINE, data=data, resample=resample, fillcolor=0
    )
    return np.array(out)  # a writable copy


def apply_affine_points(kpts: np.ndarray, M: np.ndarray, size: int | None = None) -> np.ndarray:
    """Map ``(x, y, v)`` keypoints with ``M``; ``v`` is kept.

    Args:
        kpts: ... x 3 array (e.g. N x K x 3).
        M: 2 x 3 matrix.
        size: crop side; when given, points outside ``[-0.5, size - 0.5)`` get ``v = 0``.

    Returns:
        float32 array of the same shape.
    """
    out = np.array(kpts, dtype=np.float32, copy=True)
    xy = kpts[..., :2].astype(np.float64)
    out[..., :2] = xy @ M[:, :2].T + M[:, 2]
    if size is not None:
        x, y = out[..., 0], out[..., 1]
        inside = (x >= -0.5) & (x < size - 0.5) & (y >= -0.5) & (y < size - 0.5)
        out[..., 2] = np.where(inside, out[..., 2], 0.0)
    return out


def flip_keypoint_order(kpts: np.ndarray, flip_index: np.ndarray) -> np.ndarray:
    """Swap left/right keypoints after a horizontal flip: ``out[..., i, :] = kpts[..., flip_index[i], :]``.

    Args:
        kpts: ... x K x 3 array.
        flip_index: the spec's ``flip_index`` (length K).
    """
    return kpts[..., flip_index, :]


def transform_keypoints(
    kpts: np.ndarray, M: np.ndarray, size: int, flip: bool, flip_index: np.ndarray
) -> np.ndarray:
    """Map N x K x 3 keypoints into the crop and, for a flipped matrix, swap left/right indices."""
    out = apply_affine_points(kpts, M, size)
    return flip_keypoint_order(out, flip_index) if flip else out
