"""Pose tracking: identities through crossings, occlusions and exits; One-Euro; MOT metrics; CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from grmpose.spec import COCO
from grmpose.track import OneEuroConfig, OneEuroFilter, PoseTracker, TrackConfig, pose_similarity

# A standing person, 1 unit tall, hips at the origin (COCO order: face, arms, legs); x right, y down.
TEMPLATE = np.array(
    [
        (0.0, -0.85), (0.03, -0.88), (-0.03, -0.88), (0.07, -0.86), (-0.07, -0.86),
        (0.12, -0.70), (-0.12, -0.70), (0.16, -0.45), (-0.16, -0.45), (0.17, -0.22), (-0.17, -0.22),
        (0.08, 0.0), (-0.08, 0.0), (0.09, 0.25), (-0.09, 0.25), (0.09, 0.5), (-0.09, 0.5),
    ]
)  # fmt: skip


def person(x: float, y: float, height: float = 100.0) -> np.ndarray:
    """K×3 pose (score 1) of a TEMPLATE person of ``height`` px with hips at (x, y)."""
    return np.concatenate([TEMPLATE * height + (x, y), np.ones((len(TEMPLATE), 1))], 1)


def run(tracker: PoseTracker, frames: list[list[tuple[int, np.ndarray]]], size=(400, 200)) -> dict:
    """Track scripted frames of ``(true id, pose)``; return per true id the list of track ids."""
    seen: dict[int, list[int]] = {}
    for people in frames:
        poses = np.array([p for _, p in people]).reshape(-1, len(TEMPLATE), 3)
        ids = tracker.update(poses, np.ones(len(poses)), size)
        for (true_id, _), track_id in zip(people, ids):
            seen.setdefault(true_id, []).append(int(track_id))
    return seen


# ------------------------------------------------------------------------------------ association
def test_crossing_with_five_frame_occlusion_keeps_identities():
    """A walks right, B walks left along the same line; where they meet, B is hidden behind A
    for 5 frames. Both keep their ids (a tracker without the motion prediction hands B's id to A
    or starts a new one when B reappears on the far side of A)."""
    frames = []
    for t in range(40):
        a = person(60 + 7 * t, 120)
        b = person(340 - 7 * t, 122)
        people = [(0, a)]
        if not 18 <= t < 23:  # B hidden behind A in frames 18..22 (they meet at t = 20)
            people.append((1, b))
        frames.append(people)
    seen = run(PoseTracker(COCO.sigmas, TrackConfig(max_missed=10)), frames)
    assert len(set(seen[0])) == 1 and len(set(seen[1])) == 1, seen
    assert seen[0][0] != seen[1][0]


def test_crossing_fails_without_motion_model():
    """The same scene without the motion model loses B: the test above can fail."""
    frames = []
    for t in range(40):
        people = [(0, person(60 + 7 * t, 120))]
        if not 18 <= t < 23:
            people.append((1, person(340 - 7 * t, 122)))
        frames.append(people)
    tracker = PoseTracker(COCO.sigmas, TrackConfig(max_missed=10, motion=False))
    seen = run(tracker, frames)
    assert len(set(seen[0])) > 1 or len(set(seen[1])) > 1


@pytest.mark.parametrize("away, same_id", [(8, True), (16, False)])
def test_person_returning_after_the_limit_gets_a_new_id(away, same_id):
    """Unseen for ``away`` frames with ``max_missed = 10``: within the limit the id is kept,
    beyond it the person is a new track."""
    frames = [[(0, person(200, 120))] for _ in range(10)]
    frames += [[] for _ in range(away)]
    frames += [[(0, person(200, 120))] for _ in range(5)]
    seen = run(PoseTracker(COCO.sigmas, TrackConfig(max_missed=10)), frames)
    ids = seen[0]
    assert len(set(ids[:10])) == 1 and len(set(ids[10:])) == 1
    assert (ids[0] == ids[-1]) == same_id
    if not same_id:
        assert ids[-1] == 1  # ids are given in order of creation


def test_track_ends_when_its_person_walks_out_of_the_image():
    """A leaves through the right edge; B enters there two frames later: B gets a new id."""
    frames = [[(0, person(300 + 10 * t, 120))] for t in range(12)]  # x reaches 410 > width 400
    frames += [[(1, person(395 - 5 * t, 120))] for t in range(5)]
    seen = run(PoseTracker(COCO.sigmas, TrackConfig(max_missed=30)), frames)
    assert set(seen[1]).isdisjoint(seen[0])


def test_low_scores_are_not_tracked():
    tracker = PoseTracker(COCO.sigmas, TrackConfig(min_score=0.5))
    ids = tracker.update(np.stack([person(100, 100), person(300, 100)]), [0.9, 0.2])
    assert ids.tolist() == [0, -1]


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="max_missed"):
        TrackConfig(max_missed=-1)
    with pytest.raises(ValueError, match="min_oks"):
        TrackConfig(min_oks=1.5)
    with pytest.raises(ValueError, match="beta"):
        OneEuroConfig(beta=-1)


def test_pose_similarity_is_oks_with_the_spec_sigmas():
    """Against the COCO OKS formula written out joint by joint."""
    rng = np.random.default_rng(0)
    a = person(100, 100) + np.concatenate([rng.normal(0, 4, (17, 2)), np.zeros((17, 1))], 1)
    b = person(104, 98)
    b[3, 2] = 0.0  # an unconfident joint in the reference is left out
    area = 5000.0
    got = pose_similarity(a[None], b[None], np.array([area]), COCO.sigmas)[0, 0]
    terms = []
    for k in range(17):
        if b[k, 2] >= 0.1:
            d2 = (a[k, 0] - b[k, 0]) ** 2 + (a[k, 1] - b[k, 1]) ** 2
            terms.append(math.exp(-d2 / (2 * area * (2 * COCO.sigmas[k]) ** 2)))
    assert got == pytest.approx(sum(terms) / len(terms), rel=1e-12)


# ------------------------------------------------------------------------------------ smoothing
def test_one_euro_matches_the_papers_recurrence():
    """Against a scalar loop of Casiez et al.'s algorithm, on a noisy ramp with a missed frame."""
    cfg = OneEuroConfig(min_cutoff=1.5, beta=0.05, d_cutoff=2.0, fps=30.0)
    rng = np.random.default_rng(1)
    xs = np.cumsum(rng.normal(2.0, 3.0, 25))
    gaps = [1] * 25
    gaps[10] = 3

    def alpha(cutoff, dt):
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    expected, x_hat, dx_hat = [], None, 0.0
    for x, gap in zip(xs, gaps):
        if x_hat is None:
            x_hat = x
        else:
            dt = gap / cfg.fps
            dx_hat = alpha(cfg.d_cutoff, dt) * (x - x_hat) / dt + (1 - alpha(cfg.d_cutoff, dt)) * dx_hat
            a = alpha(cfg.min_cutoff + cfg.beta * abs(dx_hat), dt)
            x_hat = a * x + (1 - a) * x_hat
        expected.append(x_hat)
    f = OneEuroFilter(cfg)
    got = [float(f(np.array([x]), frames=g)[0]) for x, g in zip(xs, gaps)]
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_smoothing_is_off_by_default_and_reduces_jitter_when_on():
    rng = np.random.default_rng(2)
    noisy = [
        person(200, 100) + np.concatenate([rng.normal(0, 3, (17, 2)), np.zeros((17, 1))], 1)
        for _ in range(30)
    ]
    outputs = {}
    for name, smoothing in (("raw", None), ("smooth", OneEuroConfig(min_cutoff=0.5, beta=0.0))):
        tracker = PoseTracker(COCO.sigmas, TrackConfig(smoothing=smoothing))
        out = []
        for pose in noisy:
            ids = tracker.update(pose[None], [1.0])
            out.append(tracker.smoothed(pose[None], ids)[0])
        outputs[name] = np.array(out)
    np.testing.assert_array_equal(outputs["raw"], np.array(noisy))
    truth = person(200, 100)[:, :2]
    raw_err = np.abs(outputs["raw"][10:, :, :2] - truth).mean()
    smooth_err = np.abs(outputs["smooth"][10:, :, :2] - truth).mean()
    assert smooth_err < 0.6 * raw_err


# ------------------------------------------------------------------------------------ metrics
def _frame(ids, poses, area=5000.0):
    from grmpose.track_eval import TrackFrame

    poses = np.array(poses, np.float64).reshape(len(ids), -1, 3)
    return TrackFrame(np.array(ids, np.int64), poses, np.full(len(ids), area))


def test_hota_of_a_track_split_in_two_is_sqrt_half():
    """HOTA paper: a perfectly localised ground-truth track predicted as two halves has DetA 1
    and AssA = 5 / (10 + 5 - 5) = 0.5 for every match, so HOTA = sqrt(0.5)."""
    from grmpose.track_eval import hota

    gt = [_frame([7], [person(100 + t, 100)]) for t in range(10)]
    pred = [_frame([0 if t < 5 else 1], [person(100 + t, 100)]) for t in range(10)]
    result = hota(gt, pred, COCO.sigmas)
    assert result["deta"] == pytest.approx(1.0)
    assert result["assa"] == pytest.approx(0.5)
    assert result["hota"] == pytest.approx(math.sqrt(0.5))
    assert hota(gt, gt, COCO.sigmas)["hota"] == pytest.approx(1.0)


def test_hota_counts_alphas_below_the_similarity():
    """Every match has OKS s = 0.62: it is a true positive for the 12 thresholds 0.05..0.60 and
    a miss plus a false positive for the 7 above, so HOTA = 12 / 19 (AssA 1 where matched)."""
    from grmpose.track_eval import hota

    sigma, area, s = 0.05, 400.0, 0.62
    d = math.sqrt(-math.log(s) * 2 * area * (2 * sigma) ** 2)  # one joint at distance d has OKS s
    gt = [_frame([1], [[(10.0, 10.0, 2.0)]], area) for _ in range(6)]
    pred = [_frame([4], [[(10.0 + d, 10.0, 1.0)]], area) for _ in range(6)]
    result = hota(gt, pred, [sigma])
    assert result["hota"] == pytest.approx(12 / 19)
    assert result["loca"] == pytest.approx((12 * s + 7 * 1.0) / 19)  # LocA is 1 where nothing matched


def test_clear_mot_counts_an_identity_switch():
    """Two people, 10 frames; the prediction swaps their ids from frame 5 on: MOTA = 1 - 2/20."""
    pytest.importorskip("motmetrics")
    from grmpose.track_eval import clear_mot

    gt, pred = [], []
    for t in range(10):
        a, b = person(100, 100), person(300, 100)
        gt.append(_frame([0, 1], [a, b]))
        pred.append(_frame([5, 6] if t < 5 else [6, 5], [a, b]))
    m = clear_mot(gt, pred, COCO.sigmas)
    assert m["num_switches"] == 2
    assert m["mota"] == pytest.approx(1 - 2 / 20)
    assert m["switches_per_100"] == pytest.approx(10.0)
    assert m["idf1"] == pytest.approx(0.5)  # each id is right on half of its frames


# ------------------------------------------------------------------------------------ sequences
def test_synthetic_sequence_is_deterministic_with_track_ids(tmp_path):
    from grmpose.data.synthetic_sequences import SequenceConfig, load_sequence, write_sequence

    cfg = SequenceConfig(frames=40, people=5, width=160, height=120, enter_fraction=0.6)
    path = write_sequence(tmp_path / "a", "coco", seed=3, config=cfg, images=False)
    again = write_sequence(tmp_path / "b", "coco", seed=3, config=cfg, images=False)
    other = write_sequence(tmp_path / "c", "coco", seed=4, config=cfg, images=False)
    assert path.read_bytes() == again.read_bytes()
    assert path.read_bytes() != other.read_bytes()
    data = json.loads(path.read_text())
    assert len(data["images"]) == 40
    assert all({"track_id", "keypoints", "area", "bbox"} <= set(a) for a in data["annotations"])
    frames = load_sequence(path)
    first = {}
    for t, f in enumerate(frames):
        assert len(set(f.track_ids.tolist())) == len(f.track_ids)  # one annotation per person
        for i in f.track_ids:
            first.setdefault(int(i), t)
    assert any(t > 0 for t in first.values())  # someone enters after the start
    flags = np.concatenate([f.keypoints[..., 2].ravel() for f in frames])
    assert (flags == 1).any() and (flags == 2).any()  # occluded and visible joints


# ------------------------------------------------------------------------------------ CLI and API
def _squares_video(path, frames=24, size=(160, 120)):
    """Two coloured squares crossing (red right, blue left); returns their centres per frame."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, size)
    centres = []
    for t in range(frames):
        img = np.full((size[1], size[0], 3), 40, np.uint8)
        red, blue = (20 + 5 * t, 60), (140 - 5 * t, 64)
        for (x, y), col in ((blue, (0, 0, 255)), (red, (255, 0, 0))):
            img[y - 6 : y + 6, x - 6 : x + 6] = col
        writer.write(np.ascontiguousarray(img[..., ::-1]))
        centres.append((red, blue))
    writer.release()
    return centres


class _SquareEstimator:
    """Stub estimator: a 'person' (TEMPLATE, 40 px tall) at each red or blue blob."""

    spec = COCO

    def predict_arrays(self, image):
        poses = []
        for channel in (0, 2):
            mask = (image[..., channel] > 150) & (image[..., 1] < 100)
            if mask.sum() > 20:
                ys, xs = np.nonzero(mask)
                poses.append(person(xs.mean(), ys.mean(), 40.0))
        return np.array(poses).reshape(-1, 17, 3), np.full(len(poses), 0.9)


def test_cli_track_writes_video_and_json_with_stable_ids(tmp_path, monkeypatch, capsys):
    import cv2

    import grmpose.track_video as tv
    from grmpose.cli import main

    video = tmp_path / "walk.mp4"
    centres = _squares_video(video)
    monkeypatch.setattr(tv, "build_estimator", lambda *a, **k: _SquareEstimator())
    out = tmp_path / "out"
    code = main(
        ["track", str(video), "--checkpoint", "stub.safetensors", "--out", str(out), "--quiet", "--smooth"]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["frames"] == 24 and summary["tracks"] == 2
    data = json.loads((out / "tracks.json").read_text())
    frame_of = {im["id"]: im["frame_id"] for im in data["images"]}
    owner: dict[int, set] = {0: set(), 1: set()}
    for ann in data["annotations"]:
        kps = np.array(ann["keypoints"]).reshape(17, 3)
        hips = kps[11:13, :2].mean(0)
        red, blue = centres[frame_of[ann["image_id"]]]
        true = 0 if np.hypot(*(hips - red)) < np.hypot(*(hips - blue)) else 1
        owner[true].add(ann["track_id"])
        assert {"image_id", "track_id", "keypoints", "score"} <= set(ann)
    assert len(owner[0]) == 1 and len(owner[1]) == 1 and owner[0] != owner[1]
    cap = cv2.VideoCapture(str(out / "walk_track.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 24
    cap.release()


def test_cli_track_bad_source_is_one_line(tmp_path, capsys):
    from grmpose.cli import main

    code = main(["track", str(tmp_path / "missing.mp4"), "--preset", "tiny", "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.mp4" in err[0]


def test_estimator_track_yields_tracked_poses():
    import torch

    from grmpose.api import PoseEstimator, TrackedPose

    est = PoseEstimator(lambda b: (torch.zeros(1), torch.zeros(1), torch.zeros(1)), COCO, 64)
    steps = iter(range(100))

    def fake(image):
        t = next(steps)
        return np.stack([person(20 + 2 * t, 60, 40), person(140 - 2 * t, 60, 40)]), np.array([0.9, 0.8])

    est.predict_arrays = fake
    frames = [np.zeros((120, 160, 3), np.uint8)] * 6
    results = list(est.track(frames))
    assert all(len(r) == 2 and all(isinstance(p, TrackedPose) for p in r) for r in results)
    assert [[p.track_id for p in r] for r in results] == [[0, 1]] * 6


def test_tracking_benchmark_writes_its_tables(tmp_path):
    """The benchmark on one short sequence: ground-truth input is tracked perfectly there, and the
    results say that part (b) was not measured without a checkpoint."""
    pytest.importorskip("motmetrics")
    from benchmarks.tracking import main

    record = main(
        [
            "--sequences",
            "1",
            "--frames",
            "20",
            "--people",
            "3",
            "--cost-people",
            "2",
            "--results",
            str(tmp_path),
        ]
    )
    gt_row = record["gt_input"][0]
    assert gt_row["input"] == "gt" and gt_row["idf1"] == pytest.approx(1.0) and gt_row["num_switches"] == 0
    assert record["cost"][0]["tracks_started"] == 2
    text = (tmp_path / "tracking.md").read_text()
    assert "no --checkpoint given" in text
    assert json.loads((tmp_path / "tracking.json").read_text())["provenance"]["command"].startswith(
        "python -m"
    )
