"""Bad inputs through the real CLI: one clear line naming the file or field, exit != 0, no traceback,
nothing half-written -- or, for one bad sample among many, a logged skip with a count and success.

The corpus (``ERROR_CASES`` + the success cases below it) is summarised in ``docs/reliability.md``.
Every bad file is generated here in ``tmp_path`` from the real samples in ``tests/data``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from grmpose.checkpoint import save_training_checkpoint, save_weights
from grmpose.cli import main
from grmpose.config import get_preset
from grmpose.model.net import build_model
from grmpose.spec import COCO
from tests.test_model import randomize_

DATA = Path(__file__).parent / "data"
SKIERS = DATA / "photos" / "000000541055.jpg"  # 640 x 360
COCO_GT = DATA / "coco" / "person_keypoints.json"
COCO_IMAGES = DATA / "coco" / "images"
CROWD_GT = DATA / "crowdpose" / "annotations.json"
SIZE = 64  # input size of the test checkpoint: fast on CPU
REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine OpenMP spinning makes tiny convs 100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A tiny COCO model with random weights and a 64-pixel input size."""
    config = dataclasses.replace(get_preset("tiny"), input_size=SIZE)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    return save_weights(path, randomize_(build_model(config, COCO), seed=0), config, COCO)


class Evil:
    """Unpickling this calls ``open(marker, "w")``: a file appears if anything unpickles it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def evil_pt(folder: Path) -> tuple[Path, Path]:
    """A ``.pt`` whose pickle would create ``marker`` when loaded unsafely."""
    marker = folder / "PWNED"
    path = folder / "evil.pt"
    torch.save({"format": "grmpose", "model": {}, "payload": Evil(marker)}, path)
    assert not marker.exists()
    return path, marker


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def files_in(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def assert_one_line_error(rc: int, err: str, *names: str) -> str:
    assert rc != 0
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("grmpose: error:")]
    assert len(lines) == 1, err
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


# -------------------------------------------------------------------------------- bad files
def real_jpeg_bytes() -> bytes:
    return SKIERS.read_bytes()


def corrupt_jpeg() -> bytes:
    """A real JPEG header followed by noise that libjpeg cannot decode (seed 0: "broken data stream";
    some other noise decodes to garbage pixels without an error, as in any image viewer)."""
    noise = np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    return real_jpeg_bytes()[:600] + noise


def small_rgb() -> Image.Image:
    with Image.open(SKIERS) as im:
        return im.convert("RGB").crop((200, 100, 296, 164))  # 96 x 64


def png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header claims ``w x h`` RGB pixels; no pixel data (a few dozen bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def jpeg_claiming(w: int, h: int) -> bytes:
    """A real small JPEG whose SOF0 header is patched to claim ``w x h`` pixels."""
    buf = io.BytesIO()
    small_rgb().save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", h, w)
    return bytes(data)


# --------------------------------------------------------------------------------- datasets
def coco_gt(image_ids: tuple[int, ...] = (785,)) -> dict:
    gt = json.loads(COCO_GT.read_text())
    gt["images"] = [im for im in gt["images"] if im["id"] in image_ids]
    gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in image_ids]
    return gt


def make_dataset(
    folder: Path, gt: dict | str | None = None, copy_images: bool = True, spec: str = "coco"
) -> Path:
    """A dataset.yaml with train and val splits on one annotation file (dict, raw text, or 785 only)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    gt = coco_gt() if gt is None else gt
    text = gt if isinstance(gt, str) else json.dumps(gt)
    (folder / "ann.json").write_text(text)
    if copy_images and isinstance(gt, dict):
        for im in gt.get("images", []):
            src = COCO_IMAGES / im["file_name"]
            if src.is_file():
                shutil.copy(src, folder / "images" / im["file_name"])
    yaml = folder / "dataset.yaml"
    yaml.write_text(
        f"spec: {spec}\ntrain: {{annotations: ann.json, images: images}}\nval: {{annotations: ann.json, images: images}}\n"
    )
    return yaml


def with_keypoints(change: Callable[[list], None]) -> dict:
    gt = coco_gt()
    change(gt["annotations"][0]["keypoints"])
    return gt


def nan_keypoint(kps: list) -> None:
    kps[0] = float("nan")


def results_file(folder: Path, change: Callable[[dict], None] | None = None, raw: str | None = None) -> Path:
    gt = coco_gt()
    (folder / "gt.json").write_text(json.dumps(gt))
    res = [
        {"image_id": a["image_id"], "category_id": 1, "keypoints": list(a["keypoints"]), "score": 0.9}
        for a in gt["annotations"]
        if a["num_keypoints"] > 0
    ]
    if change is not None:
        change(res[0])
    path = folder / "results.json"
    path.write_text(raw if raw is not None else json.dumps(res))
    return path


# ------------------------------------------------------------------------------------ the corpus
@dataclasses.dataclass
class Ctx:
    tmp: Path
    ckpt: Path

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    def file(self, name: str, data: bytes | str) -> Path:
        path = self.tmp / name
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def predict(self, source: Path | str, *extra: str) -> list:
        return ["predict", source, "--checkpoint", self.ckpt, "--out", self.out, "--quiet", *extra]

    def eval_data(self, data: Path, *extra: str) -> list:
        return ["eval", "--checkpoint", self.ckpt, "--data", data, "--out", self.out, "--quiet", *extra]

    def eval_gt(self, change=None, raw=None, *extra: str) -> list:
        res = results_file(self.tmp, change, raw)
        return ["eval", "--gt", self.tmp / "gt.json", "--results", res, *extra]

    def train(self, data: Path | str, *extra: str) -> list:
        return ["train", "--data", data, "--out", self.out, "--preset", "tiny", "--epochs", "1",
                "--batch-size", "1", "--input-size", str(SIZE), "--workers", "0", "--val-every", "0",
                "--max-steps", "1", "--quiet", *extra]  # fmt: skip


# Each case: (id, build(ctx) -> (argv, strings the error line must contain)).
ERROR_CASES: dict[str, Callable[[Ctx], tuple[list, list[str]]]] = {
    # ---- images given to predict
    "corrupt JPEG": lambda c: (
        c.predict(c.file("corrupt.jpg", corrupt_jpeg())), ["corrupt.jpg"]),
    "truncated JPEG": lambda c: (
        c.predict(c.file("cut.jpg", real_jpeg_bytes()[: len(real_jpeg_bytes()) // 2])), ["cut.jpg", "truncated"]),
    "truncated PNG": lambda c: (
        c.predict(c.file("cut.png", png_bytes(small_rgb())[:3000])), ["cut.png"]),
    "empty file": lambda c: (c.predict(c.file("empty.jpg", b"")), ["empty.jpg", "empty"]),
    "text named .jpg": lambda c: (c.predict(c.file("notes.jpg", "just some text\n")), ["notes.jpg"]),
    "20000x20000 PNG (header)": lambda c: (
        c.predict(c.file("huge.png", png_header_only(20000, 20000))), ["huge.png", "too large", "20000x20000"]),
    "20000x20000 JPEG (header)": lambda c: (
        c.predict(c.file("huge.jpg", jpeg_claiming(20000, 20000))), ["huge.jpg", "too large"]),
    "missing source": lambda c: (c.predict(c.tmp / "nope.jpg"), ["nope.jpg"]),
    "folder without images": lambda c: (c.predict(c.tmp), [str(c.tmp)]),
    "video that cannot be opened": lambda c: (c.predict(c.file("clip.mp4", "not a video")), ["clip.mp4"]),
    "output folder under a file": lambda c: (
        ["predict", SKIERS, "--checkpoint", c.ckpt, "--out", c.file("afile", "x") / "sub", "--quiet"], ["afile"]),
    # ---- models
    "unknown preset": lambda c: (
        ["predict", SKIERS, "--preset", "nope", "--out", c.out, "--quiet"], ["nope", "preset"]),
    "unknown preset (train)": lambda c: (c.train(make_dataset(c.tmp / "ds"), "--preset", "huge9"), ["huge9"]),
    "unknown spec name": lambda c: (
        ["predict", SKIERS, "--preset", "tiny", "--spec", "zebra", "--out", c.out, "--quiet"], ["zebra"]),
    "unknown spec name (eval --gt)": lambda c: (c.eval_gt(None, None, "--spec", "zebra"), ["zebra"]),
    "missing checkpoint": lambda c: (
        ["predict", SKIERS, "--checkpoint", c.tmp / "gone.safetensors", "--out", c.out], ["gone.safetensors"]),
    "corrupt checkpoint (predict)": lambda c: (
        ["predict", SKIERS, "--checkpoint", c.file("bad.safetensors", os.urandom(300)), "--out", c.out],
        ["bad.safetensors"]),
    "corrupt .pt checkpoint (eval)": lambda c: (
        c.eval_data(make_dataset(c.tmp / "ds"))[:2] + [c.file("bad.pt", b"PK\x03\x04" + os.urandom(200))]
        + c.eval_data(make_dataset(c.tmp / "ds"))[3:], ["bad.pt"]),
    "truncated checkpoint": lambda c: (
        ["predict", SKIERS, "--checkpoint", c.file("half.safetensors", c.ckpt.read_bytes()[:5000]), "--out", c.out],
        ["half.safetensors"]),
    "checkpoint of another spec": lambda c: (
        c.eval_data(make_dataset(c.tmp / "crowd", json.loads(CROWD_GT.read_text()), spec="crowdpose")),
        ["tiny.safetensors", "crowdpose"]),
    # ---- ground truth (train and eval --data)
    "malformed JSON": lambda c: (c.train(make_dataset(c.tmp / "ds", '{"images": [}')), ["ann.json", "JSON"]),
    "malformed JSON (eval)": lambda c: (c.eval_data(make_dataset(c.tmp / "ds", '{"images": [')), ["ann.json"]),
    "JSON not a dict": lambda c: (c.train(make_dataset(c.tmp / "ds", "[1, 2, 3]")), ["ann.json"]),
    "JSON not a dict (eval)": lambda c: (c.eval_data(make_dataset(c.tmp / "ds", "[1, 2, 3]")), ["ann.json"]),
    "missing 'images'": lambda c: (
        c.train(make_dataset(c.tmp / "ds", json.dumps({"annotations": []}))), ["ann.json", "'images'"]),
    "missing 'annotations' (eval)": lambda c: (
        c.eval_data(make_dataset(c.tmp / "ds", json.dumps({"images": [], "categories": []}))),
        ["ann.json", "'annotations'"]),
    "keypoints of wrong length": lambda c: (
        c.train(make_dataset(c.tmp / "ds", with_keypoints(lambda k: k.pop()))), ["ann.json", "keypoints"]),
    "keypoints of wrong length (eval)": lambda c: (
        c.eval_data(make_dataset(c.tmp / "ds", with_keypoints(lambda k: k.extend([1, 2, 3])))),
        ["ann.json", "keypoint"]),
    "NaN coordinate in GT": lambda c: (
        c.train(make_dataset(c.tmp / "ds", with_keypoints(nan_keypoint))), ["ann.json", "keypoints", "NaN"]),
    "NaN coordinate in GT (eval)": lambda c: (
        c.eval_data(make_dataset(c.tmp / "ds", with_keypoints(nan_keypoint))), ["ann.json", "keypoints"]),
    "annotation of an unknown image": lambda c: (
        c.train(make_dataset(c.tmp / "ds", {**coco_gt(), "images": []})), ["ann.json", "image_id"]),
    "dataset YAML with a missing split": lambda c: (
        c.eval_data(make_dataset(c.tmp / "ds"), "--split", "test"), ["dataset.yaml", "'test'"]),
    "dataset not found": lambda c: (c.train(c.tmp / "nowhere"), ["nowhere"]),
    "every training image missing": lambda c: (
        c.train(make_dataset(c.tmp / "ds", copy_images=False)), ["ann.json"]),
    "train output under a file": lambda c: (
        c.train(make_dataset(c.tmp / "ds"))[:4] + [c.file("afile", "x") / "run"] + c.train("x")[5:],
        ["afile", "is not a folder"]),
    "eval output under a file": lambda c: (
        c.eval_data(make_dataset(c.tmp / "ds"))[:6] + [c.file("afile", "x") / "ev"] + c.eval_data(c.tmp)[7:],
        ["afile", "is not a folder"]),
    # ---- results files (eval --gt --results)
    "results: wrong keypoint length": lambda c: (
        c.eval_gt(lambda r: r["keypoints"].pop()), ["results.json", "result 0", "keypoints"]),
    "results: unknown image id": lambda c: (
        c.eval_gt(lambda r: r.update(image_id=424242)), ["results.json", "424242"]),
    "results: NaN score": lambda c: (c.eval_gt(lambda r: r.update(score=float("nan"))), ["results.json", "score"]),
    "results: NaN keypoint": lambda c: (
        c.eval_gt(lambda r: r["keypoints"].__setitem__(4, float("nan"))), ["results.json", "keypoints[4]"]),
    "results: malformed JSON": lambda c: (c.eval_gt(None, "[{"), ["results.json", "JSON"]),
    "results: not a list": lambda c: (c.eval_gt(None, '{"a": 1}'), ["results.json", "array"]),
    "results: missing file": lambda c: (
        ["eval", "--gt", COCO_GT, "--results", c.tmp / "none.json"], ["none.json"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_error_case(case, ckpt, tmp_path, capsys):
    ctx = Ctx(tmp_path, ckpt)
    argv, names = ERROR_CASES[case](ctx)
    rc, _, err = cli(argv, capsys)
    assert_one_line_error(rc, err, *names)
    assert files_in(ctx.out) == [], f"half-written output: {files_in(ctx.out)}"
    leftovers = [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
    assert leftovers == []


# ------------------------------------------------------------------------------- unpickling
def test_pickled_object_is_refused_by_every_entry_point(ckpt, tmp_path, capsys):
    """A .pt with an arbitrary object is refused everywhere, and the object never runs."""
    evil, marker = evil_pt(tmp_path)
    data = make_dataset(tmp_path / "ds")
    out = tmp_path / "out"
    runs = {
        "predict": ["predict", SKIERS, "--checkpoint", evil, "--out", out, "--quiet"],
        "eval": ["eval", "--checkpoint", evil, "--data", data, "--out", out, "--quiet"],
        "train --resume": [
            "train",
            "--data",
            data,
            "--out",
            out,
            "--resume",
            evil,
            "--input-size",
            SIZE,
            "--workers",
            "0",
            "--val-every",
            "0",
            "--quiet",
        ],  # fmt: skip
        "export": ["export", "--checkpoint", evil, "--output", out / "m.onnx"],
        "eval --rescore": [
            "eval",
            "--checkpoint",
            ckpt,
            "--data",
            data,
            "--out",
            out,
            "--rescore",
            evil,
            "--quiet",
        ],
    }
    for name, argv in runs.items():
        rc, _, err = cli(argv, capsys)
        line = assert_one_line_error(rc, err, "evil.pt")
        assert any(w in line for w in ("safely", "Unsupported global", "safetensors")), (name, line)
        assert not marker.exists(), f"{name} executed the pickle"
    assert [p for p in files_in(out) if p.suffix in (".json", ".onnx", ".pt", ".safetensors")] == []

    from grmpose.checkpoint import CheckpointError, load_model, read_checkpoint

    for loader in (read_checkpoint, load_model):
        with pytest.raises(CheckpointError, match="evil.pt"):
            loader(evil)
    assert not marker.exists()


def test_training_checkpoint_round_trips_under_weights_only(tmp_path):
    """What the trainer writes loads with weights_only=True (so the refusal above costs nothing)."""
    model = build_model("tiny", COCO)
    opt = torch.optim.Adam(model.parameters())
    path = save_training_checkpoint(
        tmp_path / "last.pt", model, get_preset("tiny"), COCO, optimizer=opt.state_dict(),
        rng={"torch": torch.get_rng_state()}, epoch=1, step=2,
    )  # fmt: skip
    payload = torch.load(path, weights_only=True)
    assert payload["epoch"] == 1 and set(payload["model"]) == set(model.state_dict())


# ---------------------------------------------------------------------- inputs that must work
def predict_ok(ctx: Ctx, source: Path, capsys, out: Path | None = None) -> tuple[dict, list, list]:
    out = out or ctx.out
    rc, stdout, err = cli(["predict", source, "--checkpoint", ctx.ckpt, "--out", out, "--quiet"], capsys)
    assert rc == 0, err
    assert "Traceback" not in err
    summary = json.loads(stdout)
    results = json.loads((out / "results.json").read_text())
    images = json.loads((out / "images.json").read_text())["images"]
    return summary, results, images


def _mode_image(mode: str) -> tuple[str, bytes]:
    img = small_rgb()
    if mode == "I;16":
        arr = (np.asarray(img.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
        return "png", png_bytes(Image.fromarray(arr))
    if mode == "P":
        return "png", png_bytes(img.quantize(16))
    if mode == "CMYK":
        buf = io.BytesIO()
        img.convert("CMYK").save(buf, format="JPEG")
        return "jpg", buf.getvalue()
    if mode == "1x1":
        return "png", png_bytes(Image.new("RGB", (1, 1), (10, 20, 30)))
    return "png", png_bytes(img.convert(mode))


@pytest.mark.parametrize("mode", ["1x1", "L", "RGBA", "I;16", "CMYK", "P"])
def test_unusual_images_work(mode, ckpt, tmp_path, capsys):
    """1x1, grayscale, RGBA, 16-bit PNG, CMYK JPEG and palette PNG are predicted as RGB."""
    ext, data = _mode_image(mode)
    path = tmp_path / f"img.{ext}"
    path.write_bytes(data)
    with Image.open(path) as im:
        assert im.mode == ("I;16" if mode == "I;16" else "CMYK" if mode == "CMYK" else im.mode)
        size = im.size
    summary, results, images = predict_ok(Ctx(tmp_path, ckpt), path, capsys)
    assert summary["processed"] == 1 and summary["skipped"] == 0
    assert (images[0]["width"], images[0]["height"]) == size
    with Image.open(tmp_path / "out" / "img.jpg") as pic:
        assert pic.size == size and pic.mode == "RGB"


def test_exif_rotated_photo_gives_poses_in_the_upright_frame(ckpt, tmp_path, capsys):
    """A phone photo stored sideways with EXIF orientation 6: poses as for the upright image."""
    with Image.open(SKIERS) as im:
        stored = im.convert("RGB").transpose(Image.Transpose.ROTATE_90)  # 360 x 640 on disk
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    rotated = tmp_path / "src" / "phone.jpg"
    rotated.parent.mkdir()
    stored.save(rotated, quality=95, exif=exif)
    with Image.open(rotated) as im:
        upright = np.rot90(np.asarray(im.convert("RGB")), k=-1)  # exactly what the viewer shows
    reference = tmp_path / "ref" / "phone.png"
    reference.parent.mkdir()
    Image.fromarray(np.ascontiguousarray(upright)).save(reference)

    ctx = Ctx(tmp_path, ckpt)
    _, res_rot, img_rot = predict_ok(ctx, rotated, capsys, tmp_path / "out_rot")
    _, res_ref, img_ref = predict_ok(ctx, reference, capsys, tmp_path / "out_ref")
    assert (img_rot[0]["width"], img_rot[0]["height"]) == (640, 360)  # swapped w.r.t. the stored 360 x 640
    assert img_rot[0]["width"] == img_ref[0]["width"] and img_rot[0]["height"] == img_ref[0]["height"]
    with Image.open(tmp_path / "out_rot" / "phone.jpg") as pic:
        assert pic.size == (640, 360)
    assert len(res_rot) == len(res_ref) > 0
    for a, b in zip(res_rot, res_ref):
        np.testing.assert_allclose(a["keypoints"], b["keypoints"], atol=0.02)
        assert a["score"] == pytest.approx(b["score"], abs=1e-3)


def test_eval_of_a_results_file_reports_coverage(tmp_path, capsys):
    """Every GT image is accounted for: those without any prediction are counted, not dropped."""
    gt = coco_gt((785, 7281))
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    res = [{"image_id": 785, "category_id": 1, "keypoints": [1.0] * 51, "score": 0.5}]
    (tmp_path / "res.json").write_text(json.dumps(res))
    rc, stdout, err = cli(["eval", "--gt", tmp_path / "gt.json", "--results", tmp_path / "res.json"], capsys)
    assert rc == 0, err
    assert "1 of 2 images evaluated (1 without predictions, 1 of them with labelled people)" in stdout


def test_bad_image_in_a_folder_is_skipped_and_counted(ckpt, tmp_path, capsys, caplog):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(png_bytes(small_rgb()))
    (src / "b.jpg").write_bytes(real_jpeg_bytes()[:2000])  # truncated
    (src / "c.png").write_bytes(png_header_only(20000, 20000))  # too large
    with caplog.at_level(logging.WARNING):
        summary, results, images = predict_ok(Ctx(tmp_path, ckpt), src, capsys)
    assert summary["processed"] == 1 and summary["skipped"] == 2
    assert "b.jpg" in caplog.text and "c.png" in caplog.text and "skipped 2" in caplog.text
    assert [im["file_name"] for im in images] == ["a.png"]


def test_eval_reports_images_missing_on_disk(ckpt, tmp_path, capsys, caplog):
    """GT images that cannot be read stay in the GT (they cost recall) and are counted."""
    data = make_dataset(tmp_path / "ds", coco_gt((785, 7281)))
    (tmp_path / "ds" / "images" / "000000007281.jpg").unlink()
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        rc, stdout, err = cli(["eval", "--checkpoint", ckpt, "--data", data, "--out", out, "--quiet"], capsys)
    assert rc == 0, err
    assert "1 of 2 images evaluated" in stdout and "1 unreadable" in stdout
    assert "000000007281.jpg" in caplog.text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images"] == 1 and metrics["images_total"] == 2 and metrics["images_unreadable"] == 1
    assert (out / "results.json").is_file()


def test_train_skips_images_missing_on_disk_with_a_count(tmp_path, capsys, caplog):
    data = make_dataset(tmp_path / "ds", coco_gt((785, 7281, 40083)))
    (tmp_path / "ds" / "images" / "000000040083.jpg").unlink()
    (tmp_path / "ds" / "images" / "000000007281.jpg").write_bytes(b"broken")  # unreadable, not missing
    out = tmp_path / "out"
    argv = Ctx(tmp_path, Path("unused")).train(data, "--batch-size", "1", "--max-steps", "2")
    with caplog.at_level(logging.WARNING):
        rc, stdout, err = cli(argv, capsys)
    assert rc == 0, err
    summary = json.loads(stdout)
    assert summary["missing_images"] == 1 and summary["skipped_images"] >= 1
    assert "000000040083.jpg" in caplog.text and "1 of 3 training images" in caplog.text
    assert "000000007281.jpg" in caplog.text
    assert (out / "last.safetensors").is_file()


def test_negative_coordinates_are_unlabelled_with_a_warning(tmp_path, caplog):
    """Decision: a labelled keypoint at x < 0 or y < 0 is treated as unlabelled (v = 0), warned once per file."""
    from grmpose.data.coco import load_coco_keypoints

    gt = coco_gt()
    kps = gt["annotations"][0]["keypoints"]
    j = next(i for i in range(0, len(kps), 3) if kps[i + 2] > 0)
    kps[j] = -5.0
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(gt))
    with caplog.at_level(logging.WARNING):
        records = load_coco_keypoints(ann, tmp_path, COCO)
    assert "ann.json" in caplog.text and "negative" in caplog.text and "1 labelled keypoint" in caplog.text
    person = records[0].keypoints[0]
    assert person[j // 3, 2] == 0 and (person[:, 2] > 0).sum() == sum(v > 0 for v in kps[2::3]) - 1


# ----------------------------------------------------------------------------- real processes
@pytest.mark.parametrize("case", ["truncated JPEG", "results: NaN score", "corrupt checkpoint (predict)"])
def test_error_in_a_real_process(case, ckpt, tmp_path):
    ctx = Ctx(tmp_path, ckpt)
    argv, names = ERROR_CASES[case](ctx)
    proc = subprocess.run(
        [sys.executable, "-m", "grmpose.cli", *map(str, argv)],
        capture_output=True, text=True, timeout=120, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 2
    assert_one_line_error(proc.returncode, proc.stderr, *names)
    assert files_in(ctx.out) == []


def test_corpus_size():
    # 43 error cases + 4 pickle entry points + 6 image kinds + EXIF + folder skip + eval/train missing + negative
    assert len(ERROR_CASES) >= 30


def test_python_inputs_of_a_wrong_shape_say_what_is_expected(ckpt):
    """An empty image array and a network input whose sides are not multiples of 32: one clear
    ValueError each, instead of a division by zero or a size mismatch deep inside the network."""
    from grmpose.api import PoseEstimator

    estimator = PoseEstimator.from_checkpoint(ckpt)
    with pytest.raises(ValueError, match=r"image array is empty: shape \(0, 10, 3\)"):
        estimator(np.zeros((0, 10, 3), np.uint8))
    assert isinstance(estimator(np.zeros((7, 5, 3), np.uint8)), list)  # small but not empty: works
    model = build_model("tiny")
    with pytest.raises(ValueError, match=r"multiples of 32, got \(1, 3, 70, 96\)"):
        model(torch.zeros(1, 3, 70, 96))
    with pytest.raises(ValueError, match=r"B x 3 x H x W"):
        model(torch.zeros(3, 64, 64))
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 96))[0].shape == (1, 18, 16, 24)
