"""predict_main: folders, globs, videos, pictures, ids, and bad inputs (clear errors, nothing half-written)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import grmpose.predict
from grmpose.data.coco import DataError, load_image
from grmpose.predict import assign_image_ids, picture_paths, predict_main, resolve_source
from tests.test_api import BUS, PHOTOS, SKIERS, TEST_SIZE, random_checkpoint, write_video


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-random.safetensors")


def run(source, out, checkpoint, **kwargs) -> dict:
    kwargs.setdefault("input_size", TEST_SIZE)
    return predict_main(str(source), str(out), checkpoint=str(checkpoint), progress=False, **kwargs)


def read_outputs(out: Path) -> tuple[list, list]:
    results = json.loads((out / "results.json").read_text())
    images = json.loads((out / "images.json").read_text())["images"]
    return results, images


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if ".tmp" in p.name]


# ------------------------------------------------------------------------------------------ images
def test_folder_writes_results_images_json_and_pictures(checkpoint, tmp_path):
    out = tmp_path / "out"
    summary = run(PHOTOS, out, checkpoint)
    assert summary["kind"] == "images" and summary["processed"] == 2 and summary["skipped"] == 0
    results, images = read_outputs(out)
    assert [im["file_name"] for im in images] == ["000000541055.jpg", "bus.jpg"]
    assert [im["id"] for im in images] == [0, 1]  # "bus" is not a number: running index
    assert len(results) == summary["people"] > 0
    assert {r["image_id"] for r in results} <= {0, 1}
    assert all(len(r["keypoints"]) == 51 for r in results)
    for name, im in zip(["000000541055.jpg", "bus.jpg"], images):
        picture = out / name
        assert picture.is_file()
        with Image.open(picture) as pic:
            assert pic.size == (im["width"], im["height"])
    assert sorted(summary["pictures"]) == sorted(str(out / n) for n in ["000000541055.jpg", "bus.jpg"])
    assert no_temp_files(out)


def test_glob_and_numeric_ids(checkpoint, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(SKIERS, src / "000000541055.jpg")
    shutil.copy(BUS, src / "12.jpg")
    (src / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    summary = run(src / "*.jpg", out, checkpoint)
    assert summary["processed"] == 2
    results, images = read_outputs(out)
    assert [im["id"] for im in images] == [541055, 12]  # sorted by name: 000000541055.jpg, 12.jpg
    assert {r["image_id"] for r in results} <= {541055, 12}
    assert (out / "12.jpg").is_file() and (out / "000000541055.jpg").is_file()


def test_show_maps_gives_a_bigger_picture(checkpoint, tmp_path):
    run(SKIERS, tmp_path / "plain", checkpoint)
    run(SKIERS, tmp_path / "maps", checkpoint, show_maps=True)
    with Image.open(tmp_path / "plain" / SKIERS.name) as a, Image.open(tmp_path / "maps" / SKIERS.name) as b:
        assert a.size == (640, 360)
        assert b.size == (4 * 640, 360)  # overlay + joint heat + centre heat + offsets


def test_corrupt_image_in_folder_is_skipped_and_counted(checkpoint, tmp_path, caplog):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(SKIERS, src / "a.jpg")
    (src / "b.jpg").write_bytes(b"\xff\xd8\xff garbage, not a JPEG")
    (src / "c.png").write_bytes(b"")
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        summary = run(src, out, checkpoint)
    assert summary["processed"] == 1 and summary["skipped"] == 2
    assert sorted(Path(p).name for p in summary["skipped_files"]) == ["b.jpg", "c.png"]
    assert "b.jpg" in caplog.text
    results, images = read_outputs(out)
    assert [im["file_name"] for im in images] == ["a.jpg"]
    assert not (out / "b.jpg").exists()


def test_single_corrupt_image_is_an_error(checkpoint, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"garbage")
    with pytest.raises(DataError, match="bad.jpg"):
        run(bad, tmp_path / "out", checkpoint)
    assert not (tmp_path / "out" / "results.json").exists()


def test_outputs_never_overwrite_inputs(checkpoint, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(SKIERS, src / "a.jpg")
    before = (src / "a.jpg").read_bytes()
    run(src, src, checkpoint)  # output folder = input folder
    assert (src / "a.jpg").read_bytes() == before
    assert (src / "a_pose.jpg").is_file()


def test_failure_midway_leaves_no_results(checkpoint, tmp_path, monkeypatch):
    calls = []

    def failing_save(path, rgb):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_save(path, rgb)

    real_save = grmpose.predict.save_image
    monkeypatch.setattr(grmpose.predict, "save_image", failing_save)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        run(PHOTOS, out, checkpoint)
    assert not (out / "results.json").exists() and not (out / "images.json").exists()
    assert no_temp_files(out)


# ------------------------------------------------------------------------------------------ video
def test_video_gives_annotated_video_with_same_frame_count(checkpoint, tmp_path):
    cv2 = pytest.importorskip("cv2")
    video = write_video(tmp_path / "clip.avi", frames=5)
    out = tmp_path / "out"
    summary = run(video, out, checkpoint)
    assert summary["kind"] == "video" and summary["processed"] == 5
    annotated = out / "clip_pose.mp4"
    assert summary["video"] == str(annotated)
    cap = cv2.VideoCapture(str(annotated))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    assert len(frames) == 5 and frames[0].shape == (96, 128, 3)
    results, images = read_outputs(out)
    assert [im["frame"] for im in images] == [0, 1, 2, 3, 4]
    assert {r["image_id"] for r in results} <= set(range(5))
    assert no_temp_files(out)

    summary = run(video, tmp_path / "maps", checkpoint, show_maps=True, max_frames=2)
    cap = cv2.VideoCapture(summary["video"])
    ok, frame = cap.read()
    cap.release()
    assert ok and frame.shape == (96, 4 * 128, 3) and summary["processed"] == 2


def test_unreadable_video_is_a_clear_error(checkpoint, tmp_path):
    pytest.importorskip("cv2")
    fake = tmp_path / "fake.mp4"
    fake.write_text("not a video")
    with pytest.raises(OSError, match="fake.mp4"):
        run(fake, tmp_path / "out", checkpoint)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ errors
def test_bad_sources_name_themselves(checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_photo.jpg"):
        run(tmp_path / "no_such_photo.jpg", tmp_path / "out", checkpoint)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        run(empty, tmp_path / "out", checkpoint)
    with pytest.raises(FileNotFoundError, match=r"\*\.png"):
        run(tmp_path / "*.png", tmp_path / "out", checkpoint)
    assert not (tmp_path / "out").exists()


def test_unwritable_output_is_a_clear_error(checkpoint, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(NotADirectoryError, match="file.txt"):
        run(SKIERS, blocker / "out", checkpoint)
    if os.geteuid() != 0:  # root can write anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            with pytest.raises(PermissionError, match="locked"):
                run(SKIERS, locked / "out", checkpoint)
        finally:
            locked.chmod(0o700)


def test_unknown_preset_and_model_choice_errors(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        predict_main(str(SKIERS), str(tmp_path / "out"), preset="nope", progress=False)
    with pytest.raises(ValueError, match="either a checkpoint or a preset"):
        predict_main(str(SKIERS), str(tmp_path / "out"), progress=False)
    with pytest.raises(ValueError, match="either a checkpoint or a preset"):
        predict_main(str(SKIERS), str(tmp_path / "out"), checkpoint=str(checkpoint), preset="tiny")
    assert not (tmp_path / "out").exists()


def test_preset_runs_with_random_weights(tmp_path):
    summary = predict_main(
        str(SKIERS), str(tmp_path / "out"), preset="tiny", progress=False, input_size=TEST_SIZE
    )
    assert summary["processed"] == 1 and (tmp_path / "out" / "results.json").is_file()


# ------------------------------------------------------------------------------------------ helpers
def test_resolve_source_kinds(tmp_path):
    assert resolve_source(str(SKIERS)).kind == "image"
    assert resolve_source(str(PHOTOS)).kind == "images"
    assert resolve_source(str(PHOTOS / "*.jpg")).images == [SKIERS, BUS]
    assert resolve_source("0").kind == "camera" and resolve_source("0").video == 0
    (tmp_path / "v.MP4").write_bytes(b"")
    assert resolve_source(str(tmp_path / "v.MP4")).kind == "video"


def test_a_folder_without_images_names_its_subfolder_that_has_them(tmp_path):
    """A sequence folder (annotations + frames/): the error says where the images are."""
    (tmp_path / "seq" / "frames").mkdir(parents=True)
    (tmp_path / "seq" / "notes").mkdir()
    (tmp_path / "seq" / "annotations.json").write_text("{}")
    for name in ("000.jpg", "001.png", "readme.txt"):
        (tmp_path / "seq" / "frames" / name).write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"subfolder 'frames' holds 2 images .*give .*frames\)$"):
        resolve_source(str(tmp_path / "seq"))
    with pytest.raises(FileNotFoundError, match=r"in folder .*notes$"):  # nothing below: no hint
        resolve_source(str(tmp_path / "seq" / "notes"))


def test_image_ids_and_picture_names(tmp_path):
    assert assign_image_ids([Path("001.jpg"), Path("20.png")]) == [1, 20]
    assert assign_image_ids([Path("001.jpg"), Path("1.png")]) == [0, 1]  # clash: running index
    assert assign_image_ids([Path("001.jpg"), Path("x.png")]) == [0, 1]
    names = picture_paths([Path("a/x.png"), Path("b/x.jpg")], tmp_path, [0, 1])
    assert [p.name for p in names] == ["x.jpg", "x_pose.jpg"]
    assert np.unique([str(p) for p in names]).size == 2


def test_video_frames_reach_the_model_as_rgb_and_the_output_video_keeps_colours(
    checkpoint, tmp_path, monkeypatch
):
    """predict on a solid-colour clip: the estimator gets RGB frames, the annotated video has the same colours."""
    cv2 = pytest.importorskip("cv2")
    from grmpose.api import PoseEstimator
    from tests.test_api import CLIP_COLOURS, assert_solid, write_solid_video

    seen = []

    def no_poses(self, image):
        seen.append(image.copy())
        return np.zeros((0, self.spec.num_keypoints, 3)), np.zeros(0)

    monkeypatch.setattr(PoseEstimator, "predict_arrays", no_poses)  # nothing drawn: the picture is the frame
    video = write_solid_video(tmp_path / "solid.avi")
    summary = run(video, tmp_path / "out", checkpoint)
    assert summary["processed"] == len(seen) == len(CLIP_COLOURS)
    for image, rgb in zip(seen, CLIP_COLOURS):
        assert_solid(image, rgb)
    cap = cv2.VideoCapture(summary["video"])
    written = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        written.append(bgr)
    cap.release()
    assert len(written) == len(CLIP_COLOURS)
    for bgr, (r, g, b) in zip(written, CLIP_COLOURS):
        assert_solid(bgr, (b, g, r))  # OpenCV files hold BGR: a missing or double swap fails


# ------------------------------------------------------------------------------------------ batching
def test_image_batches_group_sizes_and_respect_exif_rotation(tmp_path):
    from grmpose.predict import image_batches

    sizes = [(64, 48), (48, 64), (64, 48), (48, 64), (64, 48)]  # (width, height) as stored
    paths = []
    for i, size in enumerate(sizes):
        path = tmp_path / f"{i}.jpg"
        Image.new("RGB", size).save(path)
        paths.append(path)
    rotated = tmp_path / "5.jpg"  # stored 64 x 48, displayed 48 x 64 (EXIF orientation 6)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (64, 48)).save(rotated, exif=exif)
    paths.append(rotated)
    # portrait (aspect 0.75) first, then landscape; ties keep the folder order
    assert image_batches(paths, 3) == [[1, 3, 5], [0, 2, 4]]
    assert image_batches(paths, 4) == [[1, 3, 5, 0], [2, 4]]
    assert image_batches(paths, 1) == [[i] for i in range(6)]


def test_batched_folder_gives_the_poses_of_single_images(checkpoint, tmp_path):
    from grmpose.api import PoseEstimator

    src = tmp_path / "src"
    src.mkdir()
    skiers = load_image(SKIERS)
    for i in range(2):  # sizes interleaved, and one unreadable file among them
        shutil.copy(SKIERS, src / f"{2 * i}.jpg")
        Image.fromarray(skiers[: 200 + 16 * i]).save(src / f"{2 * i + 1}.png")
    (src / "1b.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    summary = run(src, out, checkpoint, batch_size=3, workers=2)
    assert summary["processed"] == 4 and summary["skipped_files"] == [str(src / "1b.jpg")]
    assert summary["batch_size"] == 3 and summary["images_per_s"] > 0
    results, images = read_outputs(out)
    names = sorted(p.name for p in src.iterdir() if p.name != "1b.jpg")
    assert [im["file_name"] for im in images] == names  # folder order, whatever the batches were

    reference = PoseEstimator.from_checkpoint(checkpoint, input_size=TEST_SIZE)
    for im in images:
        poses, scores = reference.predict_arrays(load_image(src / im["file_name"]))
        got = [r for r in results if r["image_id"] == im["id"]]
        assert len(got) == len(poses)
        for r, pose, score in zip(got, poses, scores):
            kps = np.asarray(r["keypoints"]).reshape(-1, 3)
            np.testing.assert_allclose(kps[:, :2], pose[:, :2], atol=1e-2)
            assert r["score"] == pytest.approx(score, abs=1e-4)
        assert (out / f"{Path(im['file_name']).stem}.jpg").is_file()


def test_batched_video_keeps_frame_order(checkpoint, tmp_path):
    pytest.importorskip("cv2")
    from grmpose.api import PoseEstimator, video_frames

    video = write_video(tmp_path / "clip.avi", frames=3)
    summary = run(video, tmp_path / "out", checkpoint, batch_size=2)
    results, images = read_outputs(tmp_path / "out")
    assert summary["processed"] == 3 and [im["frame"] for im in images] == list(range(3))
    reference = PoseEstimator.from_checkpoint(checkpoint, input_size=TEST_SIZE)
    for index, frame in enumerate(video_frames(video)):
        _, scores = reference.predict_arrays(frame)
        got = sorted((r["score"] for r in results if r["image_id"] == index), reverse=True)
        np.testing.assert_allclose(got, np.sort(scores)[::-1], atol=1e-4)


def test_batch_size_and_workers_are_checked(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="--batch-size"):
        run(SKIERS, tmp_path / "out", checkpoint, batch_size=0)
    assert not (tmp_path / "out").exists()
