"""Tests of the synthetic crowd generator (grmpose.data.synthetic*)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from grmpose.data import synthetic, synthetic_body, synthetic_render
from grmpose.data.synthetic import (
    crowd_index,
    generate,
    generate_dataset,
    mask_to_rle,
    synth_main,
)
from grmpose.data.synthetic_body import forward_kinematics, sample_body, sample_pose
from grmpose.data.synthetic_render import pose_figure, sample_appearance
from grmpose.spec import COCO, CROWDPOSE, KeypointSpec

SIZE = (128, 96)  # non-square on purpose: catches x/y swaps


def folder_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module", params=[COCO, CROWDPOSE], ids=lambda s: s.name)
def dataset(request, tmp_path_factory) -> tuple[KeypointSpec, Path]:
    spec = request.param
    out = tmp_path_factory.mktemp(f"synth_{spec.name}")
    generate(out, spec, train_images=8, val_images=3, seed=5, image_size=SIZE, max_people=6)
    return spec, out


def load(out: Path, split: str = "train") -> dict:
    return json.loads((out / f"{split}.json").read_text())


def test_same_seed_same_bytes_and_image_independence(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate(a, COCO, 4, 2, seed=11, image_size=SIZE, max_people=5)
    generate(b, COCO, 4, 2, seed=11, image_size=SIZE, max_people=5)
    assert folder_hashes(a) == folder_hashes(b)
    # image i depends on (seed, i) only, not on how many images are generated
    generate_dataset(c, COCO, 2, seed=11, image_size=SIZE, max_people=5)
    assert (c / "train" / "000001.jpg").read_bytes() == (a / "train" / "000001.jpg").read_bytes()


def test_worker_processes_write_the_same_dataset(tmp_path, monkeypatch):
    # several chunks per process, a last chunk shorter than the others, and CrowdPose's crowdIndex
    monkeypatch.setattr(synthetic, "_CHUNK", 2)
    for spec in (COCO, CROWDPOSE):
        one, two = tmp_path / f"{spec.name}_1", tmp_path / f"{spec.name}_2"
        generate(one, spec, 7, 3, seed=4, image_size=SIZE, max_people=4, workers=1)
        generate(two, spec, 7, 3, seed=4, image_size=SIZE, max_people=4, workers=2)
        assert folder_hashes(one) == folder_hashes(two)
        ids = [a["id"] for a in load(two)["annotations"]]
        assert ids == list(range(1, len(ids) + 1))
    # refused before anything is written or removed
    with pytest.raises(ValueError, match="workers"):
        generate_dataset(one, COCO, 2, seed=0, image_size=SIZE, workers=0)
    assert folder_hashes(one) == folder_hashes(two)


def test_default_workers_start_processes_only_for_larger_sets(monkeypatch):
    monkeypatch.setattr(synthetic.os, "cpu_count", lambda: 2)
    assert [synthetic.default_generate_workers(n) for n in (0, 50, 199, 200, 2000)] == [1, 1, 1, 2, 2]


def test_different_seeds_and_splits_differ(tmp_path):
    generate(tmp_path / "a", COCO, 2, 2, seed=1, image_size=SIZE)
    generate(tmp_path / "b", COCO, 2, 2, seed=2, image_size=SIZE)
    a, b = folder_hashes(tmp_path / "a"), folder_hashes(tmp_path / "b")
    assert a["train/000000.jpg"] != b["train/000000.jpg"]
    assert a["train.json"] != b["train.json"]
    assert a["train/000000.jpg"] != a["val/000000.jpg"]  # val uses a derived seed


def test_annotations_are_valid(dataset):
    spec, out = dataset
    data = load(out)
    k = spec.num_keypoints
    width, height = SIZE
    per_image: dict[int, int] = {}
    for ann in data["annotations"]:
        kp = np.array(ann["keypoints"], float).reshape(-1, 3)
        assert len(ann["keypoints"]) == 3 * k
        assert set(np.unique(kp[:, 2])) <= {0.0, 1.0, 2.0}
        assert ann["num_keypoints"] == int((kp[:, 2] > 0).sum()) > 0
        assert np.all(kp[kp[:, 2] == 0, :2] == 0)
        lab = kp[kp[:, 2] > 0]
        assert np.all(
            (lab[:, 0] >= 0) & (lab[:, 0] <= width - 1) & (lab[:, 1] >= 0) & (lab[:, 1] <= height - 1)
        )
        assert np.allclose(kp[:, :2], np.round(kp[:, :2], 2))
        x, y, w, h = ann["bbox"]
        assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= width and y + h <= height
        assert 0 < ann["area"] <= w * h
        assert ann["iscrowd"] == 0 and ann["category_id"] == 1
        per_image[ann["image_id"]] = per_image.get(ann["image_id"], 0) + 1
    assert set(per_image) == {im["id"] for im in data["images"]}
    assert all(1 <= n <= 6 for n in per_image.values())
    cat = data["categories"][0]
    assert cat["keypoints"] == list(spec.keypoints)
    assert cat["skeleton"] == [[a + 1, b + 1] for a, b in spec.skeleton]
    for im in data["images"]:
        assert (im["width"], im["height"]) == SIZE
        assert (out / "train" / im["file_name"]).is_file()
        if spec.crowd_eval:
            assert 0.0 <= im["crowdIndex"] <= 1.0
        else:
            assert "crowdIndex" not in im


def test_visibility_follows_drawing_order(dataset):
    """v = 1 exactly where a later (front) person's silhouette covers the keypoint's pixel, and
    labelled keypoints lie on the person's own silhouette. Masks are decoded by pycocotools."""
    from pycocotools import mask as mask_utils

    spec, out = dataset
    data = load(out)
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:  # annotations are in drawing order, back to front
        by_image.setdefault(ann["image_id"], []).append(ann)
    counts = {1: 0, 2: 0}
    for anns in by_image.values():
        masks = [
            mask_utils.decode(mask_utils.frPyObjects(a["segmentation"], *a["segmentation"]["size"]))
            for a in anns
        ]
        for i, ann in enumerate(anns):
            assert masks[i].sum() == ann["area"]
            kp = np.array(ann["keypoints"], float).reshape(-1, 3)
            for x, y, v in kp[kp[:, 2] > 0]:
                col, row = int(round(x)), int(round(y))
                covered = any(m[row, col] for m in masks[i + 1 :])
                assert v == (1 if covered else 2)
                counts[int(v)] += 1
                own = masks[i][max(0, row - 1) : row + 2, max(0, col - 1) : col + 2]
                assert own.any(), "keypoint off its own body"
    assert counts[1] > 0 and counts[2] > 0


def test_pycocotools_reads_and_ground_truth_scores_ap_one(dataset):
    from pycocotools.coco import COCO as CocoApi
    from pycocotools.cocoeval import COCOeval

    spec, out = dataset
    gt = CocoApi(str(out / "val.json"))
    assert gt.getCatIds() == [1]
    assert len(gt.getImgIds()) == 3
    results = [
        {"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
        for a in gt.loadAnns(gt.getAnnIds())
    ]
    dt = gt.loadRes(results)
    ev = COCOeval(gt, dt, "keypoints")
    ev.params.kpt_oks_sigmas = np.array(spec.sigmas)
    ev.params.areaRng = [[0, 1e10]]
    ev.params.areaRngLbl = ["all"]
    ev.evaluate()
    ev.accumulate()
    precision = ev.eval["precision"]
    assert np.all(precision[precision > -1] == 1.0)


def test_dataset_yaml_and_merge(tmp_path):
    generate_dataset(tmp_path, CROWDPOSE, 1, seed=0, image_size=SIZE, split="train")
    generate_dataset(tmp_path, CROWDPOSE, 1, seed=1, image_size=SIZE, split="test")
    desc = yaml.safe_load((tmp_path / "dataset.yaml").read_text())
    assert desc == {
        "spec": "crowdpose",
        "train": {"annotations": "train.json", "images": "train"},
        "test": {"annotations": "test.json", "images": "test"},
    }
    with pytest.raises(ValueError, match="describes keypoint spec"):
        generate_dataset(tmp_path, COCO, 1, seed=0, image_size=SIZE, split="val")


def test_custom_spec_by_names_is_written_inline(tmp_path):
    names = ("neck", "left_wrist", "right_wrist", "left_ankle", "right_ankle")
    spec = KeypointSpec(
        name="mini",
        keypoints=names,
        flip_pairs=((1, 2), (3, 4)),
        skeleton=((0, 1), (0, 2)),
        sigmas=(0.08,) * len(names),
    )
    generate_dataset(tmp_path, spec, 2, seed=0, image_size=SIZE)
    desc = yaml.safe_load((tmp_path / "dataset.yaml").read_text())
    assert KeypointSpec.from_dict(desc["spec"]) == spec
    ann = load(tmp_path)["annotations"][0]
    assert len(ann["keypoints"]) == 3 * len(names)


def test_unknown_keypoint_name_is_rejected(tmp_path):
    spec = KeypointSpec(
        name="odd", keypoints=("nose", "tail_tip"), flip_pairs=(), skeleton=(), sigmas=(0.1, 0.1)
    )
    with pytest.raises(ValueError, match="tail_tip"):
        generate_dataset(tmp_path, spec, 1, seed=0)


def test_synth_main_and_progress(tmp_path):
    seen = []

    def progress(it):
        for i in it:
            seen.append(i)
            yield i

    path = synth_main(str(tmp_path), "coco", images=3, seed=0, image_size=64, progress=progress)
    assert path == tmp_path / "dataset.yaml"
    assert len(load(tmp_path, "val")["images"]) == 1  # default: images // 10, at least 1
    assert seen == [0, 1, 2, 0]


def test_synth_cli_makes_the_demo_level_at_any_image_size(tmp_path, capsys):
    """``grmpose synth --image-size W H --height-range LO HI``: images of W x H pixels whose people
    stand LO-HI of the image height (their labelled joints span at most HI of it, allowing for the
    ankles below the figure's height line); a bad range or size is refused in one line, nothing
    written."""
    from grmpose.cli import main

    out = tmp_path / "demo_level"
    rc = main(["synth", str(out), "--images", "6", "--val-images", "2", "--image-size", "160", "96",
               "--max-people", "3", "--height-range", "0.5", "0.6", "--seed", "4", "--quiet"])  # fmt: skip
    assert rc == 0
    for split, count in (("train", 6), ("val", 2)):
        data = load(out, split)
        assert data["info"]["height_range"] == [0.5, 0.6]
        assert len(data["images"]) == count
        assert all((im["width"], im["height"]) == (160, 96) for im in data["images"])
        anns = [a for a in data["annotations"] if a["num_keypoints"] >= 12]
        assert anns
        for a in anns:
            k = np.asarray(a["keypoints"], dtype=float).reshape(-1, 3)
            ys = k[k[:, 2] > 0, 1]
            assert ys.max() - ys.min() <= 0.6 * 96 * 1.05, a
    capsys.readouterr()
    for bad in (["--height-range", "0.9", "0.2"], ["--height-range", "0", "0.5"], ["--image-size", "16"],
                ["--image-size", "64", "64", "64"]):  # fmt: skip
        target = tmp_path / "bad"
        assert main(["synth", str(target), "--images", "2", "--quiet", *bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("grmpose: error:"), (bad, err)
        assert not target.exists(), bad


def test_limb_lengths_are_plausible_and_projection_never_lengthens():
    rng = np.random.default_rng(0)
    limbs = [("shoulder", "elbow"), ("elbow", "wrist"), ("hip", "knee"), ("knee", "ankle")]
    for _ in range(200):
        body, pose = sample_body(rng), sample_pose(rng)
        p3 = forward_kinematics(body, pose)
        fig = pose_figure(body, pose, sample_appearance(rng), 100.0, 0.2, np.zeros(2))
        for a, b in limbs:
            left = np.linalg.norm(p3[f"left_{a}"] - p3[f"left_{b}"])
            right = np.linalg.norm(p3[f"right_{a}"] - p3[f"right_{b}"])
            assert 0.1 < left < 0.32 and 0.8 < left / right < 1.25
            for side, length in (("left", left), ("right", right)):
                length_2d = np.linalg.norm(fig.points[f"{side}_{a}"] - fig.points[f"{side}_{b}"])
                assert length_2d <= 100.0 * length + 1e-6
        shoulders = np.linalg.norm(p3["left_shoulder"] - p3["right_shoulder"])
        assert 0.15 < shoulders < 0.3
        # head above the hips for every sampled pose (nobody stands on their head)
        assert p3["head"][1] > p3["left_hip"][1]


def test_facing_away_swaps_left_and_right_in_the_image():
    rng = np.random.default_rng(1)
    body, look = sample_body(rng), sample_appearance(rng)
    pose = sample_pose(rng, "stand")
    front = pose_figure(body, _with_yaw(pose, 0.0), look, 100.0, 0.0, np.zeros(2))
    back = pose_figure(body, _with_yaw(pose, np.pi), look, 100.0, 0.0, np.zeros(2))
    assert front.points["left_shoulder"][0] > front.points["right_shoulder"][0]
    assert back.points["left_shoulder"][0] < back.points["right_shoulder"][0]


def test_both_sides_are_drawn_alike_so_a_mirrored_scene_is_as_likely():
    """Left and right limbs share their colours (no side tint a mirror would move to the wrong side),
    and the watch, when there is one, is on either wrist about equally often and drawn on that one."""
    from dataclasses import replace

    rng = np.random.default_rng(3)
    for _ in range(20):
        body, pose, look = sample_body(rng), sample_pose(rng), sample_appearance(rng)
        fig = pose_figure(body, pose, replace(look, has_watch=False), 100.0, 0.0, np.zeros(2))
        colours = {shape[2] for _, shapes in synthetic_render.figure_parts(fig) for shape in shapes}
        nose = tuple(int(c) for c in np.clip(np.rint(np.array(look.skin) * 0.8), 0, 255))
        assert colours <= {look.skin, look.hair, look.shirt, look.trousers, look.shoes, (30, 25, 25), nose}
    sides = [sample_appearance(rng).watch_side for _ in range(400)]
    assert set(sides) == {"left", "right"} and 160 <= sides.count("left") <= 240
    for side in ("left", "right"):
        look = replace(sample_appearance(rng), has_watch=True, watch=(1, 2, 3), watch_side=side)
        fig = pose_figure(sample_body(rng), sample_pose(rng, "arms_up"), look, 100.0, 0.0, np.zeros(2))
        bands = [shape[1] for _, shapes in synthetic_render.figure_parts(fig) for shape in shapes if shape[2] == (1, 2, 3)]
        assert len(bands) == 1
        middle = (bands[0][0] + bands[0][1]) / 2
        near = {s: np.linalg.norm(middle - fig.points[f"{s}_wrist"]) for s in ("left", "right")}
        assert near[side] < near["right" if side == "left" else "left"]


def _with_yaw(pose: synthetic_body.Pose, yaw: float) -> synthetic_body.Pose:
    from dataclasses import replace

    return replace(pose, yaw=yaw)


def test_visibility_flags_two_overlapping_people():
    width, height = 10, 8
    keypoints = np.array([[[2.0, 2.0], [6.0, 3.0], [12.0, 3.0]], [[6.0, 3.0], [8.0, 7.0], [1.0, -1.0]]])
    back, front = np.zeros((height, width), bool), np.zeros((height, width), bool)
    front[2:5, 5:8] = True
    flags = synthetic_render.visibility_flags(keypoints, [back, front], width, height)
    assert flags[0, :, 2].tolist() == [2, 1, 0]  # the second joint is behind the front person
    assert flags[1, :, 2].tolist() == [2, 2, 0]  # the front person's joints are never occluded
    assert flags[0, 2].tolist() == [0, 0, 0] and flags[1, 2].tolist() == [0, 0, 0]


def test_crowd_index_by_hand():
    kp = np.zeros((3, 4, 3))
    kp[..., 2] = 2
    kp[0, :, :2] = [[1, 1], [2, 2], [3, 3], [4, 4]]  # box 0 covers 0..5
    kp[1, :, :2] = [[4, 4], [5, 5], [8, 8], [9, 9]]  # two joints inside box 0
    kp[2, :, :2] = [[20, 20], [21, 21], [22, 22], [23, 23]]
    kp[2, 3, 2] = 0
    boxes = np.array([[0, 0, 5, 5], [4, 4, 5, 5], [20, 20, 3, 3]], float)
    # person 0: 2 of others' joints / 4; person 1: 1 (of person 0) / 4; person 2: 0 / 3
    assert crowd_index(kp, boxes) == pytest.approx((0.5 + 0.25 + 0.0) / 3)
    assert crowd_index(kp[:0], boxes[:0]) == 0.0
    many = np.repeat(kp[:1], 5, axis=0)  # five identical people: raw index 4, clipped
    assert crowd_index(many, np.repeat(boxes[:1], 5, axis=0)) == 1.0


def test_rle_round_trip_with_pycocotools():
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    for first in (False, True):
        m = rng.random((7, 9)) < 0.4
        m[0, 0] = first
        rle = mask_to_rle(m)
        decoded = mask_utils.decode(mask_utils.frPyObjects(rle, 7, 9))
        assert np.array_equal(decoded.astype(bool), m)


def test_no_dataset_literals_in_library_code():
    root = Path(synthetic_render.__file__).parent
    for name in ("synthetic.py", "synthetic_body.py", "synthetic_render.py"):
        text = (root / name).read_text()
        assert not re.search(r"(?<![\w.])(17|14)(?![\w.])", text), name
        assert not re.search(r"[\"'](coco|crowdpose)[\"']", text, re.IGNORECASE), name


def test_height_range_bounds_every_person_and_ignores_the_count():
    """``height_range=(lo, hi)``: standing heights in [lo H, hi H] for any count (the demo level);
    without it the crowd level draws smaller people when there are many."""
    from grmpose.data.synthetic_render import sample_figures

    heights, crowd = [], []
    for i in range(40):
        rng = np.random.default_rng([5, i])
        count = int(rng.integers(1, 6))
        heights += [f.height_px for f in sample_figures(rng, 320, 200, count, 5, (0.25, 0.9))]
        crowd += [f.height_px for f in sample_figures(np.random.default_rng([6, i]), 320, 200, 15, 5)]
    heights = np.array(heights)
    assert heights.min() >= 0.25 * 200 - 1e-6 and heights.max() <= 0.9 * 200 + 1e-6
    assert heights.max() > 0.7 * 200  # the range is used, not just its bottom
    assert max(crowd) <= 0.9 * 200 + 1e-6 and np.median(crowd) < np.median(heights)
    with pytest.raises(ValueError, match="height_range"):
        sample_figures(np.random.default_rng(0), 64, 64, 1, 5, (0.5, 0.2))
