"""Pictures: limb colours from the spec, skeleton drawing at the joints, map panels aligned with the image."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch
from PIL import Image

from grmpose.api import Pose
from grmpose.spec import COCO, CROWDPOSE, KeypointSpec
from grmpose.visualize import (
    draw_poses,
    joint_colors,
    limb_colors,
    render_maps,
    save_image,
    side_by_side,
)


def hue(color: tuple[int, int, int]) -> float:
    return colorsys.rgb_to_hsv(*(c / 255 for c in color))[0]


@pytest.mark.parametrize("spec", [COCO, CROWDPOSE])
def test_limb_colours_are_distinct_and_follow_body_sides(spec):
    colours = limb_colors(spec)
    assert len(colours) == len(spec.skeleton) == len(set(colours))
    for (a, b), col in zip(spec.skeleton, colours):
        na, nb = spec.keypoints[a], spec.keypoints[b]
        if na.startswith("left") and nb.startswith("left"):
            assert 0.5 <= hue(col) <= 0.75, (na, nb)  # blues
        elif na.startswith("right") and nb.startswith("right"):
            assert hue(col) <= 0.13, (na, nb)  # reds / oranges
        else:
            assert 0.24 <= hue(col) <= 0.41, (na, nb)  # greens
    assert len(joint_colors(spec)) == spec.num_keypoints


def test_sides_from_flip_pairs_when_names_say_nothing():
    spec = KeypointSpec(
        name="abc",
        keypoints=("a", "b", "c"),
        flip_pairs=((0, 1),),
        skeleton=((0, 2), (1, 2), (0, 1)),
        sigmas=(0.1, 0.1, 0.1),
    )
    cols = joint_colors(spec)
    assert 0.5 <= hue(cols[0]) <= 0.75 and hue(cols[1]) <= 0.13 and 0.24 <= hue(cols[2]) <= 0.41
    assert len(set(limb_colors(spec))) == 3


def synthetic_pose(k: int, score: float = 0.9) -> np.ndarray:
    rng = np.random.default_rng(0)
    kps = np.zeros((k, 3))
    kps[:, 0] = rng.uniform(20, 180, k)
    kps[:, 1] = rng.uniform(20, 130, k)
    kps[:, 2] = score
    return kps


def test_draw_poses_changes_pixels_at_the_joints():
    image = np.full((150, 200, 3), 128, np.uint8)
    kps = synthetic_pose(COCO.num_keypoints)
    kps[3, 2] = 0.01  # below the threshold: not drawn
    kps[3, :2] = (5, 5)  # a corner no limb of the others reaches
    drawn = draw_poses(image, [Pose(kps, 0.9)], COCO, score_threshold=0.1, show_scores=False)
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    assert (image == 128).all(), "input must not be modified"
    for j, (x, y, s) in enumerate(kps):
        changed = (drawn[round(y), round(x)] != 128).any()
        assert changed == (s >= 0.1), j
    # the dot has the joint's colour
    x, y = kps[0, :2].round().astype(int)
    assert tuple(drawn[y, x]) == joint_colors(COCO)[0]


def test_draw_poses_accepts_arrays_and_skips_weak_people():
    image = np.zeros((150, 200, 3), np.uint8)
    assert (draw_poses(image, [], COCO) == image).all()
    weak = synthetic_pose(COCO.num_keypoints, score=0.05)
    assert (draw_poses(image, weak[None], COCO, score_threshold=0.1) == image).all()
    strong = synthetic_pose(COCO.num_keypoints, score=0.5)
    assert (draw_poses(image, strong[None], COCO) != image).any()
    with pytest.raises(ValueError, match="RGB uint8"):
        draw_poses(image.astype(np.float32), [], COCO)


def test_render_maps_panels_are_aligned_with_the_image():
    """A single heat peak at map cell (u, v) must light up the image pixel that cell came from."""
    k = COCO.num_keypoints
    h, w = 90, 120  # image
    s = 2.0  # image -> input scale, as prepare_image would use for a larger short side
    affine = np.array([[s, 0, 0.5 * s - 0.5], [0, s, 0.5 * s - 0.5]])
    mh, mw = 48, 64  # padded input 192×256 / 4
    heat = torch.zeros(k + 1, mh, mw)
    yy, xx = torch.meshgrid(torch.arange(mh), torch.arange(mw), indexing="ij")
    u, v = 40, 20
    heat[5] = torch.exp(-((xx - u) ** 2 + (yy - v) ** 2) / 2.0)
    heat[k] = torch.exp(-((xx - 10) ** 2 + (yy - 30) ** 2) / 8.0)
    offsets = torch.zeros(2 * k, mh, mw)
    offsets[0::2] = -3.0  # joints 3 map cells to the right of each centre
    image = np.zeros((h, w, 3), np.uint8)
    panels = render_maps(image, heat, offsets, COCO, image_to_input=affine)
    assert panels.shape == (h, 3 * w, 3) and panels.dtype == np.uint8

    def expected(u_: float, v_: float) -> np.ndarray:  # map cell -> image pixel
        return np.array([(4 * u_ - affine[0, 2]) / s, (4 * v_ - affine[1, 2]) / s])

    joint_panel = panels[20:, :w].astype(int).sum(2)  # skip the title row
    y, x = np.unravel_index(joint_panel.argmax(), joint_panel.shape)
    np.testing.assert_allclose([x, y + 20], expected(u, v), atol=1.0)
    # offsets panel: the line from the centre ends at the regressed joint, 3 cells to the right
    offset_panel = panels[:, 2 * w :]
    cx, cy = expected(10, 30)
    jx, jy = expected(13, 30)
    assert (offset_panel[round(cy), round(cx)] == 255).all()  # white centre marker
    assert offset_panel[round(jy), round(jx)].any()
    assert not offset_panel[round(cy) - 8, round(cx)].any()  # away from the drawing: still black


def test_render_maps_shape_checks():
    with pytest.raises(ValueError, match="heatmaps"):
        render_maps(np.zeros((32, 32, 3), np.uint8), torch.zeros(5, 8, 8), torch.zeros(4, 8, 8), COCO)


def test_save_image_round_trip_and_side_by_side(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    path = save_image(tmp_path / "sub" / "x.png", rgb)
    assert (np.asarray(Image.open(path)) == rgb).all()
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.png"]
    with pytest.raises(ValueError, match="suffix"):
        save_image(tmp_path / "x.unknown", rgb)
    both = side_by_side(rgb, np.zeros((10, 10, 3), np.uint8))
    assert both.shape == (20, 50, 3)
