"""Tests of grmpose.data.transforms: matrices, image/point agreement, flips, reproducibility."""

from __future__ import annotations

import math

import numpy as np
import pytest

from grmpose.data.transforms import (
    AugmentParams,
    AugmentRanges,
    affine_matrix,
    apply_affine_image,
    apply_affine_points,
    eval_affine,
    flip_keypoint_order,
    invert_affine,
    sample_augment,
    transform_keypoints,
)
from grmpose.inference import prepare_image
from grmpose.spec import COCO, CROWDPOSE


def _map(M: np.ndarray, x: float, y: float) -> np.ndarray:
    return M[:, :2] @ np.array([x, y]) + M[:, 2]


def test_eval_affine_fits_longer_side_and_centres():
    for w, h in [(640, 425), (300, 900), (512, 512)]:
        M = eval_affine(w, h, 256)
        np.testing.assert_allclose(M, affine_matrix(AugmentParams(scale=max(w, h) / min(w, h)), w, h, 256))
        np.testing.assert_allclose(_map(M, (w - 1) / 2, (h - 1) / 2), [127.5, 127.5])
        s = 256 / max(w, h)
        np.testing.assert_allclose(M[:, :2], s * np.eye(2))
        # the outer pixel edges of the longer side land on the crop's outer edges
        if w >= h:
            np.testing.assert_allclose([_map(M, -0.5, 0)[0], _map(M, w - 0.5, 0)[0]], [-0.5, 255.5])
        else:
            np.testing.assert_allclose([_map(M, 0, -0.5)[1], _map(M, 0, h - 0.5)[1]], [-0.5, 255.5])


def test_matrix_components():
    p = AugmentParams(rotation=90.0, scale=0.5, translate=(10.0, -6.0), flip=False)
    M = affine_matrix(p, 100, 100, 100)
    c = 49.5
    # box of 0.5 x short side: zoom 2 about the centre; translate in units of 100 / 200 = 0.5 px;
    # then 90 degrees counter-clockwise on screen (y down): +x -> -y
    np.testing.assert_allclose(_map(M, c + 1, c), [c + 5, c - 3 - 2], atol=1e-9)
    np.testing.assert_allclose(_map(M, c, c), [c + 5, c - 3], atol=1e-9)
    flipped = affine_matrix(AugmentParams(flip=True), 100, 60, 100)
    np.testing.assert_allclose(
        _map(flipped, 0, 29.5), _map(affine_matrix(AugmentParams(), 100, 60, 100), 99, 29.5)
    )
    with pytest.raises(ValueError, match="scale"):
        affine_matrix(AugmentParams(scale=0.0), 100, 60, 100)


def dekr_linear(input_size, width, height, aug_scale, aug_rot):
    """DEKR's ``RandomAffineTransform`` (SCALE_TYPE short) restated: the linear part of
    ``_get_affine_matrix(center, scale, (res, res), rot)`` with ``scale = min(h, w) / 200 * aug``:
    ``res / (200 * scale)`` times the rotation by ``-rot`` (``[[cos, -sin], [sin, cos]]`` of -rot)."""
    scale = min(height, width) / 200 * aug_scale
    zoom = input_size / (200 * scale)
    r = math.radians(-aug_rot)
    rot = np.array([[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]])
    return rot * zoom


@pytest.mark.parametrize(("w", "h"), [(640, 480), (480, 640), (500, 333)])
@pytest.mark.parametrize(("aug_scale", "aug_rot"), [(1.0, 0.0), (0.75, 17.0), (1.5, -30.0)])
def test_scale_and_rotation_follow_dekr(w, h, aug_scale, aug_rot):
    M = affine_matrix(AugmentParams(rotation=aug_rot, scale=aug_scale), w, h, 512)
    np.testing.assert_allclose(M[:, :2], dekr_linear(512, w, h, aug_scale, aug_rot), atol=1e-12)
    # the image centre lands on the crop centre without translation
    np.testing.assert_allclose(_map(M, (w - 1) / 2, (h - 1) / 2), [255.5, 255.5], atol=1e-9)


def test_translation_in_dekr_units():
    """DEKR shifts by up to ``max_translate * scale`` image pixels, i.e. ``max_translate * input / 200``
    crop pixels whatever the zoom: 40 -> 102.4 px at 512."""
    for scale in (0.75, 1.0, 1.5):
        M = affine_matrix(AugmentParams(scale=scale, translate=(40.0, -40.0)), 640, 480, 512)
        np.testing.assert_allclose(_map(M, 319.5, 239.5), [255.5 + 102.4, 255.5 - 102.4], atol=1e-9)


@pytest.mark.parametrize(("w", "h"), [(640, 480), (480, 640), (640, 427)])
def test_scale_one_has_the_test_time_size(w, h):
    """At scale 1 a person is as large in the training crop as in the test-time input, which
    resizes the short side to the input size (grmpose.inference.prepare_image)."""
    size = 512
    head, foot = np.array([300.0, 100.0]), np.array([330.0, 400.0])
    train = affine_matrix(AugmentParams(scale=1.0, rotation=25.0, flip=True), w, h, size)
    _, test = prepare_image(np.zeros((h, w, 3), np.uint8), size)
    height_train = np.linalg.norm(_map(train, *foot) - _map(train, *head))
    height_test = np.linalg.norm(_map(test, *foot) - _map(test, *head))
    expected = np.linalg.norm(foot - head) * size / min(w, h)  # short side -> input size
    np.testing.assert_allclose([height_train, height_test], [expected, expected], rtol=1e-3)


def test_sampled_zoom_is_spread_around_test_size():
    """Training zoom relative to test time is 1 / scale: 0.67-1.33 for DEKR's 0.75-1.5, for any
    aspect ratio (the old long-side convention gave 0.56-1.125 on 4:3 images)."""
    rng = np.random.default_rng(5)
    for w, h in [(640, 480), (480, 640)]:
        zoom = []
        for _ in range(500):
            M = affine_matrix(sample_augment(rng), w, h, 512)
            zoom.append(np.sqrt(abs(np.linalg.det(M[:, :2]))) / (512 / min(w, h)))
        zoom = np.array(zoom)
        assert zoom.min() >= 1 / 1.5 - 1e-9 and zoom.max() <= 1 / 0.75 + 1e-9
        assert zoom.min() < 0.7 and zoom.max() > 1.3 and 0.3 < (zoom > 1).mean() < 0.5


def test_invert_affine():
    rng = np.random.default_rng(0)
    for _ in range(5):
        M = affine_matrix(sample_augment(rng), 320, 240, 128)
        inv = invert_affine(M)
        pts = rng.uniform(0, 300, size=(10, 2))
        back = (pts @ M[:, :2].T + M[:, 2]) @ inv[:, :2].T + inv[:, 2]
        np.testing.assert_allclose(back, pts, atol=1e-9)


def test_image_warp_pixel_centre_convention():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    shift = np.array([[1.0, 0.0, 3.0], [0.0, 1.0, -2.0]])
    out = apply_affine_image(img, shift, 20, "nearest")
    np.testing.assert_array_equal(out[0:10, 3:19], img[2:12, 0:16])
    out = apply_affine_image(img, shift, 20, "bilinear")
    np.testing.assert_array_equal(out[0:10, 3:19], img[2:12, 0:16])
    # pixel centre x maps to 2x: output pixel 2x samples input pixel x exactly
    double = np.array([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    out = apply_affine_image(img, double, 24, "bilinear")
    np.testing.assert_array_equal(out[0:24:2, 0:24:2], img[:12, :12])
    assert (apply_affine_image(img, shift, 20)[:, :3] == 0).all()  # outside the image is 0


def _blob(h: int, w: int, x: float, y: float, sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    g = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return np.round(255 * g).astype(np.uint8)


@pytest.mark.parametrize("seed", range(8))
def test_points_follow_the_image(seed):
    """A bright dot at a keypoint, warped as an image, ends up where the point transform says."""
    rng = np.random.default_rng(seed)
    w, h = int(rng.integers(120, 260)), int(rng.integers(120, 260))
    size = 128
    params = sample_augment(rng)
    M = affine_matrix(params, w, h, size)
    s = np.sqrt(abs(np.linalg.det(M[:, :2])))
    for _ in range(3):
        while True:  # a point whose dot lands well inside the crop
            x, y = rng.uniform(0.3 * w, 0.7 * w), rng.uniform(0.3 * h, 0.7 * h)
            u, v = _map(M, x, y)
            if 12 <= u <= size - 13 and 12 <= v <= size - 13:
                break
        sigma = 3.0 / s  # about 3 crop pixels after warping
        img = np.repeat(_blob(h, w, x, y, sigma)[:, :, None], 3, axis=2)
        out = apply_affine_image(img, M, size).astype(np.float64)[:, :, 0]
        yy, xx = np.mgrid[0:size, 0:size]
        cx, cy = (out * xx).sum() / out.sum(), (out * yy).sum() / out.sum()
        kp = np.array([[[x, y, 2.0]]])
        moved = apply_affine_points(kp, M, size)
        assert moved[0, 0, 2] == 2.0
        np.testing.assert_allclose([cx, cy], moved[0, 0, :2], atol=0.25)
        peak = np.unravel_index(np.argmax(out), out.shape)
        assert abs(peak[1] - u) <= 1 and abs(peak[0] - v) <= 1


def test_points_outside_crop_lose_visibility():
    M = eval_affine(100, 100, 100)
    kpts = np.array([[[10, 10, 2], [-5, 50, 1], [50, 99.4, 2], [50, 99.6, 1], [0, 0, 0]]], np.float32)
    out = apply_affine_points(kpts, M, 100)
    assert out.dtype == np.float32 and out.shape == kpts.shape
    np.testing.assert_array_equal(out[0, :, 2], [2, 0, 2, 0, 0])
    np.testing.assert_allclose(out[0, :, :2], kpts[0, :, :2], atol=1e-5)
    np.testing.assert_array_equal(apply_affine_points(kpts, M)[0, :, 2], kpts[0, :, 2])


@pytest.mark.parametrize("spec", [COCO, CROWDPOSE], ids=lambda s: s.name)
def test_flip_twice_is_identity(spec):
    rng = np.random.default_rng(2)
    size = 64
    img = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    p = AugmentParams(flip=True)
    M = affine_matrix(p, size, size, size)
    once = apply_affine_image(img, M, size)
    assert not np.array_equal(once, img)
    np.testing.assert_array_equal(once, img[:, ::-1])
    np.testing.assert_array_equal(apply_affine_image(once, M, size), img)
    kpts = np.concatenate(
        [rng.uniform(0, size - 1, (3, spec.num_keypoints, 2)), np.full((3, spec.num_keypoints, 1), 2.0)], 2
    )
    twice = transform_keypoints(
        transform_keypoints(kpts, M, size, True, spec.flip_index), M, size, True, spec.flip_index
    )
    np.testing.assert_allclose(twice, kpts, atol=1e-4)
    # a flipped image and flipped points agree with a plain mirror of x
    np.testing.assert_allclose(
        transform_keypoints(kpts, M, size, True, spec.flip_index)[..., 0],
        (size - 1 - kpts[..., 0])[..., spec.flip_index],
        atol=1e-4,
    )


@pytest.mark.parametrize("spec", [COCO, CROWDPOSE], ids=lambda s: s.name)
def test_flip_keeps_left_and_right_semantics(spec):
    """After flip + permutation, labels still match the mirrored body (left on the image right)."""
    rng = np.random.default_rng(3)
    k = spec.num_keypoints
    # a person facing the camera: their left joints are on the image's right
    kpts = np.zeros((1, k, 3))
    kpts[0, :, 0] = 100.0
    kpts[0, :, 1] = rng.uniform(40, 160, k)
    kpts[0, :, 2] = 2.0
    for left, right in spec.flip_pairs:
        kpts[0, left, 0], kpts[0, right, 0] = 120.0, 80.0
    kpts[0, 0, 2] = 0.0  # an unlabelled joint keeps v = 0 wherever it moves
    params = AugmentParams(rotation=10.0, flip=True)
    M = affine_matrix(params, 200, 200, 200)
    out = transform_keypoints(kpts, M, 200, params.flip, spec.flip_index)
    for left, right in spec.flip_pairs:
        # the mirrored person still faces the camera: left joints stay on the image's right
        assert out[0, left, 0] > out[0, right, 0]
        np.testing.assert_allclose(out[0, left, :2], _map(M, *kpts[0, right, :2]), atol=1e-4)
    assert out[0, spec.flip_index[0], 2] == 0.0
    np.testing.assert_array_equal(flip_keypoint_order(kpts, spec.flip_index)[..., spec.flip_index, :], kpts)


def test_flip_index_permutation_examples():
    coco_kpts = np.zeros((1, COCO.num_keypoints, 3))
    coco_kpts[0, COCO.keypoints.index("left_wrist")] = (10, 20, 2)
    out = flip_keypoint_order(coco_kpts, COCO.flip_index)
    np.testing.assert_array_equal(out[0, COCO.keypoints.index("right_wrist")], (10, 20, 2))
    assert out[0, COCO.keypoints.index("left_wrist"), 2] == 0
    cp = np.arange(CROWDPOSE.num_keypoints * 3, dtype=float).reshape(1, -1, 3)
    out = flip_keypoint_order(cp, CROWDPOSE.flip_index)
    for name in ("head", "neck"):  # unpaired joints stay
        i = CROWDPOSE.keypoints.index(name)
        np.testing.assert_array_equal(out[0, i], cp[0, i])


def test_sample_augment_ranges_and_reproducibility():
    ranges = AugmentRanges()
    a = [sample_augment(np.random.default_rng(7)) for _ in range(2)]
    assert a[0] == a[1]
    rng = np.random.default_rng(0)
    draws = [sample_augment(rng, ranges) for _ in range(2000)]
    rot = np.array([d.rotation for d in draws])
    scale = np.array([d.scale for d in draws])
    trans = np.array([d.translate for d in draws])
    flips = np.array([d.flip for d in draws])
    assert rot.min() >= -30 and rot.max() <= 30 and rot.min() < -28 and rot.max() > 28
    assert scale.min() >= 0.75 and scale.max() <= 1.5
    assert np.abs(trans).max() <= 40 and np.abs(trans).max() > 38
    assert 0.45 < flips.mean() < 0.55
    fixed = AugmentRanges(max_rotation=0, min_scale=1, max_scale=1, max_translate=0, flip_prob=0)
    assert sample_augment(rng, fixed) == AugmentParams()


def test_mask_warp_nearest_stays_binary():
    mask = np.zeros((50, 80), np.uint8)
    mask[10:30, 20:60] = 255
    M = affine_matrix(AugmentParams(rotation=17.0, scale=1.3, translate=(4, -6)), 80, 50, 64)
    out = apply_affine_image(mask, M, 64, "nearest")
    assert set(np.unique(out)) <= {0, 255}
    # area scales with the determinant
    det = abs(np.linalg.det(M[:, :2]))
    assert (out > 0).sum() == pytest.approx(20 * 40 * det, rel=0.1)
