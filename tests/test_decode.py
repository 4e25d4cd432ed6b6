"""OKS, centre NMS, pose NMS, bilinear sampling against naive loops; encode -> decode round trips."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from pycocotools.cocoeval import COCOeval

from grmpose.decode import (
    center_nms,
    decode_image,
    decode_regression,
    map_to_image,
    nms_kernel_size,
    pose_nms,
    sample_bilinear,
)
from grmpose.oks import oks
from grmpose.spec import COCO, CROWDPOSE
from grmpose.targets import build_targets

# ---------------------------------------------------------------- OKS


def naive_oks(pred, gt, areas, sigmas):
    out = np.zeros((len(pred), len(gt)))
    for i, p in enumerate(pred):
        for j, g in enumerate(gt):
            terms = []
            for k, s in enumerate(sigmas):
                if g[k, 2] > 0:
                    d2 = (p[k, 0] - g[k, 0]) ** 2 + (p[k, 1] - g[k, 1]) ** 2
                    terms.append(math.exp(-d2 / (2 * areas[j] * (2 * s) ** 2)))
            out[i, j] = sum(terms) / len(terms) if terms else 0.0
    return out


def coco_oks(pred, gt, areas, sigmas):
    """pycocotools' own computeOks on the same poses."""
    ev = COCOeval(iouType="keypoints")
    ev.params.kpt_oks_sigmas = np.asarray(sigmas)
    ev.params.maxDets = [len(pred)]
    ev._gts = {(0, 1): []}
    ev._dts = {(0, 1): []}
    for g, a in zip(gt, areas):
        xs, ys = g[g[:, 2] > 0, 0], g[g[:, 2] > 0, 1]
        box = [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]
        ev._gts[0, 1].append({"keypoints": g.reshape(-1).tolist(), "bbox": box, "area": a})
    for p in pred:
        ev._dts[0, 1].append({"keypoints": p.reshape(-1).tolist(), "score": 1.0})
    return np.asarray(ev.computeOks(0, 1))


def test_oks_matches_loop_and_coco():
    rng = np.random.default_rng(0)
    k = COCO.num_keypoints
    gt = np.concatenate([rng.uniform(0, 200, (5, k, 2)), rng.integers(0, 3, (5, k, 1))], 2)
    gt[:, 0, 2] = 2  # at least one labelled joint each
    pred = gt[rng.integers(0, 5, 7), :, :2] + rng.normal(0, 8, (7, k, 2))
    pred = np.concatenate([pred, rng.uniform(size=(7, k, 1))], 2)
    areas = rng.uniform(500, 5000, 5)
    got = oks(pred, gt, areas, COCO.sigmas)
    assert got.shape == (7, 5)
    np.testing.assert_allclose(got, naive_oks(pred, gt, areas, COCO.sigmas), rtol=1e-10)
    np.testing.assert_allclose(got, coco_oks(pred, gt, areas, COCO.sigmas), rtol=1e-10)
    np.testing.assert_allclose(oks(pred[2], gt, areas, COCO.sigmas), got[2])
    assert np.allclose(oks(gt, gt, areas, COCO.sigmas).diagonal(), 1.0)


# ---------------------------------------------------------------- centre NMS, sampling


def test_nms_kernel_rule():
    assert nms_kernel_size(128, 128) == 3
    assert nms_kernel_size(256, 256) == 5
    assert nms_kernel_size(320, 320) == 7


@pytest.mark.parametrize("kernel", [3, 5])
def test_center_nms_matches_loop(kernel):
    g = torch.Generator().manual_seed(kernel)
    heat = torch.rand(23, 31, generator=g) ** 4
    scores, loc = center_nms(heat, max_people=20, threshold=0.05, kernel=kernel)
    r = kernel // 2
    ref = []
    for y in range(23):
        for x in range(31):
            window = heat[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1]
            if heat[y, x] == window.max() and heat[y, x] > 0.05:
                ref.append((heat[y, x].item(), x, y))
    ref = sorted(ref, reverse=True)[:20]
    assert scores.tolist() == [s for s, _, _ in ref]
    assert loc.tolist() == [[x, y] for _, x, y in ref]


def test_sample_bilinear_matches_loop():
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(3, 6, 8, generator=g)
    pts = torch.rand(5, 3, 2, generator=g) * torch.tensor([9.0, 7.0]) - 1  # some outside
    got = sample_bilinear(maps, pts)
    for n in range(5):
        for k in range(3):
            x = min(max(pts[n, k, 0].item(), 0), 7)
            y = min(max(pts[n, k, 1].item(), 0), 5)
            x0, y0 = min(int(x), 6), min(int(y), 4)
            fx, fy = x - x0, y - y0
            m = maps[k]
            ref = (
                m[y0, x0] * (1 - fx) * (1 - fy)
                + m[y0, x0 + 1] * fx * (1 - fy)
                + m[y0 + 1, x0] * (1 - fx) * fy
                + m[y0 + 1, x0 + 1] * fx * fy
            )
            assert math.isclose(got[n, k].item(), ref.item(), rel_tol=1e-5, abs_tol=1e-6)


# ---------------------------------------------------------------- pose NMS


def naive_pose_nms(poses, scores, num_joints, factor=0.05):
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept = []
    for i in order:
        duplicate = False
        for j in kept:
            xs, ys = poses[j, :, 0], poses[j, :, 1]
            diag = math.hypot(xs.max() - xs.min(), ys.max() - ys.min())
            close = sum(
                math.hypot(*(poses[i, k, :2] - poses[j, k, :2])) < factor * diag
                for k in range(poses.shape[1])
            )
            duplicate |= close > num_joints
        if not duplicate:
            kept.append(i)
    return kept


@pytest.mark.parametrize("seed", range(4))
def test_pose_nms_matches_greedy_loop(seed):
    rng = np.random.default_rng(seed)
    k = CROWDPOSE.num_keypoints
    base = rng.uniform(0, 100, (6, k, 2))
    poses = base[rng.integers(0, 6, 40)] + rng.normal(0, 1.5, (40, k, 2))  # clusters of near-duplicates
    scores = rng.uniform(size=40)
    keep = pose_nms(torch.tensor(poses), torch.tensor(scores), CROWDPOSE)
    ref = naive_pose_nms(poses, scores, CROWDPOSE.nms_threshold_joints)
    assert keep.tolist() == ref
    assert 1 < len(ref) < 40
    assert pose_nms(torch.zeros(0, k, 3), torch.zeros(0), CROWDPOSE).numel() == 0


# ---------------------------------------------------------------- round trips


def make_people(rng, spec, n, width=512, height=512, unlabelled=0.2):
    """n non-overlapping people of different sizes on a grid of cells (input pixels)."""
    k = spec.num_keypoints
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    cw, ch = width / cols, height / rows
    people = np.zeros((n, k, 3))
    for p in range(n):
        r, c = divmod(p, cols)
        size = rng.uniform(0.35, 0.8)
        cx, cy = (c + 0.5) * cw, (r + 0.5) * ch
        people[p, :, 0] = cx + rng.uniform(-0.5, 0.5, k) * size * cw
        people[p, :, 1] = cy + rng.uniform(-0.5, 0.5, k) * size * ch
        people[p, :, 2] = np.where(rng.uniform(size=k) < unlabelled, 0, rng.choice([1, 2], k))
        people[p, 0, 2] = 2
    return people


EXACT_PX = 1e-3  # joint error bound where decoding is exact (float32 rounding only)


def labelled_joint_error(poses, people, sigmas):
    """Max distance (px) over labelled joints between each person and its best-OKS prediction; each
    person must have its own prediction."""
    best = oks(poses, people, gt_areas(people), sigmas).argmax(0)
    assert sorted(best.tolist()) == list(range(len(people)))  # one prediction per person
    err = np.linalg.norm(poses[best, :, :2] - people[..., :2], axis=-1)
    return float(err[people[..., 2] > 0].max())


def gt_areas(people):
    areas = []
    for p in people:
        lab = p[p[:, 2] > 0, :2]
        areas.append(np.prod(lab.max(0) - lab.min(0)))
    return np.asarray(areas)


@pytest.mark.parametrize("spec", [COCO, CROWDPOSE], ids=lambda s: s.name)
@pytest.mark.parametrize("n", [0, 1, 8])
def test_round_trip(spec, n):
    """targets from ground truth, fed back as network outputs, decode to the ground truth.

    Offsets are exact (real-valued), so no stride quantisation: the regressed joints equal the
    ground truth up to float32 rounding, whatever the keypoints' positions.
    """
    rng = np.random.default_rng(n)
    people = make_people(rng, spec, n)
    t = build_targets(people, (128, 128))
    poses, scores = decode_image((t["heatmaps"], t["offsets"]), spec)
    assert len(poses) == n and scores.shape == (n,)
    if n == 0:
        return
    assert (np.diff(scores) <= 0).all() and (scores > 0).all()
    assert labelled_joint_error(poses, people, spec.sigmas) <= EXACT_PX


def test_round_trip_with_affine_and_batch_dim():
    """Image -> input affine (scale 0.5 + shift), outputs with a batch dim and requires_grad."""
    rng = np.random.default_rng(5)
    people_img = make_people(rng, COCO, 6, width=1000, height=900)
    a = np.array([[0.5, 0.0, 6.0], [0.0, 0.5, -3.0]])
    people_in = people_img.copy()
    people_in[..., :2] = people_img[..., :2] @ a[:, :2].T + a[:, 2]
    t = build_targets(people_in, (128, 128))
    heat = t["heatmaps"][None].clone().requires_grad_(True)
    off = t["offsets"][None].clone().requires_grad_(True)
    poses, _ = decode_image((heat, off, torch.zeros(1)), COCO, image_to_input=a)
    assert len(poses) == 6
    assert labelled_joint_error(poses, people_img, COCO.sigmas) <= 2 * EXACT_PX  # input px × 2 = image px
    assert torch.allclose(
        map_to_image(torch.tensor([[2.0, 3.0]]), 4, a), torch.tensor([[4.0, 30.0]], dtype=torch.float64)
    )


def test_duplicate_centres_removed_by_pose_nms():
    """A centre exactly between cells gives equal peaks (here 4: map 50.5, 62.5); NMS keeps one."""
    k = COCO.num_keypoints
    person = np.zeros((1, k, 3))
    person[0, :, 0] = np.linspace(200, 300, k)
    person[0, :, 1] = np.linspace(150, 350, k)
    person[0, :, 2] = 2
    person[0, :, 0] += 200 + 2 - person[0, :, 0].mean()  # centre x = 202 -> map 50.5
    t = build_targets(person, (128, 128))
    raw, _ = decode_regression(t["heatmaps"], t["offsets"], COCO)
    poses, _ = decode_image((t["heatmaps"], t["offsets"]), COCO)
    assert len(raw) == 4 and len(poses) == 1
    assert np.abs(poses[0, :, :2] - person[0, :, :2]).max() <= EXACT_PX


def test_decode_speed_30_people():
    rng = np.random.default_rng(7)
    people = make_people(rng, COCO, 30)
    t = build_targets(people, (128, 128))
    out = (t["heatmaps"], t["offsets"])
    for _ in range(3):
        decode_image(out, COCO)
    start = time.perf_counter()
    runs = 20
    for _ in range(runs):
        poses, _ = decode_image(out, COCO)
    per_image = (time.perf_counter() - start) / runs
    assert len(poses) == 30
    assert per_image < 0.05  # target is 5 ms; generous bound against noisy CI machines
