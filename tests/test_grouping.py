"""AE, hybrid and regression decoders on ground-truth maps; AE matching, peak finding and snapping
against naive loops (peaks found by brute force over every cell, not with the module's finder)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from grmpose.grouping import (
    DECODERS,
    _group_by_tag,
    decode_ae,
    decode_hybrid,
    decode_maps,
    joint_order,
    joint_peaks,
    max_filter,
    snap_joints,
)
from grmpose.oks import oks
from grmpose.spec import COCO, CROWDPOSE, KeypointSpec
from grmpose.targets import build_targets

MAP = (128, 128)
EXACT_PX = 1e-3  # joint error bound where decoding is exact (float32 rounding only)
QUARTER_CELL_PX = 0.25 * 4 * math.sqrt(2)  # AE's quarter-cell refinement at stride 4, both axes


def make_people(rng, spec, n, width=512, height=512, unlabelled=0.2):
    """n non-overlapping people of different sizes, one per cell of a grid (input pixels)."""
    k = spec.num_keypoints
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    cw, ch = width / cols, height / rows
    people = np.zeros((n, k, 3))
    for p in range(n):
        r, c = divmod(p, cols)
        size = rng.uniform(0.4, 0.8)
        people[p, :, 0] = (c + 0.5) * cw + rng.uniform(-0.5, 0.5, k) * size * cw
        people[p, :, 1] = (r + 0.5) * ch + rng.uniform(-0.5, 0.5, k) * size * ch
        people[p, :, 2] = np.where(rng.uniform(size=k) < unlabelled, 0, rng.choice([1, 2], k))
        people[p, 0, 2] = 2
    return people


def gt_areas(people):
    areas = []
    for p in people:
        lab = p[p[:, 2] > 0, :2]
        areas.append(max(np.prod(lab.max(0) - lab.min(0)), 1.0))
    return np.asarray(areas)


def tag_maps(tag_index, values, map_size, radius=2):
    """K×H×W tags: person n's value written in channel k on the cells within ``radius`` (Chebyshev)
    of its joint cell ``tag_index[n, k]`` (−1 = none); later people overwrite earlier ones."""
    h, w = map_size
    n, k = tag_index.shape
    tags = np.zeros((k, h, w), np.float32)
    for p in range(n):
        for j in range(k):
            idx = int(tag_index[p, j])
            if idx < 0:
                continue
            y, x = divmod(idx, w)
            tags[j, max(0, y - radius) : y + radius + 1, max(0, x - radius) : x + radius + 1] = values[p]
    return torch.from_numpy(tags)


def gt_maps(people, map_size=MAP, values=None):
    """(heatmaps, offsets, tags) ground-truth "network outputs"; tags 2, 4, 6, ... per person."""
    t = build_targets(people, map_size)
    values = 2.0 * np.arange(1, len(people) + 1) if values is None else values
    return t["heatmaps"], t["offsets"], tag_maps(t["tag_index"].numpy(), values, map_size)


def to_input(poses):
    """Map units -> input pixels (stride 4)."""
    out = poses.clone().double().numpy()
    out[..., :2] *= 4
    return out


def assert_recovers(poses, scores, people, spec, max_error_px=EXACT_PX):
    """One prediction per person (matched by OKS), labelled joints within ``max_error_px`` input
    pixels, positive scores."""
    n = len(people)
    assert poses.shape == (n, spec.num_keypoints, 3) and scores.shape == (n,)
    if n == 0:
        return
    pred = to_input(poses)
    best = oks(pred, people, gt_areas(people), spec.sigmas).argmax(0)
    assert sorted(best.tolist()) == list(range(n))
    err = np.linalg.norm(pred[best, :, :2] - people[..., :2], axis=-1)[people[..., 2] > 0]
    assert err.max() <= max_error_px, err.max()
    assert (scores > 0).all()


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("decoder", list(DECODERS))
@pytest.mark.parametrize("spec", [COCO, CROWDPOSE], ids=lambda s: s.name)
@pytest.mark.parametrize("n", [0, 1, 10])
def test_decoders_recover_ground_truth(decoder, spec, n):
    """Ground-truth maps decode to the ground truth exactly. AE localises at heatmap peaks with
    quarter-cell refinement (error up to ¼ cell = 1 px per axis), so its people sit on the stride-4
    grid here, where the peak is the joint; ``test_ae_off_grid_error`` covers arbitrary positions."""
    rng = np.random.default_rng(n + 17 * spec.num_keypoints)
    people = make_people(rng, spec, n)
    if decoder == "ae":
        people[..., :2] = np.round(people[..., :2] / 4) * 4
    heat, off, tags = gt_maps(people)
    poses, scores = decode_maps(heat, off, tags, spec, decoder=decoder)
    assert_recovers(poses, scores, people, spec)


@pytest.mark.parametrize("spec", [COCO, CROWDPOSE], ids=lambda s: s.name)
def test_ae_off_grid_error(spec):
    rng = np.random.default_rng(4)
    people = make_people(rng, spec, 10)
    heat, off, tags = gt_maps(people)
    poses, scores = decode_ae(heat, tags, spec)
    assert_recovers(poses, scores, people, spec, max_error_px=QUARTER_CELL_PX + 1e-4)


def test_unknown_decoder_names_choices():
    k = COCO.num_keypoints
    with pytest.raises(ValueError, match="regression, ae, hybrid"):
        decode_maps(torch.zeros(k + 1, 8, 8), torch.zeros(2 * k, 8, 8), torch.zeros(k, 8, 8), COCO, "pifpaf")
    with pytest.raises(ValueError, match="tag maps"):
        decode_maps(torch.zeros(k + 1, 8, 8), torch.zeros(2 * k, 8, 8), None, COCO, "ae")


# ---------------------------------------------------------------- AE


def test_joint_order():
    order = joint_order(COCO)
    assert order.tolist() == [0, 1, 2, 3, 4, 5, 6, 11, 12, 7, 8, 9, 10, 13, 14, 15, 16]  # AE's COCO order
    assert sorted(joint_order(CROWDPOSE).tolist()) == list(range(CROWDPOSE.num_keypoints))
    assert joint_order(CROWDPOSE)[:6].tolist() == [0, 1, 6, 7, 12, 13]
    odd = KeypointSpec("odd", ("a", "b", "c"), (), (), (0.1, 0.1, 0.1))
    assert joint_order(odd).tolist() == [0, 1, 2]


def test_joint_peaks_quarter_shift():
    heat = torch.zeros(2, 9, 9)
    heat[0, 4, 4], heat[0, 4, 5], heat[0, 4, 3] = 1.0, 0.6, 0.2  # higher right neighbour: x + ¼
    heat[1, 2, 2], heat[1, 1, 2], heat[1, 3, 2] = 1.0, 0.5, 0.5  # tie in y: no shift
    values, xy, cells = joint_peaks(heat, max_peaks=1)
    assert values[:, 0].tolist() == [1.0, 1.0]
    assert xy[0, 0].tolist() == [4.25, 4.0] and xy[1, 0].tolist() == [2.0, 2.0]
    assert cells[:, 0].tolist() == [4 * 9 + 4, 2 * 9 + 2]


def naive_group(values, xy, tags, order, det, thr):
    """Dict-and-list AE matching (as AE's reference code), Hungarian on round(d)*100 - heat."""
    groups = []  # each: {"joints": {j: (x, y, v)}, "tags": [..]}
    for j in order:
        peaks = [(xy[j, m], values[j, m], tags[j, m]) for m in range(values.shape[1]) if values[j, m] > det]
        if not peaks:
            continue
        if not groups:
            for p, v, t in peaks:
                groups.append({"joints": {j: (*p, v)}, "tags": [t]})
            continue
        means = [np.mean(g["tags"]) for g in groups]
        cost = np.zeros((len(peaks), len(groups)))
        dist = np.zeros_like(cost)
        for a, (_, v, t) in enumerate(peaks):
            for b, mt in enumerate(means):
                dist[a, b] = abs(t - mt)
                cost[a, b] = round(dist[a, b]) * 100 - v
        rows, cols = linear_sum_assignment(cost)
        matched = {}
        for r, c in zip(rows, cols):
            if dist[r, c] < thr:
                matched[r] = c
        for a, (p, v, t) in enumerate(peaks):
            if a in matched:
                groups[matched[a]]["joints"][j] = (*p, v)
                groups[matched[a]]["tags"].append(t)
            else:
                groups.append({"joints": {j: (*p, v)}, "tags": [t]})
    out = np.zeros((len(groups), values.shape[0], 3))
    for g, grp in enumerate(groups):
        for j, val in grp["joints"].items():
            out[g, j] = val
    return out


@pytest.mark.parametrize("seed", range(3))
def test_group_by_tag_matches_naive(seed):
    rng = np.random.default_rng(seed)
    k, m = 6, 7
    values = rng.uniform(0, 1, (k, m))
    xy = rng.uniform(0, 50, (k, m, 2))
    tags = rng.integers(0, 5, (k, m)) * 1.5 + rng.normal(0, 0.3, (k, m))
    order = rng.permutation(k)
    got, _ = _group_by_tag(values, xy, tags, order, 0.2, 1.0)
    ref = naive_group(values, xy, tags, order, 0.2, 1.0)
    np.testing.assert_allclose(got, ref)


def _split_pair(spec):
    """Two people; person 0 has the first half of the joints labelled, person 1 the second half."""
    k = spec.num_keypoints
    rng = np.random.default_rng(3)
    people = make_people(rng, spec, 2, unlabelled=0.0)
    people[0, k // 2 :, 2] = 0
    people[1, : k // 2, 2] = 0
    return people


@pytest.mark.parametrize("spec", [COCO, CROWDPOSE], ids=lambda s: s.name)
def test_ae_tag_threshold(spec):
    """Nearly equal tags merge two partial people into one group; distinct tags keep them apart."""
    people = _split_pair(spec)
    heat, off, tags = gt_maps(people, values=np.array([2.0, 2.4]))
    poses, _ = decode_ae(heat, tags, spec, refine=False)
    assert len(poses) == 1 and (poses[0, :, 2] > 0.9).all()  # one group holding every joint
    heat, off, tags = gt_maps(people, values=np.array([2.0, 4.0]))
    poses, scores = decode_ae(heat, tags, spec, refine=False)
    assert len(poses) == 2
    found = sorted(int((p[:, 2] > 0).sum()) for p in poses)
    assert found == sorted([spec.num_keypoints // 2, spec.num_keypoints - spec.num_keypoints // 2])
    # a higher threshold merges even distinct tags
    poses, _ = decode_ae(heat, tags, spec, refine=False, tag_threshold=2.5)
    assert len(poses) == 1


def test_ae_refine_fills_missing_joint():
    """A joint whose heat peak is below the detection threshold is found by refinement."""
    rng = np.random.default_rng(11)
    people = make_people(rng, COCO, 3, unlabelled=0.0)
    heat, off, tags = gt_maps(people)
    heat[9] *= 0.05  # left wrists: below threshold 0.1 -> not detected, refine finds them
    raw, _ = decode_ae(heat, tags, COCO, refine=False)
    assert (raw[:, 9, 2] == 0).all()
    poses, scores = decode_ae(heat, tags, COCO, refine=True)
    assert (poses[:, 9, 2] > 0).all()
    assert_recovers(poses, scores, people, COCO, max_error_px=QUARTER_CELL_PX + 1e-4)  # off-grid people
    assert torch.equal(scores, raw[:, :, 2].mean(1))  # AE scores before refinement


# ---------------------------------------------------------------- hybrid


def test_hybrid_snaps_perturbed_regression():
    """Offsets off by ~1.8 cells: regression misses, the hybrid snaps back to the peaks."""
    rng = np.random.default_rng(5)
    spec = COCO
    people = make_people(rng, spec, 6, unlabelled=0.0)
    heat, off, tags = gt_maps(people)
    noise = torch.from_numpy(rng.choice([-1.25, 1.25], off.shape).astype(np.float32))
    off_bad = off + noise * (off != 0)
    reg, reg_scores = decode_maps(heat, off_bad, tags, spec, "regression")
    hyb, hyb_scores = decode_maps(heat, off_bad, tags, spec, "hybrid")
    sim_reg = oks(to_input(reg), people, gt_areas(people), spec.sigmas).max(0)
    assert sim_reg.max() < 0.99
    assert_recovers(hyb, hyb_scores, people, spec, max_error_px=QUARTER_CELL_PX + 1e-4)  # at the peaks
    assert (hyb_scores > reg_scores).all()  # rescored from the heat at the peaks
    # peaks whose tags disagree with the person's are not taken
    same, _ = decode_hybrid(heat, off_bad, tags, spec, tag_threshold=0.0)
    assert torch.equal(same[..., :2], reg[..., :2])
    other = tags.clone()
    idx = build_targets(people, MAP)["tag_index"]
    flat = other.reshape(spec.num_keypoints, -1)
    for j in range(spec.num_keypoints):  # the peak cells alone carry a foreign tag
        flat[j, idx[:, j]] += 3.0
    same, _ = decode_hybrid(heat, off_bad, other, spec)
    moved = (same[..., :2] - reg[..., :2]).norm(dim=-1)
    assert (moved == 0).float().mean() > 0.9


def brute_force_peaks(m, max_peaks=30, kernel=5, above=0.0):
    """Local maxima above ``above`` of one H×W map, by looking at every cell's window (clipped at
    the border), best first, at most ``max_peaks``; each as ``(value, x, y, refined x, refined y)``
    with AE's quarter-cell shift toward the higher neighbour (none on a tie; border clamped)."""
    m = np.asarray(m, dtype=np.float32)
    h, w = m.shape
    r = kernel // 2
    out = []
    for y in range(h):
        for x in range(w):
            v = float(m[y, x])
            if v <= above or v < m[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1].max():
                continue
            dx = m[y, min(x + 1, w - 1)] - m[y, max(x - 1, 0)]
            dy = m[min(y + 1, h - 1), x] - m[max(y - 1, 0), x]
            out.append((v, x, y, x + 0.25 * float(np.sign(dx)), y + 0.25 * float(np.sign(dy))))
    out.sort(key=lambda p: -p[0])
    return out[:max_peaks]


def test_joint_peaks_match_brute_force():
    """The peaks above 0 of every map: same values, cells and refined positions (as sets: ties may
    come in any order)."""
    g = torch.Generator().manual_seed(1)
    heat = (torch.rand(4, 19, 23, generator=g) ** 6).round(decimals=3)  # sparse maxima, some ties
    values, xy, cells = joint_peaks(heat, max_peaks=30, kernel=5)
    for j in range(4):
        ref = set(brute_force_peaks(heat[j]))
        got = {
            (float(v), int(c) % 23, int(c) // 23, float(p[0]), float(p[1]))
            for v, p, c in zip(values[j], xy[j], cells[j])
            if v > 0
        }
        assert got == ref and len(ref) > 3


def naive_snap(joints, heat, tags, sigmas, det=0.1, thr=1.0, keep_within=0.5, min_radius=2.0):
    """Per-person, per-joint loop twin of ``snap_joints``; peaks from ``brute_force_peaks``."""
    n, k = joints.shape[:2]
    peaks = [brute_force_peaks(heat[j], above=det) for j in range(k)]
    # torch's median of an even count is the lower middle value
    person_tag = [sorted(_bilinear(tags[j], joints[p, j]) for j in range(k))[(k - 1) // 2] for p in range(n)]
    out = joints.clone()
    for j in range(k):
        cost = np.full((n, len(peaks[j])), np.inf)
        for p in range(n):
            ext = (joints[p].amax(0) - joints[p].amin(0)).tolist()
            radius = max(min_radius, 2 * 2 * sigmas[j] * math.sqrt(max(ext[0] * ext[1], 1.0)))
            for m, (_, x, y, rx, ry) in enumerate(peaks[j]):
                d = math.hypot(float(joints[p, j, 0]) - rx, float(joints[p, j, 1]) - ry)
                if d <= radius and abs(float(tags[j, y, x]) - person_tag[p]) < thr:
                    cost[p, m] = d
        for p in range(n):
            if not len(peaks[j]):
                continue
            m = int(np.argmin(cost[p]))
            if np.isfinite(cost[p, m]) and cost[p, m] > keep_within and int(np.argmin(cost[:, m])) == p:
                out[p, j] = torch.tensor(peaks[j][m][3:5], dtype=out.dtype)
    return out


def _bilinear(m, pt):
    h, w = m.shape
    x = min(max(float(pt[0]), 0), w - 1)
    y = min(max(float(pt[1]), 0), h - 1)
    x0, y0 = min(int(x), w - 2), min(int(y), h - 2)
    fx, fy = x - x0, y - y0
    return float(
        m[y0, x0] * (1 - fx) * (1 - fy) + m[y0, x0 + 1] * fx * (1 - fy) + m[y0 + 1, x0] * (1 - fx) * fy
    ) + float(m[y0 + 1, x0 + 1] * fx * fy)


def test_snap_joints_matches_loop():
    rng = np.random.default_rng(2)
    people = make_people(rng, COCO, 5, unlabelled=0.1)
    heat, _, tags = gt_maps(people)
    k = COCO.num_keypoints
    joints = torch.from_numpy(people[..., :2] / 4 + rng.normal(0, 1.5, (5, k, 2))).float()
    joints = torch.cat([joints, joints[:1] + 0.7])  # a near-duplicate person competes for peaks
    got = snap_joints(joints, heat[:k], tags, COCO.sigmas)
    ref = naive_snap(joints, heat[:k], tags, COCO.sigmas)
    assert torch.allclose(got, ref)
    assert (got != joints).any(-1).float().mean() > 0.3  # many joints move


# ---------------------------------------------------------------- speed


@pytest.mark.parametrize("decoder", list(DECODERS))
def test_decode_speed_30_people(decoder):
    rng = np.random.default_rng(7)
    people = make_people(rng, COCO, 30)
    heat, off, tags = gt_maps(people)
    for _ in range(2):
        decode_maps(heat, off, tags, COCO, decoder)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: one thread is representative and immune to busy cores
    try:
        times = []
        for _ in range(10):
            start = time.perf_counter()
            poses, _ = decode_maps(heat, off, tags, COCO, decoder)
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    per_image = min(times)  # the least disturbed run
    assert len(poses) == 30
    assert per_image < 0.1  # targets: a few ms (AE ~10 ms); generous bound for noisy machines


@pytest.mark.parametrize("kernel", [1, 3, 5, 7])
def test_max_filter_equals_max_pool(kernel):
    x = torch.rand(3, 13, 17, generator=torch.Generator().manual_seed(kernel))
    ref = torch.nn.functional.max_pool2d(x[None], kernel, stride=1, padding=kernel // 2)[0]
    assert torch.equal(max_filter(x, kernel), ref)
