"""Flip test and multi-scale testing with a stub network that reads keypoints off the image.

The stub is a fixed function of its input: it finds coloured blobs (one per joint), reads the
person and the joint type from the blob colour, tells left from right within a flip pair by
position (the left joint of a person facing the camera is the one further right in the image, so
a mirror swaps them exactly as it swaps a real person's), and renders exact ground-truth maps
(``build_targets``) for what it found. So the whole chain -- resize, padding, flip alignment,
per-scale affines, fusion and mapping back to the image -- is tested against exact answers: joint
errors of at most ``EXACT_PX`` where no resampling of the image blurs a blob.

Multi-scale scores are checked on hand-built per-scale maps against DEKR's rule written out
(``test_multiscale_scores_follow_dekr``), and test-time padding against training's black fill.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from grmpose.data.dataset import denormalize_image, normalize_image
from grmpose.data.transforms import apply_affine_image
from grmpose.inference import flip_input, predict_image, prepare_image
from grmpose.oks import oks
from grmpose.spec import COCO, CROWDPOSE
from grmpose.targets import build_targets
from grmpose.tta import ScaleMaps, decode_scales, fuse_scales, predict_batch, predict_poses, resample_maps
from tests.test_grouping import gt_areas, tag_maps

MAX_PEOPLE_CODE = 8  # person codes 1..8 in the green channel
BLOB_RADIUS = 2
EXACT_PX = 1e-3  # joint error bound where the answer is exact (float32 rounding only)
QUARTER_CELL_PX = 0.25 * 4 * math.sqrt(2)  # AE's quarter-cell peak refinement at stride 4


def joint_types(spec):
    """Joint -> type id: both joints of a flip pair share a type. Returns (types K, count T)."""
    types = -np.ones(spec.num_keypoints, dtype=np.int64)
    t = 0
    for a, b in spec.flip_pairs:
        types[[a, b]] = t
        t += 1
    for j in range(spec.num_keypoints):
        if types[j] < 0:
            types[j] = t
            t += 1
    return types, t


def make_scene(rng, spec, n, height=192, width=288, spacing=12):
    """n people with integer joint positions at least ``spacing`` px apart, each pair (a, b) with
    joint a (the left one) further right: N×K×3 (x, y, 2) image pixels."""
    k = spec.num_keypoints
    cols = max(1, math.ceil(math.sqrt(n * width / height)))
    rows = max(1, math.ceil(n / cols))
    cw, ch = width // cols, height // rows
    people = np.zeros((n, k, 3))
    for p in range(n):
        r, c = divmod(p, cols)
        gx = np.arange(c * cw + spacing, (c + 1) * cw - spacing + 1, spacing)
        gy = np.arange(r * ch + spacing, (r + 1) * ch - spacing + 1, spacing)
        grid = np.stack(np.meshgrid(gx, gy), -1).reshape(-1, 2)
        assert len(grid) >= k, "scene too crowded for the lattice"
        while True:
            xy = grid[rng.choice(len(grid), k, replace=False)]
            if all(xy[a, 0] != xy[b, 0] for a, b in spec.flip_pairs):
                break
        for a, b in spec.flip_pairs:
            if xy[a, 0] < xy[b, 0]:
                xy[[a, b]] = xy[[b, a]]
        people[p, :, :2] = xy
        people[p, :, 2] = 2
    return people


def render(people, spec, height=192, width=288):
    """Black RGB image with a disc per joint: blue 255, red = joint type, green = person code."""
    types, count = joint_types(spec)
    img = np.zeros((height, width, 3), np.uint8)
    yy, xx = np.mgrid[:height, :width]
    for p, person in enumerate(people):
        for j, (x, y, _) in enumerate(person):
            disc = (xx - x) ** 2 + (yy - y) ** 2 <= BLOB_RADIUS**2
            img[disc] = (
                round(255 * (types[j] + 1) / (count + 1)),
                round(255 * (p + 1) / (MAX_PEOPLE_CODE + 1)),
                255,
            )
    return img


def read_blobs(img, spec):
    """Inverse of ``render`` on a (resized, shifted, mirrored) image: N×K×3 joints, input pixels."""
    types, count = joint_types(spec)
    k = spec.num_keypoints
    rgb = img.astype(np.float64)
    labels, num = ndimage.label(rgb[..., 2] > 30)
    if num == 0:
        return np.zeros((0, k, 3))
    index = np.arange(1, num + 1)
    b = ndimage.sum_labels(rgb[..., 2], labels, index)
    code_r = ndimage.sum_labels(rgb[..., 0], labels, index) / b
    code_g = ndimage.sum_labels(rgb[..., 1], labels, index) / b
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    cx = ndimage.sum_labels(xx * rgb[..., 2], labels, index) / b
    cy = ndimage.sum_labels(yy * rgb[..., 2], labels, index) / b
    blob = (code_r < 0.97) & (code_g < 0.97)  # guards against grey: red and green above blue
    t = np.round(code_r * (count + 1)).astype(int) - 1
    person = np.round(code_g * (MAX_PEOPLE_CODE + 1)).astype(int) - 1
    n = person[blob].max() + 1 if blob.any() else 0
    out = np.zeros((n, k, 3))
    for p in range(n):
        for j in range(k):
            if j in [b_ for _, b_ in spec.flip_pairs]:
                continue  # filled with its partner
            pair = [pr for pr in spec.flip_pairs if pr[0] == j]
            found = np.nonzero(blob & (person == p) & (t == types[j]))[0]
            if pair:
                a, bb = pair[0]
                right_first = found[np.argsort(-cx[found])]  # the left joint is further right
                for joint, f in zip((a, bb), right_first):
                    out[p, joint] = (cx[f], cy[f], 2)
            elif len(found):
                out[p, j] = (cx[found[0]], cy[found[0]], 2)
    return out


def stub_forward(spec, stride=4):
    """forward(batch) -> exact (heatmaps, offsets, tags) for the joints ``read_blobs`` finds."""

    def forward(batch: torch.Tensor):
        h, w = batch.shape[2] // stride, batch.shape[3] // stride
        outs = []
        for item in batch:
            people = read_blobs(denormalize_image(item), spec)
            t = build_targets(people, (h, w), stride=stride)
            tags = tag_maps(t["tag_index"].numpy(), 2.0 * np.arange(1, len(people) + 1), (h, w))
            outs.append((t["heatmaps"], t["offsets"], tags))
        return tuple(torch.stack(x) for x in zip(*outs))

    return forward


def match_error(pred, people):
    """Max joint distance (px) between each person and its best-OKS prediction, and min OKS."""
    sim = oks(pred, people, gt_areas(people), np.full(people.shape[1], 0.05))
    best = sim.argmax(0)
    assert sorted(best.tolist()) == list(range(len(people)))
    return np.linalg.norm(pred[best, :, :2] - people[..., :2], axis=-1).max()


SPECS = [COCO, CROWDPOSE]


def test_stub_reads_its_own_scene():
    rng = np.random.default_rng(0)
    people = make_scene(rng, COCO, 5)
    found = read_blobs(render(people, COCO), COCO)
    np.testing.assert_allclose(found, people)


# ---------------------------------------------------------------- flip


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
@pytest.mark.parametrize("decoder", ["regression", "hybrid", "ae"])
def test_flip_test_mirror_symmetry(spec, decoder):
    """Mirrored image -> mirrored poses with left/right swapped, and both equal the truth."""
    rng = np.random.default_rng(1)
    people = make_scene(rng, spec, 3)
    img = render(people, spec)
    forward = stub_forward(spec)
    w = img.shape[1]
    poses, _ = predict_poses(forward, img, spec, 192, flip=True, decoder=decoder)
    mirrored, _ = predict_poses(
        forward, np.ascontiguousarray(img[:, ::-1]), spec, 192, flip=True, decoder=decoder
    )
    expect = people.copy()
    expect[..., 0] = w - 1 - expect[..., 0]
    expect = expect[:, spec.flip_index]
    assert len(poses) == len(mirrored) == len(people)
    assert match_error(poses, people) <= EXACT_PX  # 192 short side: no resize, joints on the grid
    assert match_error(mirrored, expect) <= EXACT_PX


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_flip_averaging_is_aligned(spec):
    """Resized input, flip on: averaged maps still decode exactly. At 2× (192 -> 384) a blob's
    centroid survives the bilinear resize exactly; at 5/3× (320) resampling moves it by < 0.02 px
    (the stub's reading, not the pipeline), so that case gets a bound a one-pixel shift breaks."""
    rng = np.random.default_rng(2)
    people = make_scene(rng, spec, 3)
    img = render(people, spec)
    poses, scores = predict_poses(stub_forward(spec), img, spec, 384, flip=True)
    assert len(poses) == 3 and match_error(poses, people) <= EXACT_PX
    poses, scores = predict_poses(stub_forward(spec), img, spec, 320, flip=True)
    assert len(poses) == 3 and match_error(poses, people) <= 0.05


# ---------------------------------------------------------------- multi-scale


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
@pytest.mark.parametrize("decoder", ["regression", "hybrid", "ae"])
def test_multiscale_recovers_poses(spec, decoder):
    rng = np.random.default_rng(3)
    people = make_scene(rng, spec, 3)
    img = render(people, spec)
    poses, scores = predict_poses(
        stub_forward(spec),
        img,
        spec,
        192,
        flip=decoder == "regression",
        scales=(0.5, 1.0, 2.0),
        decoder=decoder,
    )
    assert len(poses) == len(people)
    # regression / hybrid: the scale-1 candidate wins NMS and is exact; AE: quarter-cell peaks
    assert match_error(poses, people) <= (EXACT_PX if decoder != "ae" else QUARTER_CELL_PX + 1e-4)
    assert (np.diff(scores) <= 0).all()


def dekr_multiscale_centre_scores(
    per_scale: dict[float, list[float]], factor: float
) -> dict[float, list[float]]:
    """DEKR lib/core/nms.py pose_nms, restated: every scale other than 1 has its scores divided by
    its own maximum and multiplied by the maximum of scale 1 (1 if scale 1 found nobody) and by
    the factor (cfg.TEST.DECREASE)."""
    ref = max(per_scale[1.0]) if per_scale[1.0] else 1.0
    out = {}
    for scale, scores in per_scale.items():
        if scale == 1.0 or not scores:
            out[scale] = list(scores)
        else:
            top = max(scores)
            out[scale] = [c / top * ref * factor for c in scores]
    return out


def hand_built_scales(people: np.ndarray, centre: dict[float, list[float]], heat: float, image_hw):
    """Per-scale maps of one image: at scale s, person n has a single centre peak of value
    ``centre[s][n]`` at the cell nearest its joints' mean, exact offsets there, and every keypoint
    heatmap is the constant ``heat``."""
    k = people.shape[1]
    out = []
    for scale, values in centre.items():
        tensor, m = prepare_image(np.zeros((*image_hw, 3), np.uint8), round(image_hw[0] * scale))
        to_map = m / 4
        h, w = tensor.shape[1] // 4, tensor.shape[2] // 4
        heatmaps = torch.zeros(k + 1, h, w)
        heatmaps[:k] = heat
        offsets = torch.zeros(2 * k, h, w)
        for person, value in zip(people, values):
            joints = person[:, :2] @ to_map[:, :2].T + to_map[:, 2]  # K×2 map units
            cx, cy = np.round(joints.mean(0)).astype(int)
            heatmaps[k, cy, cx] = value
            offsets[:, cy, cx] = torch.from_numpy((np.array([cx, cy]) - joints).reshape(-1)).float()
        out.append(ScaleMaps(heatmaps, offsets, torch.zeros(k, h, w), to_map, m, scale))
    return out


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_multiscale_scores_follow_dekr(spec):
    """Two people seen at scales 0.5, 1 and 2 with chosen centre peaks and constant heat 0.5.

    DEKR's rule keeps person A's scale-1 candidate (0.8 beats 0.72 after normalisation) and person
    B's scale-0.5 one (0.19 / 0.2 · 0.8 · factor beats 0.5). A factor of 1 (B: 0.76) or the old
    rule, factor without normalisation (B: 0.5), gives other scores."""
    k = spec.num_keypoints
    rng = np.random.default_rng(9)
    people = np.zeros((2, k, 3))
    people[0, :, :2] = rng.uniform([30, 30], [80, 100], (k, 2))
    people[1, :, :2] = rng.uniform([110, 30], [160, 100], (k, 2))
    centre = {0.5: [0.2, 0.19], 1.0: [0.8, 0.5], 2.0: [0.4, 0.3]}
    heat = 0.5
    poses, scores = decode_scales(hand_built_scales(people, centre, heat, (128, 192)), spec)
    dekr = dekr_multiscale_centre_scores(centre, spec.multiscale_factor)
    best = [max(dekr[s][n] for s in centre) for n in range(2)]
    expect = sorted([b * heat for b in best], reverse=True)
    assert len(poses) == 2
    np.testing.assert_allclose(scores, expect, rtol=1e-6)
    np.testing.assert_allclose(poses[:, :, 2], np.repeat(np.array(expect)[:, None], k, 1), rtol=1e-6)
    order = np.argsort(-np.array(best))
    assert np.abs(poses[:, :, :2] - people[order, :, :2]).max() <= EXACT_PX
    assert best[1] == pytest.approx(0.19 / 0.2 * 0.8 * spec.multiscale_factor)  # the case is the intended one
    assert not np.isclose(best[1], 0.76) and not np.isclose(best[1], 0.5)


def test_multiscale_without_scale_1_candidates_uses_1_as_reference():
    """DEKR: when scale 1 finds nobody its maximum counts as 1; another scale's best person then
    scores exactly the factor (times the heat)."""
    spec = CROWDPOSE
    rng = np.random.default_rng(10)
    people = np.zeros((1, spec.num_keypoints, 3))
    people[0, :, :2] = rng.uniform([40, 30], [140, 100], (spec.num_keypoints, 2))
    maps = hand_built_scales(people, {1.0: [], 2.0: [0.3]}, 0.5, (128, 192))
    poses, scores = decode_scales(maps, spec)
    assert len(poses) == 1 and scores[0] == pytest.approx(spec.multiscale_factor * 0.5, rel=1e-6)


# ---------------------------------------------------------------- equivalences


class TinyNet(nn.Module):
    """A deterministic stride-4 conv net with (K+1, 2K, K) outputs."""

    def __init__(self, k: int):
        super().__init__()
        torch.manual_seed(0)
        self.k = k
        self.conv = nn.Conv2d(3, 4 * k + 1, 3, stride=4, padding=1)

    def forward(self, x):
        y = self.conv(x)
        k = self.k
        return y[:, : k + 1].sigmoid(), 4 * y[:, k + 1 : 3 * k + 1], y[:, 3 * k + 1 :]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_single_scale_equals_predict_image(spec):
    model = TinyNet(spec.num_keypoints).eval()
    img = np.random.default_rng(5).integers(0, 256, (150, 230, 3), dtype=np.uint8)
    ref, ref_scores = predict_image(model, img, spec, 128)
    got, scores = predict_poses(model, img, spec, 128)
    assert len(ref) > 0
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(scores, ref_scores)


def test_predict_batch_equals_per_image():
    spec = CROWDPOSE
    model = TinyNet(spec.num_keypoints).eval()
    rng = np.random.default_rng(6)
    images = [
        rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(150, 230, 3), (90, 70, 3), (150, 230, 3)]
    ]
    calls = []

    def forward(batch):
        calls.append(batch.shape[0])
        return model(batch)

    batched = predict_batch(forward, images, spec, 96, flip=True)
    assert sorted(calls) == [2, 4]  # two same-size images plus their mirrors share one call
    for img, (poses, scores) in zip(images, batched):
        ref, ref_scores = predict_poses(model, img, spec, 96, flip=True)
        np.testing.assert_allclose(poses, ref, atol=1e-4)
        np.testing.assert_allclose(scores, ref_scores, atol=1e-6)


def test_zero_people_and_bad_options():
    spec = COCO
    img = np.zeros((128, 160, 3), np.uint8)
    for decoder in ["regression", "hybrid", "ae"]:
        poses, scores = predict_poses(stub_forward(spec), img, spec, 128, True, (0.5, 1.0), decoder)
        assert poses.shape == (0, spec.num_keypoints, 3) and scores.shape == (0,)
    with pytest.raises(ValueError, match="regression, ae, hybrid"):
        predict_poses(stub_forward(spec), img, spec, 128, decoder="dekr")
    with pytest.raises(TypeError, match="tag_threshold"):
        predict_poses(stub_forward(spec), img, spec, 128, decoder="regression", tag_threshold=2.0)


def test_resample_maps_follows_the_affine():
    """A map resampled to a grid of twice the resolution reproduces a linear ramp exactly."""
    _, m1 = prepare_image(np.zeros((64, 96, 3), np.uint8), 64)
    _, m2 = prepare_image(np.zeros((64, 96, 3), np.uint8), 128)
    h, w = 16, 24
    v, u = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    ramp = torch.stack([u, v])  # map coordinates of the 1× grid
    out = resample_maps(ramp, m1 / 4, m2 / 4, (2 * h, 2 * w))
    # cell (U, V) of the 2× grid is image point ((4U + 0.5) / 2 - 0.5), i.e. 1× map (2U - 0.25) / 4 ... check
    vv, uu = torch.meshgrid(
        torch.arange(2 * h, dtype=torch.float64), torch.arange(2 * w, dtype=torch.float64), indexing="ij"
    )
    img_x = (4 * uu + 0.5) / 2 - 0.5
    img_y = (4 * vv + 0.5) / 2 - 0.5
    exp_u, exp_v = img_x / 4, img_y / 4
    inside = (exp_u >= 0) & (exp_u <= w - 1) & (exp_v >= 0) & (exp_v <= h - 1)
    torch.testing.assert_close(out[0][inside].double(), exp_u[inside], atol=1e-4, rtol=0)
    torch.testing.assert_close(out[1][inside].double(), exp_v[inside], atol=1e-4, rtol=0)


def test_candidates_of_other_scales_map_exactly():
    """Only the 2× input sees people (the others return empty maps): its candidates, moved to the
    common grid and then to the image, land on the truth."""
    rng = np.random.default_rng(8)
    spec = COCO
    people = make_scene(rng, spec, 3)
    img = render(people, spec)
    stub = stub_forward(spec)

    def forward(batch):
        heat, off, tags = stub(batch)
        if batch.shape[-2] != 2 * img.shape[0]:
            heat, off, tags = torch.zeros_like(heat), torch.zeros_like(off), torch.zeros_like(tags)
        return heat, off, tags

    poses, scores = predict_poses(forward, img, spec, 192, flip=True, scales=(0.5, 1.0, 2.0))
    assert len(poses) == 3 and match_error(poses, people) <= EXACT_PX
    # best centre normalised to 1 (scale 1 found nobody) × factor; heat averaged with two empty
    # scales (≤ 1/3)
    assert (scores > 0).all() and (scores <= spec.multiscale_factor / 3 + 1e-6).all()


def test_fuse_scales_aligns_the_grids():
    """Maps holding each cell's own image coordinates fuse into the common grid's coordinates."""
    img = np.zeros((96, 150, 3), np.uint8)
    per_scale = []
    for scale in (0.5, 1.0, 2.0):
        tensor, m = prepare_image(img, round(96 * scale))
        h, w = tensor.shape[1] // 4, tensor.shape[2] // 4
        v, u = torch.meshgrid(
            torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
        )
        a = np.linalg.inv(np.vstack([m / 4, [0, 0, 1]]))  # map -> image
        x = (a[0, 0] * u + a[0, 1] * v + a[0, 2]).float()
        y = (a[1, 0] * u + a[1, 1] * v + a[1, 2]).float()
        heat = torch.stack([x, y, torch.ones_like(x)])
        per_scale.append(ScaleMaps(heat, torch.zeros(2, h, w), heat[:2].clone(), m / 4, m, scale))
    heat, tags, ref = fuse_scales(per_scale)
    assert ref == 1
    expect = per_scale[1].heatmaps
    # cells whose image point every scale covers (the 0.5 grid ends earliest)
    inside = heat[2] > 1 - 1e-6
    assert inside.float().mean() > 0.7
    torch.testing.assert_close(heat[:2][:, inside], expect[:2][:, inside], atol=1e-3, rtol=0)
    torch.testing.assert_close(tags[:, inside], expect[:2][:, inside], atol=1e-3, rtol=0)


# ---------------------------------------------------------------- padding


# ImageNet mean and std, written out: a black pixel normalises to (0 - mean) / std per channel.
BLACK = [(0.0 - 0.485) / 0.229, (0.0 - 0.456) / 0.224, (0.0 - 0.406) / 0.225]


def test_padding_is_black_as_in_training():
    """Test-time padding holds what training puts outside the image: uint8 0, then normalised."""
    img = np.random.default_rng(11).integers(1, 256, (50, 70, 3), dtype=np.uint8)
    tensor, m = prepare_image(img, 64)  # 64 × 90 -> padded to 64 × 96
    assert tuple(tensor.shape) == (3, 64, 96)
    pad = tensor[:, :, 90:]
    for c in range(3):
        assert torch.allclose(pad[c], torch.full_like(pad[c], BLACK[c]), atol=1e-6)
    # training: a crop that reaches past the image is filled with 0 before normalisation
    crop = normalize_image(apply_affine_image(img, np.array([[1.0, 0, 0], [0, 1.0, 0]]), 96))
    torch.testing.assert_close(crop[:, 60, 80], tensor[:, 0, 95])  # rows >= 50, cols >= 70: outside
    # the flip test's shifted-in columns are outside the image too
    flipped = flip_input(tensor[None])[0]
    for c in range(3):
        assert torch.allclose(flipped[c, :, -3:], torch.full((64, 3), BLACK[c]), atol=1e-6)
    torch.testing.assert_close(flipped[:, :, :-3], tensor.flip(-1)[:, :, 3:])
