"""build_targets against a naive per-pixel loop, DEKR's offset-weight formula, and hand-checked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from grmpose.targets import MIN_PERSON_SIZE, build_targets, person_centers, person_sizes

STRIDE = 4


def naive_targets(
    keypoints,
    h,
    w,
    stride=4,
    sigma=2.0,
    center_sigma=4.0,
    radius=4,
    mask=None,
    bg=0.1,
    centers=None,
    sizes=None,
):
    """Per-pixel, per-person loops; the oracle for build_targets.

    Offset weight: DEKR's ``1 / sqrt(w^2 + h^2)`` of the person's box in input pixels, the size
    floored at 32 px; by default the centre is the mean of the labelled joints and the box the
    labelled joints' box (both in input pixels).
    """
    n, k = keypoints.shape[:2]
    heat = np.zeros((k + 1, h, w))
    inside = np.zeros((k + 1, h, w), bool)
    off = np.zeros((2 * k, h, w))
    offw = np.zeros((2 * k, h, w))
    tag = np.full((n, k), -1, np.int64)

    def in_map(u, v):
        i, j = math.floor(u + 0.5), math.floor(v + 0.5)
        return 0 <= i < w and 0 <= j < h

    def splat(ch, u, v, s):
        for y in range(h):
            for x in range(w):
                if abs(x - u) <= 3 * s and abs(y - v) <= 3 * s:
                    g = math.exp(-((x - u) ** 2 + (y - v) ** 2) / (2 * s * s))
                    heat[ch, y, x] = max(heat[ch, y, x], g)
                    inside[ch, y, x] = True

    cmap, size = [], []
    for p in range(n):
        lab = [j for j in range(k) if keypoints[p, j, 2] > 0]
        for j in lab:
            u, v = keypoints[p, j, 0] / stride, keypoints[p, j, 1] / stride
            if in_map(u, v):
                splat(j, u, v, sigma)
                tag[p, j] = math.floor(v + 0.5) * w + math.floor(u + 0.5)
        xs = [keypoints[p, j, 0] for j in lab]
        ys = [keypoints[p, j, 1] for j in lab]
        if sizes is not None:
            size.append(sizes[p])
        else:
            size.append(math.sqrt((max(xs) - min(xs)) ** 2 + (max(ys) - min(ys)) ** 2) if lab else 0.0)
        if centers is not None:
            c = (centers[p][0] / stride, centers[p][1] / stride) if centers[p][2] > 0 else None
        else:
            c = (sum(xs) / len(xs) / stride, sum(ys) / len(ys) / stride) if lab else None
        if c is not None and in_map(*c):
            cmap.append(c)
            splat(k, c[0], c[1], center_sigma)
        else:
            cmap.append(None)
    for y in range(h):
        for x in range(w):
            owner = None
            for p in range(n):
                c = cmap[p]
                if c is None or (x - c[0]) ** 2 + (y - c[1]) ** 2 > radius**2:
                    continue
                if owner is None or size[p] < size[owner]:
                    owner = p
            if owner is None:
                continue
            for j in range(k):
                u, v = keypoints[owner, j, 0] / stride, keypoints[owner, j, 1] / stride
                if keypoints[owner, j, 2] > 0 and in_map(u, v):
                    off[2 * j, y, x] = x - u
                    off[2 * j + 1, y, x] = y - v
                    offw[2 * j, y, x] = offw[2 * j + 1, y, x] = 1 / max(size[owner], 32.0)
    hw = np.where(inside, 1.0, bg)
    if mask is not None:
        hw = hw * mask
        offw = offw * mask
    return heat, hw, off, offw, tag


def random_people(rng, n, k, h, w, stride=4):
    """People with random sizes, some unlabelled/occluded joints, some joints off the map."""
    people = np.zeros((n, k, 3))
    for p in range(n):
        cx, cy = rng.uniform(-2, w + 2) * stride, rng.uniform(-2, h + 2) * stride
        size = rng.uniform(4, 40)
        people[p, :, 0] = cx + rng.normal(0, size, k)
        people[p, :, 1] = cy + rng.normal(0, size, k)
        people[p, :, 2] = rng.choice([0, 1, 2], size=k, p=[0.25, 0.25, 0.5])
    if n > 1:
        people[1, :, 2] = 0  # one person without labelled joints
    return people


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_build_targets_matches_naive_loop(seed):
    rng = np.random.default_rng(seed)
    h, w, k = 20, 28, 5
    kpts = random_people(rng, 7, k, h, w)
    # two overlapping people near the middle, different sizes, so "smaller wins" is exercised
    kpts[2, :, :2] = np.array([14, 10]) * STRIDE + rng.normal(0, 30, (k, 2))
    kpts[3, :, :2] = np.array([15, 11]) * STRIDE + rng.normal(0, 6, (k, 2))
    kpts[2:4, :, 2] = 2
    mask = (rng.uniform(size=(h, w)) > 0.2).astype(np.float32)
    t = build_targets(kpts, (h, w), stride=STRIDE, mask=mask)
    heat, hw, off, offw, tag = naive_targets(kpts, h, w, mask=mask)
    np.testing.assert_allclose(t["heatmaps"].numpy(), heat, atol=1e-6)
    np.testing.assert_allclose(t["heat_weights"].numpy(), hw, atol=1e-6)
    np.testing.assert_allclose(t["offsets"].numpy(), off, atol=1e-5)
    np.testing.assert_allclose(t["offset_weights"].numpy(), offw, atol=1e-6)
    np.testing.assert_array_equal(t["tag_index"].numpy(), tag)
    assert (offw > 0).any() and (heat[k] > 0).any()


def test_zero_people():
    t = build_targets(np.zeros((0, 4, 3)), (8, 10))
    assert t["heatmaps"].shape == (5, 8, 10) and t["heatmaps"].abs().sum() == 0
    assert np.allclose(t["heat_weights"].numpy(), 0.1)
    assert t["offsets"].shape == (8, 8, 10) and t["offset_weights"].sum() == 0
    assert t["tag_index"].shape == (0, 4)


def test_single_person_by_hand():
    # joints at map (10, 5) and (12, 9): centre (11, 7); box 8×16 input px -> size sqrt(320) < 32
    kpts = np.array([[[40.0, 20.0, 2], [48.0, 36.0, 1], [0.0, 0.0, 0]]])
    t = build_targets(kpts, (16, 20))
    hm, off, ow = t["heatmaps"], t["offsets"], t["offset_weights"]
    assert hm[0, 5, 10] == 1 and hm[1, 9, 12] == 1 and hm[3, 7, 11] == 1 and hm[2].sum() == 0
    assert math.isclose(hm[0, 5, 12].item(), math.exp(-4 / 8), rel_tol=1e-6)
    assert hm[0, 5, 17] == 0  # beyond 3σ = 6
    assert tuple(off[0:4, 7, 11].tolist()) == (1.0, 2.0, -1.0, -2.0)
    assert math.isclose(ow[0, 7, 11].item(), 1 / 32, rel_tol=1e-6)  # the floor
    assert ow[4:, 7, 11].sum() == 0  # unlabelled joint
    assert ow[0, 7, 15] > 0 and ow[0, 7, 16] == 0 and ow[0, 10, 14] == 0  # disc of radius 4
    assert t["tag_index"].tolist() == [[5 * 20 + 10, 9 * 20 + 12, -1]]


def test_centers_and_sizes_helpers():
    kpts = np.array([[[1.0, 1.0, 2], [1.0, 5.0, 2]], [[0, 0, 0], [0, 0, 0]], [[3.0, 4.0, 1], [9.0, 9.0, 0]]])
    c = person_centers(kpts)
    np.testing.assert_allclose(c, [[1, 3, 1], [0, 0, 0], [3, 4, 1]])
    np.testing.assert_allclose(person_sizes(kpts), [4.0, 0.0, 0.0])  # collinear: its length
    boxes = np.array([[0, 0, 3, 4], [10, 10, 6, 8], [3, 4, 0, 0]])
    np.testing.assert_allclose(person_sizes(kpts, boxes), [math.hypot(3, 5), 10.0, 0.0])


def dekr_offset_weight(joints_xy_input):
    """DEKR's rule restated (``cal_area_2_torch`` then ``1 / sqrt(area)``), for a person whose
    every joint is labelled: ``area = w*w + h*h`` of the joints' extent in input-crop pixels."""
    xs = [p[0] for p in joints_xy_input]
    ys = [p[1] for p in joints_xy_input]
    w = max(xs) - min(xs)
    h = max(ys) - min(ys)
    return 1.0 / math.sqrt(w * w + h * h)


def test_offset_weight_is_dekr_formula():
    """A normal, fully labelled person: the weight is one over the box diagonal in input pixels,
    not the old ``1 / sqrt(w * h)`` in map pixels (7.6x larger for this person)."""
    joints = [(100.0, 60.0), (150.0, 60.0), (125.0, 110.0), (110.0, 230.0), (140.0, 230.0)]
    kpts = np.array([[[x, y, 2.0] for x, y in joints]])
    t = build_targets(kpts, (64, 64), stride=4)
    expected = dekr_offset_weight(joints)  # 1 / sqrt(50^2 + 170^2)
    cx, cy = round(np.mean([p[0] for p in joints]) / 4), round(np.mean([p[1] for p in joints]) / 4)
    got = t["offset_weights"][:, cy, cx].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    old = 1 / math.sqrt((50 / 4) * (170 / 4))
    assert old / expected > 7


def test_degenerate_people_are_floored():
    """One labelled joint (size 0) or a tiny box: weight 1 / MIN_PERSON_SIZE, not infinity or 1."""
    kpts = np.zeros((2, 3, 3))
    kpts[0, 0] = (40.0, 40.0, 2)  # one joint
    kpts[1, :, :] = [(200.0, 100.0, 2), (201.0, 100.0, 2), (0.0, 0.0, 0)]  # a 1-pixel "person"
    t = build_targets(kpts, (64, 64))
    ow = t["offset_weights"].numpy()
    assert MIN_PERSON_SIZE == 32.0
    assert math.isclose(ow[0, 10, 10], 1 / 32, rel_tol=1e-6)
    assert math.isclose(ow[0, 25, 50], 1 / 32, rel_tol=1e-6)
    assert ow.max() <= 1 / 32 + 1e-9
    # with the annotation box as the size (what the dataset passes), the box decides
    t = build_targets(kpts, (64, 64), sizes=np.array([math.hypot(30, 80), math.hypot(3, 4)]))
    assert math.isclose(t["offset_weights"][0, 10, 10].item(), 1 / math.hypot(30, 80), rel_tol=1e-6)
    assert math.isclose(t["offset_weights"][0, 25, 50].item(), 1 / 32, rel_tol=1e-6)


@pytest.mark.parametrize("seed", [3, 4])
def test_explicit_centers_and_sizes_match_naive_loop(seed):
    """Centres given from outside (before the crop) and per-person sizes, some people without a
    centre (COCO's small-area rule): same maps as the naive loop fed the same inputs."""
    rng = np.random.default_rng(seed)
    h, w, k = 20, 28, 5
    kpts = random_people(rng, 7, k, h, w)
    kpts[2:4, :, :2] = np.array([14, 10]) * STRIDE + rng.normal(0, 8, (2, k, 2))
    kpts[2:4, :, 2] = 2
    centers = np.concatenate(
        [rng.uniform(-8, w * STRIDE + 8, (7, 1)), rng.uniform(-8, h * STRIDE + 8, (7, 1))], 1
    )
    centers[2:4] = np.array([14, 10]) * STRIDE + rng.normal(0, 4, (2, 2))
    centers = np.concatenate([centers, (rng.uniform(size=(7, 1)) > 0.3).astype(float)], 1)
    centers[2:4, 2] = 1
    sizes = rng.uniform(0, 120, 7)
    t = build_targets(kpts, (h, w), stride=STRIDE, center_sigma=2.0, centers=centers, sizes=sizes)
    heat, hw, off, offw, tag = naive_targets(kpts, h, w, center_sigma=2.0, centers=centers, sizes=sizes)
    np.testing.assert_allclose(t["heatmaps"].numpy(), heat, atol=1e-6)
    np.testing.assert_allclose(t["heat_weights"].numpy(), hw, atol=1e-6)
    np.testing.assert_allclose(t["offsets"].numpy(), off, atol=1e-5)
    np.testing.assert_allclose(t["offset_weights"].numpy(), offw, atol=1e-6)
    np.testing.assert_array_equal(t["tag_index"].numpy(), tag)
    assert (offw > 0).any()


def test_person_without_centre_keeps_joint_heatmaps():
    kpts = np.array([[[40.0, 20.0, 2], [48.0, 36.0, 1]]])
    t = build_targets(kpts, (16, 20), centers=np.array([[44.0, 28.0, 0.0]]))
    assert t["heatmaps"][0, 5, 10] == 1 and t["heatmaps"][1, 9, 12] == 1
    assert t["heatmaps"][2].sum() == 0 and t["offset_weights"].sum() == 0
    assert t["tag_index"].tolist() == [[5 * 20 + 10, 9 * 20 + 12]]


def test_center_sigma_sets_the_centre_gaussian():
    kpts = np.array([[[40.0, 40.0, 2], [48.0, 40.0, 2]]])  # centre at map (11, 10)
    for s in (2.0, 4.0):
        hm = build_targets(kpts, (24, 24), center_sigma=s)["heatmaps"][2]
        assert math.isclose(hm[10, 14].item(), math.exp(-9 / (2 * s * s)), rel_tol=1e-6)


def test_bad_centers_or_sizes_are_refused():
    kpts = np.zeros((2, 3, 3))
    with pytest.raises(ValueError, match="centers"):
        build_targets(kpts, (8, 8), centers=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="sizes"):
        build_targets(kpts, (8, 8), sizes=np.array([1.0, np.nan]))
