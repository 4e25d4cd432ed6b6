"""Rescoring net: features against a naive loop and DEKR's ``get_feature`` restated, DEKR's score
product, fitting, file round trip, spec refusal, and training pairs from a stub network that
renders the ground truth."""

from __future__ import annotations

import ast
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
from grmpose.evaluate_run import rescore_gain
from grmpose.rescore import (
    RescoreNet,
    Rescorer,
    collect_training_pairs,
    fit_rescorer,
    load_rescorer,
    num_features,
    pose_features,
    rescore_fit_main,
    save_rescorer,
)
from grmpose.spec import COCO, CROWDPOSE, KeypointSpec
from tests.test_evaluate_run import RenderedForward
from tests.test_model import randomize_

COCO_DATA = Path(__file__).parent / "data" / "coco"
RENDER_SIZE = 256  # input short side for the rendering stub (each person keeps its centre peak)


def random_poses(n: int, spec: KeypointSpec, seed: int = 0) -> np.ndarray:
    """N×K×3 random poses: joints in a 640×480 image, scores in [0, 1]."""
    rng = np.random.default_rng(seed)
    k = spec.num_keypoints
    xy = rng.uniform(0, 1, (n, k, 2)) * rng.uniform(20, 300, (n, 1, 1)) + rng.uniform(0, 300, (n, 1, 2))
    return np.concatenate([xy, rng.uniform(0, 1, (n, k, 1))], axis=2)


# The torso limbs, written out by keypoint index: (left shoulder, left hip), (right shoulder, right hip).
TORSO = {"coco": [(5, 11), (6, 12)], "crowdpose": [(0, 6), (1, 7)]}


def naive_features(poses: np.ndarray, spec: KeypointSpec, torso: list[tuple[int, int]] | None) -> np.ndarray:
    """Per-pose, per-limb loop: the oracle of ``pose_features``. Normaliser: the mean length of the
    ``torso`` limbs, at least 1 px (DEKR); ``None``: the joint box diagonal."""
    rows = []
    for pose in poses:
        xs = [float(p[0]) for p in pose]
        ys = [float(p[1]) for p in pose]
        if torso is None:
            scale = math.hypot(max(xs) - min(xs), max(ys) - min(ys))
        else:
            scale = sum(math.hypot(xs[a] - xs[b], ys[a] - ys[b]) for a, b in torso) / len(torso)
        scale = max(scale, 1.0)
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
    poses[4, :, 1] = 7.0  # flat pose: zero box area, torso still measured
    a, b = TORSO[spec.name][0]
    poses[5, b] = poses[5, a]  # one torso limb of length 0: the mean of the two
    feats = pose_features(poses, spec)
    assert feats.shape == (20, num_features(spec)) == (20, 3 * len(spec.skeleton) + spec.num_keypoints)
    assert np.isfinite(feats).all()
    np.testing.assert_allclose(feats, naive_features(poses, spec, TORSO[spec.name]), rtol=1e-5, atol=1e-5)
    assert pose_features(np.zeros((0, spec.num_keypoints, 3)), spec).shape == (0, num_features(spec))


def test_pose_features_without_torso_names_use_the_box_diagonal() -> None:
    spec = KeypointSpec("odd", ("a", "b", "c"), (), ((0, 1), (1, 2)), (0.1, 0.1, 0.1))
    poses = random_poses(6, spec, seed=3)
    np.testing.assert_allclose(pose_features(poses, spec), naive_features(poses, spec, None), rtol=1e-5)


# DEKR lib/utils/rescore.py, restated: its COCO limb list (vector = joint[l1] - joint[l2]), the
# normaliser (length of limb 9 + length of limb 11) / 2 floored at 1, and the feature order
# [dx_0, dy_0, dx_1, dy_1, ..., len_0..len_18, score_0..score_16].
DEKR_COCO_L1 = [0, 0, 1, 1, 2, 3, 4, 5, 5, 5, 6, 6, 7, 8, 11, 11, 12, 13, 14]
DEKR_COCO_L2 = [1, 2, 2, 3, 4, 5, 6, 6, 7, 11, 8, 12, 9, 10, 12, 13, 14, 15, 16]


def dekr_coco_features(poses: np.ndarray) -> np.ndarray:
    rows = []
    for pose in poses:
        rel = [pose[a, :2] - pose[b, :2] for a, b in zip(DEKR_COCO_L1, DEKR_COCO_L2)]
        length = [math.hypot(*r) for r in rel]
        norm = max((length[9] + length[11]) / 2, 1.0)
        flat = [v / norm for r in rel for v in r]
        rows.append(flat + [x / norm for x in length] + list(pose[:, 2]))
    return np.array(rows)


def test_pose_features_equal_dekr_get_feature_on_coco() -> None:
    """Same numbers as DEKR's features, up to the limb order and the vector's sign."""
    poses = random_poses(12, COCO, seed=5)
    poses[2, :, :2] = 10.0  # collapsed: DEKR's floor of 1
    ours = pose_features(poses, COCO)
    dekr = dekr_coco_features(poses)
    num_limbs = len(COCO.skeleton)
    assert num_limbs == len(DEKR_COCO_L1)
    for i, (a, b) in enumerate(COCO.skeleton):
        (j,) = [j for j in range(num_limbs) if {DEKR_COCO_L1[j], DEKR_COCO_L2[j]} == {a, b}]
        sign = 1.0 if DEKR_COCO_L1[j] == b else -1.0  # ours is joint_b - joint_a
        np.testing.assert_allclose(ours[:, i], sign * dekr[:, 2 * j], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ours[:, num_limbs + i], sign * dekr[:, 2 * j + 1], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            ours[:, 2 * num_limbs + i], dekr[:, 2 * num_limbs + j], rtol=1e-5, atol=1e-6
        )
    np.testing.assert_allclose(ours[:, 3 * num_limbs :], dekr[:, 3 * num_limbs :], rtol=1e-6)


def test_rescorer_multiplies_predicted_oks_with_the_score() -> None:
    """DEKR's rescore_valid: new score = predicted OKS × original score; NaN predictions give 0."""
    net = RescoreNet(num_features(COCO), hidden=4)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.layers[-1].bias.fill_(0.25)  # predicts 0.25 for every pose
    poses = random_poses(3, COCO)
    scores = np.array([0.8, 0.4, 0.1])
    rescorer = Rescorer(net, COCO)
    np.testing.assert_allclose(rescorer.predict(poses), [0.25, 0.25, 0.25])
    np.testing.assert_allclose(rescorer(poses, scores), [0.2, 0.1, 0.025])
    with torch.no_grad():
        net.layers[-1].bias.fill_(float("nan"))
    np.testing.assert_array_equal(rescorer(poses, scores), [0.0, 0.0, 0.0])
    assert rescorer(np.zeros((0, COCO.num_keypoints, 3)), np.zeros(0)).shape == (0,)


def test_pose_features_scale_and_translation_invariant() -> None:
    poses = random_poses(5, COCO, seed=1)
    moved = poses.copy()
    moved[:, :, :2] = poses[:, :, :2] * 2.5 + 40.0
    np.testing.assert_allclose(pose_features(moved, COCO), pose_features(poses, COCO), atol=1e-5)


def test_pose_features_reject_wrong_keypoint_count() -> None:
    with pytest.raises(ValueError, match="crowdpose"):
        pose_features(random_poses(2, COCO), CROWDPOSE)


def synthetic_pairs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features of random poses and a known target: the mean joint score. Shoulders at the top and
    hips at the bottom of the pose box keep the torso (the features' normaliser) person-sized."""
    poses = random_poses(n, COCO, seed=seed)
    poses[:, [5, 6], 1] = poses[:, :, 1].min(1, keepdims=True)
    poses[:, [11, 12], 1] = poses[:, :, 1].max(1, keepdims=True)
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
    predicted = rescorer.predict(poses)
    assert predicted.shape == (7,)
    np.testing.assert_array_equal(predicted, expected)
    assert rescorer.predict(np.zeros((0, COCO.num_keypoints, 3))).shape == (0,)

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


def test_collect_training_pairs_from_rendered_ground_truth() -> None:
    """A stub network that renders the ground truth: every person is predicted once and exactly
    (target OKS 1); ``max_images`` cuts the images."""
    ann, image_dir, spec = resolve_dataset(COCO_DATA, "train")
    records = [r for r in load_coco_keypoints(ann, image_dir, spec) if r.image_id in (785, 197388)]
    assert sum(r.num_people for r in records) == 6
    images = [load_image(r.path, exif_transpose=False) for r in records]
    forward = RenderedForward(images, [r.keypoints for r in records], spec, RENDER_SIZE)
    feats, targets = collect_training_pairs(forward, records, spec, RENDER_SIZE, flip=False)
    assert feats.shape == (len(targets), num_features(spec))
    assert len(targets) == 6
    np.testing.assert_allclose(targets, 1.0, atol=1e-6)
    one, _ = collect_training_pairs(forward, records, spec, RENDER_SIZE, flip=False, max_images=1)
    assert len(one) == records[0].num_people


def test_fit_main_and_gain_end_to_end(tmp_path: Path) -> None:
    """Tiny random model at a 64-px input on 2 images: the CLI path writes a loadable net."""
    config = dataclasses.replace(get_preset("tiny"), input_size=64)
    ckpt = save_weights(
        tmp_path / "tiny.safetensors", randomize_(build_model(config, COCO), seed=0), config, COCO
    )
    out = tmp_path / "rescore.safetensors"
    info = rescore_fit_main(ckpt, COCO_DATA, out, max_images=2, flip=False, epochs=2, progress=False)
    assert info["images"] == 2 and info["samples"] > 0 and out.is_file()
    assert load_rescorer(out, COCO).predict(random_poses(3, COCO)).shape == (3,)
    gain = rescore_gain(ckpt, COCO_DATA, out, max_images=2, out=tmp_path / "gain", progress=False)
    assert 0.0 <= gain["AP_without"] <= 1.0 and 0.0 <= gain["AP_with"] <= 1.0
    assert (tmp_path / "gain" / "with" / "results.json").is_file()


def test_rescore_never_imports_the_evaluation_runner() -> None:
    """One-way dependency: evaluate_run uses rescore; rescore (even lazily, inside functions) does
    not import evaluate_run."""
    import grmpose.rescore

    tree = ast.parse(Path(grmpose.rescore.__file__).read_text())
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    modules |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "grmpose.tta" in modules  # the walk sees the function-level imports
    assert "grmpose.evaluate_run" not in modules


def test_fit_main_predicts_at_the_given_short_side(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``input_size`` (``rescore-fit --input-size``) is the short side the poses are predicted at;
    a bad one is refused before anything is written."""
    import grmpose.rescore

    config = dataclasses.replace(get_preset("tiny"), input_size=64)
    ckpt = save_weights(
        tmp_path / "tiny.safetensors", randomize_(build_model(config, COCO), seed=0), config, COCO
    )
    sizes = []
    real = grmpose.rescore.collect_training_pairs

    def spy(forward, records, spec, input_size, **kwargs):
        sizes.append(input_size)
        return real(forward, records, spec, input_size, **kwargs)

    monkeypatch.setattr(grmpose.rescore, "collect_training_pairs", spy)
    for size in (None, 96):
        rescore_fit_main(ckpt, COCO_DATA, tmp_path / f"r{size}.safetensors", max_images=1, flip=False, epochs=1,
                         progress=False, input_size=size)  # fmt: skip
    assert sizes == [64, 96]
    with pytest.raises(ValueError, match="--input-size must be positive"):
        rescore_fit_main(ckpt, COCO_DATA, tmp_path / "bad.safetensors", input_size=0, progress=False)
    assert not (tmp_path / "bad.safetensors").exists()
