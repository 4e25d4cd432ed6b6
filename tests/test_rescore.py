"""Rescoring net: features against a naive loop, fitting, file round trip, spec refusal, and
training pairs from a stub network that renders the ground truth."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from grmpose import build_model
from grmpose.checkpoint import CheckpointError, save_weights
from grmpose.config import get_preset
from grmpose.data.coco import load_coco_keypoints, load_image, resolve_dataset
from grmpose.inference import prepare_image
from grmpose.rescore import (
    MIN_SCALE,
    RescoreNet,
    collect_training_pairs,
    fit_rescorer,
    load_rescorer,
    num_features,
    pose_features,
    rescore_fit_main,
    rescore_gain,
    save_rescorer,
)
from grmpose.spec import COCO, CROWDPOSE, KeypointSpec
from grmpose.targets import build_targets
from tests.test_model import randomize_

COCO_DATA = Path(__file__).parent / "data" / "coco"
SIZE = 128  # network input short side in these tests


def random_poses(n: int, spec: KeypointSpec, seed: int = 0) -> np.ndarray:
    """N×K×3 random poses: joints in a 640×480 image, scores in [0, 1]."""
    rng = np.random.default_rng(seed)
    k = spec.num_keypoints
    xy = rng.uniform(0, 1, (n, k, 2)) * rng.uniform(20, 300, (n, 1, 1)) + rng.uniform(0, 300, (n, 1, 2))
    return np.concatenate([xy, rng.uniform(0, 1, (n, k, 1))], axis=2)


def naive_features(poses: np.ndarray, spec: KeypointSpec) -> np.ndarray:
    """Per-pose, per-limb loop: the oracle of ``pose_features``."""
    rows = []
    for pose in poses:
        xs = [float(p[0]) for p in pose]
        ys = [float(p[1]) for p in pose]
        scale = max(math.sqrt((max(xs) - min(xs)) * (max(ys) - min(ys))), MIN_SCALE)
        dx, dy, length = [], [], []
        for a, b in spec.skeleton:
            ux, uy = (xs[b] - xs[a]) / scale, (ys[b] - ys[a]) / scale
            dx.append(ux)
            dy.append(uy)
            length.append(math.hypot(ux, uy))
        rows.append(dx + dy + length + [float(p[2]) for p in pose])
    return np.array(rows)


@pytest.mark.parametrize("spec", [COCO, CROWDPOSE], ids=lambda s: s.name)
def test_pose_features_match_naive_loop(spec: KeypointSpec) -> None:
    poses = random_poses(20, spec)
    poses[3, :, :2] = 50.0  # collapsed pose: scale guarded
    poses[4, :, 1] = 7.0  # flat pose: zero box area
    feats = pose_features(poses, spec)
    assert feats.shape == (20, num_features(spec)) == (20, 3 * len(spec.skeleton) + spec.num_keypoints)
    assert np.isfinite(feats).all()
    np.testing.assert_allclose(feats, naive_features(poses, spec), rtol=1e-5, atol=1e-5)
    assert pose_features(np.zeros((0, spec.num_keypoints, 3)), spec).shape == (0, num_features(spec))


def test_pose_features_scale_and_translation_invariant() -> None:
    poses = random_poses(5, COCO, seed=1)
    moved = poses.copy()
    moved[:, :, :2] = poses[:, :, :2] * 2.5 + 40.0
    np.testing.assert_allclose(pose_features(moved, COCO), pose_features(poses, COCO), atol=1e-5)


def test_pose_features_reject_wrong_keypoint_count() -> None:
    with pytest.raises(ValueError, match="crowdpose"):
        pose_features(random_poses(2, COCO), CROWDPOSE)


def synthetic_pairs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features of random poses and a known target: the mean joint score."""
    poses = random_poses(n, COCO, seed=seed)
    return pose_features(poses, COCO), poses[:, :, 2].mean(1)


@pytest.fixture
def one_thread():
    """Tiny matmuls: one thread is faster and steadier on a busy CPU (results are the same)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_fit_learns_known_function_and_is_deterministic(one_thread) -> None:
    x, y = synthetic_pairs(512, seed=0)
    x_test, y_test = synthetic_pairs(256, seed=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        untrained = RescoreNet(x.shape[1])
    with torch.no_grad():
        mse_before = float(((untrained(torch.from_numpy(x_test)).numpy() - y_test) ** 2).mean())
    state = torch.random.get_rng_state()
    net = fit_rescorer(x, y, epochs=20, lr=3e-3, seed=0, batch_size=64)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    with torch.no_grad():
        pred = net(torch.from_numpy(x_test)).numpy()
    mse_after = float(((pred - y_test) ** 2).mean())
    assert np.corrcoef(pred, y_test)[0, 1] > 0.9
    assert mse_after < 0.2 * mse_before
    assert mse_after < 0.15 * float(y_test.var())  # much better than predicting the mean
    again = fit_rescorer(x, y, epochs=20, lr=3e-3, seed=0, batch_size=64)
    for a, b in zip(net.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_save_load_round_trip_and_spec_refusal(tmp_path: Path) -> None:
    x, y = synthetic_pairs(256, seed=2)
    net = fit_rescorer(x, y, epochs=2, seed=3)
    path = save_rescorer(tmp_path / "rescore.safetensors", net, COCO)
    assert [p.name for p in tmp_path.iterdir()] == ["rescore.safetensors"]  # no temp file left
    rescorer = load_rescorer(path, COCO)
    poses = random_poses(7, COCO, seed=4)
    with torch.no_grad():
        expected = net(torch.from_numpy(pose_features(poses, COCO))).double().numpy()
    scores = rescorer(poses)
    assert scores.shape == (7,)
    np.testing.assert_array_equal(scores, expected)
    assert rescorer(np.zeros((0, COCO.num_keypoints, 3))).shape == (0,)

    with pytest.raises(CheckpointError, match=r"rescore\.safetensors.*'coco'.*'crowdpose'"):
        load_rescorer(path, CROWDPOSE)
    other_skeleton = dataclasses.replace(COCO, skeleton=COCO.skeleton[:-1])
    with pytest.raises(CheckpointError, match="rescore.safetensors"):
        load_rescorer(path, other_skeleton)
    with pytest.raises(CheckpointError, match="not found"):
        load_rescorer(tmp_path / "missing.safetensors", COCO)
    model_file = save_weights(
        tmp_path / "model.safetensors", build_model("tiny", COCO), get_preset("tiny"), COCO
    )
    with pytest.raises(CheckpointError, match="not a grmpose rescoring net"):
        load_rescorer(model_file, COCO)


class RenderedForward:
    """Stub network: for each known input, the GT-rendered heatmaps and offsets; tags are zeros."""

    def __init__(self, images: list[np.ndarray], keypoints: list[np.ndarray], input_size: int) -> None:
        self.inputs: list[torch.Tensor] = []
        self.outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for image, kpts in zip(images, keypoints, strict=True):
            tensor, m = prepare_image(image, input_size)
            moved = kpts.astype(np.float64).copy()
            moved[:, :, :2] = moved[:, :, :2] @ m[:, :2].T + m[:, 2]
            h, w = tensor.shape[1] // 4, tensor.shape[2] // 4
            t = build_targets(moved, (h, w))
            k = kpts.shape[1]
            self.inputs.append(tensor)
            self.outputs.append((t["heatmaps"], t["offsets"], torch.zeros(k, h, w)))

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = []
        for x in batch:
            (i,) = [i for i, t in enumerate(self.inputs) if t.shape == x.shape and torch.equal(t, x)]
            rows.append(self.outputs[i])
        return tuple(torch.stack(parts) for parts in zip(*rows, strict=True))


def test_collect_training_pairs_from_rendered_ground_truth() -> None:
    ann, image_dir, spec = resolve_dataset(COCO_DATA, "train")
    records = [r for r in load_coco_keypoints(ann, image_dir, spec) if r.image_id in (785, 197388)]
    assert sum(r.num_people for r in records) == 6
    images = [load_image(r.path, exif_transpose=False) for r in records]
    forward = RenderedForward(images, [r.keypoints for r in records], SIZE)
    feats, targets = collect_training_pairs(forward, records, spec, SIZE, flip=False)
    assert feats.shape == (len(targets), num_features(spec))
    # every ground-truth person is found again almost exactly (map rounding only)
    assert (targets > 0.9).sum() >= 5
    assert np.sort(targets)[-5:].min() > 0.9
    assert ((targets >= 0) & (targets <= 1)).all()
    one, _ = collect_training_pairs(forward, records, spec, SIZE, flip=False, max_images=1)
    assert 0 < len(one) < len(feats)


def test_fit_main_and_gain_end_to_end(tmp_path: Path) -> None:
    """Tiny random model at a 64-px input on 2 images: the CLI path writes a loadable net."""
    config = dataclasses.replace(get_preset("tiny"), input_size=64)
    ckpt = save_weights(
        tmp_path / "tiny.safetensors", randomize_(build_model(config, COCO), seed=0), config, COCO
    )
    out = tmp_path / "rescore.safetensors"
    info = rescore_fit_main(ckpt, COCO_DATA, out, max_images=2, flip=False, epochs=2, progress=False)
    assert info["images"] == 2 and info["samples"] > 0 and out.is_file()
    assert load_rescorer(out, COCO)(random_poses(3, COCO)).shape == (3,)
    gain = rescore_gain(ckpt, COCO_DATA, out, max_images=2, out=tmp_path / "gain", progress=False)
    assert 0.0 <= gain["AP_without"] <= 1.0 and 0.0 <= gain["AP_with"] <= 1.0
    assert (tmp_path / "gain" / "with" / "results.json").is_file()
