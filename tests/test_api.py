"""Python API: input kinds, Pose objects, video streams, and the ONNX Runtime backend against PyTorch."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from grmpose import build_model
from grmpose.api import Pose, PoseEstimator, TorchForward, video_frames
from grmpose.checkpoint import save_weights
from grmpose.config import get_preset
from grmpose.data.coco import load_image
from grmpose.spec import COCO
from tests.test_model import randomize_

PHOTOS = Path(__file__).parent / "data" / "photos"
SKIERS = PHOTOS / "000000541055.jpg"
BUS = PHOTOS / "bus.jpg"

# Tests run at a 128 short side (the tiny preset's is 256) to stay fast on a busy 2-core CPU.
TEST_SIZE = 128

# Backend parity tolerance (ONNX Runtime vs PyTorch, float32 kernels differ in summation order):
# keypoints within 1e-2 px, keypoint and person scores within 1e-4.
XY_TOL_PX = 1e-2
SCORE_TOL = 1e-4


def random_checkpoint(path: Path, seed: int = 0) -> Path:
    """A tiny COCO model with random weights and BN statistics (seeded), saved as safetensors.

    Seed 0 gives 30 non-trivial poses (distinct centres and offsets) on the test photos.
    """
    model = randomize_(build_model("tiny", COCO), seed=seed)
    return save_weights(path, model, get_preset("tiny"), COCO)


def write_video(path: Path, frames: int = 5, size: tuple[int, int] = (128, 96)) -> Path:
    """A short MJPG .avi made from the skiers photo with a moving crop."""
    cv2 = pytest.importorskip("cv2")
    bgr = load_image(SKIERS)[..., ::-1]
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (w, h))
    assert writer.isOpened()
    for i in range(frames):
        crop = np.ascontiguousarray(bgr[100 : 100 + 2 * h, 40 * i : 40 * i + 2 * w][::2, ::2])
        writer.write(crop)
    writer.release()
    return path


# RGB colours of the solid-colour clip: red, green and blue dominant, so a channel swap moves each
# value by more than 100 levels. MJPG and mp4v reproduce a solid colour within a few levels.
CLIP_COLOURS = ((220, 30, 60), (20, 200, 90), (40, 70, 230))
CODEC_TOL = 8


def write_solid_video(path: Path, colours=CLIP_COLOURS, size: tuple[int, int] = (64, 48)) -> Path:
    """One frame per RGB colour, each frame filled with it; written in OpenCV's BGR order."""
    cv2 = pytest.importorskip("cv2")
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (w, h))
    assert writer.isOpened()
    for r, g, b in colours:
        frame = np.empty((h, w, 3), np.uint8)
        frame[..., 0], frame[..., 1], frame[..., 2] = b, g, r  # OpenCV stores blue first
        writer.write(frame)
    writer.release()
    return path


def assert_solid(image: np.ndarray, rgb: tuple[int, int, int], tol: int = CODEC_TOL) -> None:
    """Every pixel of ``image`` (H×W×3) within ``tol`` levels of ``rgb`` in every channel."""
    diff = np.abs(image.reshape(-1, 3).astype(int) - np.array(rgb))
    assert diff.max() <= tol, f"pixels {image.reshape(-1, 3)[diff.max(1).argmax()]} vs expected {rgb}"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-random.safetensors")


@pytest.fixture(scope="module")
def estimator(checkpoint) -> PoseEstimator:
    return PoseEstimator.from_checkpoint(checkpoint, input_size=TEST_SIZE)


def assert_same_poses(a: list[Pose], b: list[Pose], xy_tol: float = 0.0, score_tol: float = 0.0) -> None:
    assert len(a) == len(b)
    for p, q in zip(a, b):
        np.testing.assert_allclose(p.keypoints[:, :2], q.keypoints[:, :2], atol=xy_tol, rtol=0)
        np.testing.assert_allclose(p.keypoints[:, 2], q.keypoints[:, 2], atol=score_tol, rtol=0)
        assert abs(p.score - q.score) <= score_tol


# ------------------------------------------------------------------------------------------ inputs
def test_path_rgb_bgr_and_list_inputs_agree(estimator):
    rgb = load_image(SKIERS)
    from_path = estimator(SKIERS)
    from_str = estimator(str(SKIERS))
    from_rgb = estimator(rgb)
    from_bgr = estimator(np.ascontiguousarray(rgb[..., ::-1]), color="bgr")
    assert len(from_path) > 0, "the random checkpoint should give some poses"
    for other in (from_str, from_rgb, from_bgr):
        assert_same_poses(from_path, other)

    batch = estimator([SKIERS, BUS, rgb])  # the two skiers images share one batched forward call
    assert isinstance(batch, list) and len(batch) == 3
    tol = dict(xy_tol=1e-3, score_tol=1e-5)  # batch 2 vs 1: float32 summation order differs
    assert_same_poses(batch[0], from_path, **tol)
    assert_same_poses(batch[2], from_path, **tol)
    assert_same_poses(batch[1], estimator(BUS), **tol)

    pose = from_path[0]
    assert pose.keypoints.shape == (COCO.num_keypoints, 3)
    assert pose.score == pytest.approx(pose.keypoints[:, 2].mean(), abs=1e-6)
    h, w = rgb.shape[:2]
    assert all(np.isfinite(pose.box)) and pose.box[0] <= pose.box[2] and pose.box[1] <= pose.box[3]
    scores = [p.score for p in from_path]
    assert scores == sorted(scores, reverse=True)


def test_bgr_without_flag_differs(estimator):
    rgb = load_image(SKIERS)
    a = estimator(rgb)
    b = estimator(np.ascontiguousarray(rgb[..., ::-1]))  # wrong channel order, no flag
    assert len(a) != len(b) or any(not np.allclose(p.keypoints, q.keypoints) for p, q in zip(a, b))


def test_bad_inputs_are_refused(estimator, tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        estimator(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="H×W×3"):
        estimator(np.zeros((64, 64, 5), np.uint8))
    with pytest.raises(ValueError, match="color"):
        estimator(np.zeros((64, 64, 3), np.uint8), color="hsv")
    with pytest.raises(ValueError, match="missing.jpg"):
        estimator(tmp_path / "missing.jpg")
    with pytest.raises(TypeError):
        estimator(42)


def test_pose_box_and_coco_entry():
    kps = np.zeros((COCO.num_keypoints, 3))
    kps[:, 0] = np.linspace(10, 50, COCO.num_keypoints)
    kps[:, 1] = np.linspace(100, 20, COCO.num_keypoints)
    kps[:, 2] = 0.5
    pose = Pose(kps, 0.5)
    assert pose.box == (10.0, 20.0, 50.0, 100.0)
    entry = pose.to_coco(7)
    assert entry["image_id"] == 7 and entry["category_id"] == 1 and entry["score"] == 0.5
    assert len(entry["keypoints"]) == 3 * COCO.num_keypoints
    assert entry["keypoints"][:3] == [10.0, 100.0, 0.5]
    json.dumps(entry)
    with pytest.raises(ValueError, match="K×3"):
        Pose(np.zeros((17, 2)), 0.1)


def test_preset_and_device_errors():
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        PoseEstimator.from_preset("nope")
    with pytest.raises(ValueError, match="unknown backend"):
        PoseEstimator.from_preset("tiny", backend="tensorrt")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda"):
            PoseEstimator.from_preset("tiny", device="cuda")
    with pytest.raises(ValueError, match="scales"):
        PoseEstimator.from_preset("tiny", scales=(0.0, 1.0))


def test_options_pass_through_to_tta(monkeypatch):
    """flip, scales, decoder and max_people reach the test-time-augmentation function."""
    import grmpose.api

    seen = {}

    def fake_predict_poses(forward, image, spec, input_size, **options):
        seen.update(options, input_size=input_size)
        return np.zeros((0, spec.num_keypoints, 3)), np.zeros(0)

    monkeypatch.setattr(grmpose.api, "predict_poses", fake_predict_poses)
    est = PoseEstimator.from_preset(
        "tiny", flip=True, scales=(0.5, 1.0, 2.0), decoder="hybrid", max_people=7, input_size=128
    )
    assert est(np.zeros((64, 96, 3), np.uint8)) == []
    assert seen == {
        "flip": True,
        "scales": (0.5, 1.0, 2.0),
        "decoder": "hybrid",
        "max_people": 7,
        "input_size": 128,
    }


def test_torch_forward_moves_inputs_to_model_device(checkpoint):
    est = PoseEstimator.from_checkpoint(checkpoint, device="cpu", input_size=TEST_SIZE)
    assert isinstance(est.forward, TorchForward)
    assert next(est.forward.model.parameters()).device == torch.device("cpu")
    heat, off, m = est.maps(load_image(SKIERS))
    assert heat.shape[0] == COCO.num_keypoints + 1 and off.shape[0] == 2 * COCO.num_keypoints
    assert m.shape == (2, 3)


# ------------------------------------------------------------------------------------------ video
def test_video_frames_are_rgb(tmp_path):
    """A solid-colour clip decodes to its RGB colours (OpenCV reads BGR: the swap must happen once)."""
    video = write_solid_video(tmp_path / "solid.avi")
    frames = list(video_frames(video))
    assert len(frames) == len(CLIP_COLOURS)
    for frame, rgb in zip(frames, CLIP_COLOURS):
        assert frame.shape == (48, 64, 3) and frame.dtype == np.uint8 and frame.flags["C_CONTIGUOUS"]
        assert_solid(frame, rgb)
    assert len(list(video_frames(video, max_frames=2))) == 2


def decode_rgb_independently(path: Path) -> list[np.ndarray]:
    """The reference decoder: OpenCV's reader and an explicit BGR -> RGB channel reversal."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(np.stack([bgr[..., 2], bgr[..., 1], bgr[..., 0]], axis=-1))
    cap.release()
    return frames


def test_stream_equals_one_call_per_independently_decoded_frame(estimator, tmp_path):
    video = write_video(tmp_path / "clip.avi", frames=3)
    reference_frames = decode_rgb_independently(video)
    assert len(reference_frames) == 3
    expected = [estimator(frame) for frame in reference_frames]
    # the crops move, so the frames' poses differ: a stream that repeats or reorders frames fails
    assert all(len(a) > 0 for a in expected)
    assert any(
        len(a) != len(b) or any(not np.allclose(p.keypoints, q.keypoints) for p, q in zip(a, b))
        for a, b in zip(expected, expected[1:])
    )

    pulled = []

    def frames():
        for i, frame in enumerate(video_frames(video)):
            pulled.append(i)
            yield frame

    stream = estimator.stream(frames())
    first = next(stream)
    assert pulled == [0], "stream must be lazy: one frame read per result"
    results = [first, *stream]
    assert len(results) == 3
    for got, want in zip(results, expected):
        assert_same_poses(got, want)
    bgr_frames = [np.ascontiguousarray(f[..., ::-1]) for f in reference_frames[:2]]
    for got, want in zip(estimator.stream(bgr_frames, color="bgr"), expected):
        assert_same_poses(got, want)


def test_video_frames_errors_name_the_source(tmp_path):
    pytest.importorskip("cv2")
    with pytest.raises(FileNotFoundError, match="nothing.mp4"):
        next(video_frames(tmp_path / "nothing.mp4"))
    fake = tmp_path / "fake.mp4"
    fake.write_text("not a video")
    with pytest.raises(OSError, match="fake.mp4"):
        next(video_frames(fake))


# ------------------------------------------------------------------------------------------ ONNX
@pytest.fixture(scope="module")
def onnx_estimator(checkpoint, tmp_path_factory) -> PoseEstimator:
    """Exported once per test session (about 20 s for tiny)."""
    pytest.importorskip("onnxruntime")
    cache = tmp_path_factory.mktemp("onnx-cache")
    return PoseEstimator.from_checkpoint(
        checkpoint, backend="onnxruntime", cache_dir=cache, input_size=TEST_SIZE
    )


@pytest.mark.slow
@pytest.mark.parametrize("flip", [False, True])
def test_onnxruntime_backend_equals_torch(onnx_estimator, checkpoint, flip):
    torch_est = PoseEstimator.from_checkpoint(checkpoint, flip=flip, input_size=TEST_SIZE)
    onnx_estimator.flip = flip
    try:
        odd = load_image(BUS)[37:437, 11:311]  # 300×400, not a multiple of 32
        for image in (load_image(SKIERS), odd):
            a, b = torch_est(image), onnx_estimator(image)
            assert len(a) > 0
            assert_same_poses(a, b, xy_tol=XY_TOL_PX, score_tol=SCORE_TOL)
    finally:
        onnx_estimator.flip = False


@pytest.mark.slow
def test_onnx_sidecar_cache_and_from_onnx(onnx_estimator, checkpoint, tmp_path):
    onnx_path = onnx_estimator.forward.path
    sidecar = onnx_path.with_suffix(".json")
    assert sidecar.is_file()
    meta = json.loads(sidecar.read_text())
    assert meta["config"]["input_size"] == 256 and meta["spec"]["name"] == "coco"

    mtime = os.stat(onnx_path).st_mtime_ns
    again = PoseEstimator.from_checkpoint(checkpoint, backend="onnxruntime", cache_dir=onnx_path.parent)
    assert again.forward.path == onnx_path and os.stat(onnx_path).st_mtime_ns == mtime  # no re-export

    direct = PoseEstimator.from_onnx(onnx_path)
    assert direct.spec == COCO and direct.input_size == 256  # from the sidecar
    direct.input_size = TEST_SIZE
    assert_same_poses(direct(SKIERS), onnx_estimator(SKIERS))
    via_checkpoint = PoseEstimator.from_checkpoint(onnx_path, backend="onnxruntime")
    assert via_checkpoint.input_size == 256

    bare = tmp_path / "bare.onnx"
    bare.write_bytes(onnx_path.read_bytes())
    with pytest.raises(ValueError, match="sidecar"):
        PoseEstimator.from_onnx(bare)
    est = PoseEstimator.from_onnx(bare, spec="coco", input_size=TEST_SIZE)
    assert_same_poses(est(SKIERS), onnx_estimator(SKIERS))
    with pytest.raises(ValueError, match="onnxruntime"):
        PoseEstimator.from_checkpoint(onnx_path, backend="torch")


@pytest.mark.slow
def test_predict_main_with_onnxruntime_matches_torch(onnx_estimator, checkpoint, tmp_path):
    from grmpose.predict import predict_main

    onnx_path = str(onnx_estimator.forward.path)
    options = dict(progress=False, input_size=TEST_SIZE)
    a = predict_main(str(PHOTOS), str(tmp_path / "t"), checkpoint=str(checkpoint), **options)
    b = predict_main(str(PHOTOS), str(tmp_path / "o"), checkpoint=onnx_path, backend="onnxruntime", **options)
    assert a["people"] == b["people"] > 0
    ra = json.loads(Path(a["results"]).read_text())
    rb = json.loads(Path(b["results"]).read_text())
    assert [r["image_id"] for r in ra] == [r["image_id"] for r in rb]
    for x, y in zip(ra, rb):
        kx, ky = np.array(x["keypoints"]).reshape(-1, 3), np.array(y["keypoints"]).reshape(-1, 3)
        # results are rounded to 0.01 px and 1e-4 score: one rounding step apart at most
        np.testing.assert_allclose(kx[:, :2], ky[:, :2], atol=XY_TOL_PX + 0.01 + 1e-9, rtol=0)
        np.testing.assert_allclose(kx[:, 2], ky[:, 2], atol=SCORE_TOL + 1e-4 + 1e-9, rtol=0)


@pytest.mark.parametrize("batch_dim", [1, "batch"])
def test_onnx_forward_runs_static_batch_models_in_pieces(tmp_path, batch_dim):
    """A model exported with a static batch of 1 still takes the flip test's batch of 2."""
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from grmpose.api import OnnxForward

    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch_dim, 3, "h", "w"])
    outs = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("heatmaps", "offsets", "tags")
    ]
    nodes = [
        helper.make_node("Identity", ["images"], ["heatmaps"]),
        helper.make_node("Neg", ["images"], ["offsets"]),
        helper.make_node("Abs", ["images"], ["tags"]),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "stub", [x], outs), opset_imports=[helper.make_opsetid("", 18)]
    )
    model.ir_version = 8
    path = tmp_path / "stub.onnx"
    onnx.save(model, str(path))
    forward = OnnxForward(path)
    assert forward.static_batch == (1 if batch_dim == 1 else None)
    batch = torch.randn(3, 3, 8, 16)
    heat, off, tags = forward(batch)
    torch.testing.assert_close(heat, batch)
    torch.testing.assert_close(off, -batch)
    torch.testing.assert_close(tags, batch.abs())


def test_cpu_estimator_keeps_freed_memory_unless_switched_off(monkeypatch):
    """A CPU torch-backend estimator sets malloc to keep freed memory (glibc's mallopt, called through
    grmpose.runtime.keep_freed_memory); GRMPOSE_KEEP_FREED_MEMORY=0 leaves glibc's default."""
    import grmpose.runtime as runtime

    calls = []
    monkeypatch.setattr(runtime, "keep_freed_memory", lambda: calls.append(1) or True)
    PoseEstimator.from_preset("tiny", input_size=64)
    assert calls == [1]
    monkeypatch.setenv(runtime.INFERENCE_MEMORY_SWITCH, "0")
    assert runtime.keep_freed_memory_for_inference() is False
    PoseEstimator.from_preset("tiny", input_size=64)
    assert calls == [1]
