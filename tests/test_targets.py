"""build_targets against a naive per-pixel loop, plus hand-checked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from grmpose.targets import build_targets, person_centers_and_areas

STRIDE = 4


def naive_targets(keypoints, h, w, stride=4, sigma=2.0, center_sigma=4.0, radius=4, mask=None, bg=0.1):
    """Per-pixel, per-person loops; the oracle for build_targets."""
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

    centers, areas = [], []
    for p in range(n):
        lab = [j for j in range(k) if keypoints[p, j, 2] > 0]
        for j in lab:
            u, v = keypoints[p, j, 0] / stride, keypoints[p, j, 1] / stride
            if in_map(u, v):
                splat(j, u, v, sigma)
                tag[p, j] = math.floor(v + 0.5) * w + math.floor(u + 0.5)
        if not lab:
            centers.append(None)
            areas.append(None)
            continue
        xs = [keypoints[p, j, 0] / stride for j in lab]
        ys = [keypoints[p, j, 1] / stride for j in lab]
        c = (sum(xs) / len(xs), sum(ys) / len(ys))
        areas.append(max((max(xs) - min(xs)) * (max(ys) - min(ys)), 1.0))
        if in_map(*c):
            centers.append(c)
            splat(k, c[0], c[1], center_sigma)
        else:
            centers.append(None)
    for y in range(h):
        for x in range(w):
            owner = None
            for p in range(n):
                c = centers[p]
                if c is None or (x - c[0]) ** 2 + (y - c[1]) ** 2 > radius**2:
                    continue
                if owner is None or areas[p] < areas[owner]:
                    owner = p
            if owner is None:
                continue
            for j in range(k):
                u, v = keypoints[owner, j, 0] / stride, keypoints[owner, j, 1] / stride
                if keypoints[owner, j, 2] > 0 and in_map(u, v):
                    off[2 * j, y, x] = x - u
                    off[2 * j + 1, y, x] = y - v
                    offw[2 * j, y, x] = offw[2 * j + 1, y, x] = 1 / math.sqrt(areas[owner])
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
    # joints at map (10, 5) and (12, 9): centre (11, 7), box 2×4 -> area 8
    kpts = np.array([[[40.0, 20.0, 2], [48.0, 36.0, 1], [0.0, 0.0, 0]]])
    t = build_targets(kpts, (16, 20))
    hm, off, ow = t["heatmaps"], t["offsets"], t["offset_weights"]
    assert hm[0, 5, 10] == 1 and hm[1, 9, 12] == 1 and hm[3, 7, 11] == 1 and hm[2].sum() == 0
    assert math.isclose(hm[0, 5, 12].item(), math.exp(-4 / 8), rel_tol=1e-6)
    assert hm[0, 5, 17] == 0  # beyond 3σ = 6
    assert tuple(off[0:4, 7, 11].tolist()) == (1.0, 2.0, -1.0, -2.0)
    assert math.isclose(ow[0, 7, 11].item(), 1 / math.sqrt(8), rel_tol=1e-6)
    assert ow[4:, 7, 11].sum() == 0  # unlabelled joint
    assert ow[0, 7, 15] > 0 and ow[0, 7, 16] == 0 and ow[0, 10, 14] == 0  # disc of radius 4
    assert t["tag_index"].tolist() == [[5 * 20 + 10, 9 * 20 + 12, -1]]


def test_centers_and_areas_guard():
    kpts = np.array([[[1.0, 1.0, 2], [1.0, 5.0, 2]], [[0, 0, 0], [0, 0, 0]]])
    c, a, has = person_centers_and_areas(kpts)
    assert np.allclose(c[0], [1, 3]) and a[0] == 1.0 and has.tolist() == [True, False]
