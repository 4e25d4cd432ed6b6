"""Tests of grmpose.data.coco (loading, ignore masks, images, layouts) and grmpose.data.dataset."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from grmpose.data.coco import (
    DataError,
    IgnoreRegion,
    ImageRecord,
    annotated_images,
    coco_layout,
    crowdpose_layout,
    ignore_mask,
    load_coco_keypoints,
    load_image,
    load_split,
    resolve_dataset,
    resolve_dataset_parts,
    rle_decode,
)
from grmpose.data.dataset import (
    MEAN,
    OUTPUT_STRIDE,
    STD,
    PoseDataset,
    collate,
    denormalize_image,
    normalize_image,
)
from grmpose.data.transforms import AugmentParams, invert_affine
from grmpose.spec import COCO, CROWDPOSE, KeypointSpec
from grmpose.train import TargetCollate, TrainConfig

DATA = Path(__file__).parent / "data"
COCO_JSON = DATA / "coco" / "person_keypoints.json"
COCO_IMAGES = DATA / "coco" / "images"
CROWDPOSE_JSON = DATA / "crowdpose" / "annotations.json"
OCHUMAN_JSON = DATA / "ochuman" / "person_keypoints.json"
ISCROWD_JSON = DATA / "coco_iscrowd" / "gt.json"


@pytest.fixture(scope="module")
def coco_records() -> list[ImageRecord]:
    return load_coco_keypoints(COCO_JSON, COCO_IMAGES, COCO)


def by_id(records: list[ImageRecord]) -> dict[int, ImageRecord]:
    return {r.image_id: r for r in records}


# ---------------------------------------------------------------------------------- loading


def test_coco_sample_counts(coco_records):
    assert len(coco_records) == 5
    assert sum(r.num_people for r in coco_records) == 15
    assert sum(len(r.ignore) for r in coco_records) == 9
    assert all(reg.reason == "unlabelled" for r in coco_records for reg in r.ignore)
    recs = by_id(coco_records)
    assert recs[7281].num_people == 3 and len(recs[7281].ignore) == 7
    assert recs[785].num_people == 1 and recs[785].ignore == []
    for r in coco_records:
        assert r.keypoints.dtype == np.float32 and r.keypoints.shape == (r.num_people, COCO.num_keypoints, 3)
        assert r.boxes.shape == (r.num_people, 4) and r.areas.shape == (r.num_people,)
        assert (r.keypoints[:, :, 2] > 0).any(axis=1).all()
        assert r.crowd_index is None
    assert recs[785].path == COCO_IMAGES / "000000000785.jpg"
    assert (recs[785].width, recs[785].height) == (640, 425)


def test_coco_values_match_json(coco_records):
    raw = json.loads(COCO_JSON.read_text())
    anns = {a["id"]: a for a in raw["annotations"]}
    for r in coco_records:
        for kp, box, area, ann_id in zip(r.keypoints, r.boxes, r.areas, r.ann_ids):
            a = anns[int(ann_id)]
            np.testing.assert_allclose(kp.reshape(-1), a["keypoints"], rtol=1e-6)
            np.testing.assert_allclose(box, a["bbox"], rtol=1e-6)
            assert area == pytest.approx(a["area"], rel=1e-6)
            assert a["image_id"] == r.image_id


def test_crowdpose_quirks():
    records = by_id(load_coco_keypoints(CROWDPOSE_JSON, DATA / "crowdpose" / "images", CROWDPOSE))
    raw = json.loads(CROWDPOSE_JSON.read_text())
    assert set(records) == {106848, 103319}
    assert records[106848].crowd_index == pytest.approx(0.33)
    assert records[103319].crowd_index == pytest.approx(0.39)
    # "has keypoints" is decided from v > 0, not from num_keypoints (which omits head and neck)
    expected = {}
    for a in raw["annotations"]:
        labelled = (np.asarray(a["keypoints"]).reshape(-1, 3)[:, 2] > 0).any() and not a["iscrowd"]
        expected.setdefault(a["image_id"], [0, 0])[0 if labelled else 1] += 1
    for image_id, (n_people, n_ignore) in expected.items():
        assert records[image_id].num_people == n_people
        assert len(records[image_id].ignore) == n_ignore
    assert sum(r.num_people for r in records.values()) == 4
    # no `area` field: area is the box area
    for r in records.values():
        np.testing.assert_allclose(r.areas, r.boxes[:, 2] * r.boxes[:, 3], rtol=1e-6)
        assert r.keypoints.shape[1:] == (CROWDPOSE.num_keypoints, 3)


def test_iscrowd_region_without_segmentation():
    (rec,) = load_coco_keypoints(ISCROWD_JSON, DATA, COCO)
    assert rec.num_people == 11
    crowd = [reg for reg in rec.ignore if reg.reason == "crowd"]
    assert len(crowd) == 1 and crowd[0].segmentation is None
    assert len(rec.ignore) == 3
    only_crowd = ImageRecord(**{**rec.__dict__, "ignore": crowd})
    m = ignore_mask(only_crowd, rec.height, rec.width)
    assert m.sum() == 502 * 118  # box [137, 85, 502, 118]
    ys, xs = np.nonzero(m)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (137, 638, 85, 202)


def test_crowd_with_labelled_keypoints_is_ignored(tmp_path):
    raw = json.loads(CROWDPOSE_JSON.read_text())
    ann = raw["annotations"][0]
    ann["iscrowd"] = 1  # keypoints stay labelled, as in 66 CrowdPose val crowd regions
    path = tmp_path / "a.json"
    path.write_text(json.dumps(raw))
    rec = by_id(load_coco_keypoints(path, tmp_path, CROWDPOSE))[ann["image_id"]]
    assert ann["id"] not in rec.ann_ids.tolist()
    assert [r.reason for r in rec.ignore if r.ann_id == ann["id"]] == ["crowd"]


def test_negative_images_kept_and_category_filter(tmp_path):
    raw = json.loads(COCO_JSON.read_text())
    raw["images"].append({"id": 1, "file_name": "neg.jpg", "width": 10, "height": 10})
    raw["categories"].append({"id": 2, "name": "dog"})
    dog = dict(raw["annotations"][0], id=99, category_id=2)
    raw["annotations"].append(dog)
    path = tmp_path / "a.json"
    path.write_text(json.dumps(raw))
    records = by_id(load_coco_keypoints(path, tmp_path, COCO))
    assert records[1].num_people == 0 and records[1].keypoints.shape == (0, COCO.num_keypoints, 3)
    assert sum(r.num_people for r in records.values()) == 15  # the dog annotation is skipped


def _write(tmp_path: Path, content: object, name: str = "ann.json") -> Path:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def _minimal(keypoints: list) -> dict:
    return {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 20, "height": 10}],
        "annotations": [{"id": 7, "image_id": 1, "bbox": [0, 0, 5, 5], "iscrowd": 0, "keypoints": keypoints}],
    }


def test_errors_name_file_and_field(tmp_path):
    k = COCO.num_keypoints
    with pytest.raises(DataError, match="missing.json.*not found"):
        load_coco_keypoints(tmp_path / "missing.json", tmp_path, COCO)
    with pytest.raises(DataError, match=r"bad\.json: not valid JSON"):
        load_coco_keypoints(_write(tmp_path, '{"images": [', "bad.json"), tmp_path, COCO)
    with pytest.raises(DataError, match=r"noimg\.json.*'images'"):
        load_coco_keypoints(_write(tmp_path, {"annotations": []}, "noimg.json"), tmp_path, COCO)
    with pytest.raises(DataError, match=r"noann\.json.*'annotations'"):
        load_coco_keypoints(_write(tmp_path, {"images": []}, "noann.json"), tmp_path, COCO)
    with pytest.raises(DataError, match=r"short\.json: annotation id 7: 'keypoints' has 6 numbers, expected"):
        load_coco_keypoints(_write(tmp_path, _minimal([1, 2, 2, 3, 4, 2]), "short.json"), tmp_path, COCO)
    nan = _minimal([float("nan"), 1.0, 2.0] + [0.0] * (3 * k - 3))
    with pytest.raises(DataError, match=r"nan\.json: annotation id 7\.keypoints: contains NaN"):
        load_coco_keypoints(_write(tmp_path, nan, "nan.json"), tmp_path, COCO)
    inf = _minimal([1.0, 1.0, 2.0] + [0.0] * (3 * k - 3))
    inf["annotations"][0]["bbox"] = [0, 0, float("inf"), 1]
    with pytest.raises(DataError, match=r"inf\.json: annotation id 7\.bbox: contains NaN or infinite"):
        load_coco_keypoints(_write(tmp_path, inf, "inf.json"), tmp_path, COCO)
    orphan = _minimal([1.0, 1.0, 2.0] + [0.0] * (3 * k - 3))
    orphan["annotations"][0]["image_id"] = 5
    with pytest.raises(DataError, match=r"orphan\.json: annotation id 7: image_id 5"):
        load_coco_keypoints(_write(tmp_path, orphan, "orphan.json"), tmp_path, COCO)
    badv = _minimal([1.0, 1.0, 3.0] + [0.0] * (3 * k - 3))
    with pytest.raises(DataError, match=r"badv\.json: annotation id 7: visibility"):
        load_coco_keypoints(_write(tmp_path, badv, "badv.json"), tmp_path, COCO)
    noname = _minimal([])
    del noname["images"][0]["file_name"]
    with pytest.raises(DataError, match=r"noname\.json: image id 1: missing field 'file_name'"):
        load_coco_keypoints(_write(tmp_path, noname, "noname.json"), tmp_path, COCO)


def test_wrong_spec_names_annotation():
    with pytest.raises(DataError, match=r"annotations\.json: annotation id \d+: 'keypoints' has 42 numbers"):
        load_coco_keypoints(CROWDPOSE_JSON, DATA, COCO)


# ---------------------------------------------------------------------------------- masks


def test_rle_decode_matches_pycocotools_on_ochuman():
    raw = json.loads(OCHUMAN_JSON.read_text())
    assert len(raw["annotations"]) == 5
    for a in raw["annotations"]:
        seg = a["segmentation"]
        assert isinstance(seg["counts"], str)
        ref = mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()}).astype(bool)
        ours = rle_decode(seg)
        assert ours.shape == tuple(seg["size"]) and ours.sum() > 1000
        np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("seed", range(5))
def test_rle_round_trip_random_masks(seed):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(1, 60, size=2)
    # blobs of varied run lengths, including long runs (multi-group varints, negative differences)
    mask = rng.random((h, w)) < rng.uniform(0.05, 0.95)
    if seed == 0:
        mask[:] = True
    if seed == 1:
        mask[:] = False
    compressed = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    np.testing.assert_array_equal(
        rle_decode({"size": [int(h), int(w)], "counts": compressed["counts"].decode()}), mask
    )
    # uncompressed counts: runs computed by a plain loop, checked through pycocotools' conversion
    runs, current, length = [], 0, 0
    for value in mask.T.reshape(-1):  # column-major pixel order, first run counts zeros
        if int(value) != current:
            runs.append(length)
            current, length = int(value), 0
        length += 1
    runs.append(length)
    rle = {"size": [int(h), int(w)], "counts": runs}
    ref = mask_utils.decode(mask_utils.frPyObjects(rle, int(h), int(w))).astype(bool)
    np.testing.assert_array_equal(ref, mask)  # the runs are valid
    np.testing.assert_array_equal(rle_decode(rle), ref)


def test_polygon_masks_match_area_and_pycocotools(coco_records):
    raw = json.loads(COCO_JSON.read_text())
    images = {i["id"]: i for i in raw["images"]}
    for a in raw["annotations"]:
        img = images[a["image_id"]]
        h, w = img["height"], img["width"]
        region = IgnoreRegion(
            segmentation=a["segmentation"], bbox=tuple(a["bbox"]), ann_id=a["id"], reason="x"
        )
        rec = ImageRecord(
            a["image_id"], "", Path(), w, h, np.zeros((0, 17, 3)), np.zeros((0, 4)), np.zeros(0)
        )
        rec.ignore = [region]
        ours = ignore_mask(rec, h, w)
        ref = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], h, w))).astype(
            bool
        )
        if a["area"] > 500:
            assert ours.sum() == pytest.approx(a["area"], rel=0.1)
            iou = (ours & ref).sum() / (ours | ref).sum()
            assert iou > 0.85, (a["id"], iou)
        else:
            assert abs(int(ours.sum()) - a["area"]) < 0.5 * a["area"] + 20


def test_ignore_mask_of_unlabelled_people(coco_records):
    rec = by_id(coco_records)[7281]
    m = ignore_mask(rec, rec.height, rec.width)
    assert m.dtype == bool and m.shape == (rec.height, rec.width)
    raw = json.loads(COCO_JSON.read_text())
    total = sum(a["area"] for a in raw["annotations"] if a["image_id"] == 7281 and a["num_keypoints"] == 0)
    assert m.sum() == pytest.approx(total, rel=0.35)


def test_rle_of_other_size_is_resized():
    rle = mask_utils.encode(np.asfortranarray(np.ones((10, 20), np.uint8)))
    region = IgnoreRegion({"size": [10, 20], "counts": rle["counts"].decode()}, None, 1, "crowd")
    rec = ImageRecord(
        1, "", Path(), 40, 20, np.zeros((0, 17, 3)), np.zeros((0, 4)), np.zeros(0), ignore=[region]
    )
    m = ignore_mask(rec, 20, 40)
    assert m.shape == (20, 40) and m.all()


# ---------------------------------------------------------------------------------- images


def test_load_real_jpeg():
    img = load_image(COCO_IMAGES / "000000000785.jpg")
    assert img.dtype == np.uint8 and img.shape == (425, 640, 3)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "1", "LA", "I;16"])
def test_load_image_modes(tmp_path, mode):
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[:, :4] = (250, 200, 150)
    base = Image.fromarray(rgb)
    if mode == "I;16":
        arr = np.full((6, 8), 65535, np.uint16)
        arr[:, :4] = 0
        img = Image.fromarray(arr)
        assert img.mode.startswith("I")
    elif mode == "P":
        img = base.quantize(4)
    else:
        img = base.convert(mode)
    path = tmp_path / ("a.jpg" if mode == "CMYK" else "a.png")
    img.save(path)
    out = load_image(path)
    assert out.dtype == np.uint8 and out.shape == (6, 8, 3)
    if mode == "I;16":
        assert (out[:, :4] == 0).all() and (out[:, 4:] == 255).all()
    elif mode in ("RGBA", "P"):
        np.testing.assert_array_equal(out[0, 0], (250, 200, 150))
    else:
        assert out[:, :4].mean() > out[:, 4:].mean() + 100


def test_load_image_exif_orientation(tmp_path):
    arr = np.zeros((4, 10, 3), np.uint8)
    arr[0, 0] = 255
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rot.png"
    img.save(path, exif=exif)
    assert load_image(path).shape == (10, 4, 3)
    assert load_image(path, exif_transpose=False).shape == (4, 10, 3)


def _png_header_only(path: Path, w: int, h: int) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def test_load_image_errors(tmp_path):
    with pytest.raises(DataError, match="nope.jpg.*not found"):
        load_image(tmp_path / "nope.jpg")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty.jpg.*empty"):
        load_image(empty)
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(DataError, match="junk.jpg: cannot read image"):
        load_image(junk)
    text = tmp_path / "notes.png"
    text.write_text("hello")
    with pytest.raises(DataError, match="notes.png: cannot read image"):
        load_image(text)
    truncated = tmp_path / "cut.jpg"
    data = (COCO_IMAGES / "000000000785.jpg").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.jpg: cannot read image"):
        load_image(truncated)
    huge = tmp_path / "huge.png"
    _png_header_only(huge, 20000, 20000)  # 400 MP declared, no pixel data: refused from the header
    with pytest.raises(DataError, match="huge.png: image too large"):
        load_image(huge)
    _png_header_only(huge, 12000, 10000)  # 120 MP: above our limit, below PIL's own guard
    with pytest.raises(DataError, match="huge.png: image too large: 12000x10000 pixels exceeds"):
        load_image(huge)
    with pytest.raises(DataError, match=r"image too large: 640x425 pixels exceeds the limit of 1000"):
        load_image(COCO_IMAGES / "000000000785.jpg", max_pixels=1000)


# ---------------------------------------------------------------------------------- layouts


def test_layouts(tmp_path):
    coco = tmp_path / "coco"
    (coco / "annotations").mkdir(parents=True)
    (coco / "val2017").mkdir()
    (coco / "annotations" / "person_keypoints_val2017.json").write_text("{}")
    assert coco_layout(coco, "val") == (
        coco / "annotations" / "person_keypoints_val2017.json",
        coco / "val2017",
    )
    ann, images, spec = resolve_dataset(str(coco), "val")
    assert spec is COCO and images == coco / "val2017"
    with pytest.raises(DataError, match="train"):
        resolve_dataset(coco, "train")

    cp = tmp_path / "crowdpose"
    (cp / "json").mkdir(parents=True)
    (cp / "images").mkdir()
    (cp / "json" / "crowdpose_test.json").write_text("{}")
    assert crowdpose_layout(cp, "test") == (cp / "json" / "crowdpose_test.json", cp / "images")
    assert resolve_dataset(cp, "test")[2] is CROWDPOSE
    (cp / "crowdpose_val.json").write_text("{}")
    assert crowdpose_layout(cp, "val")[0] == cp / "crowdpose_val.json"

    with pytest.raises(DataError, match="not a recognised dataset folder"):
        resolve_dataset(tmp_path, "val")
    with pytest.raises(DataError, match="not found"):
        resolve_dataset(tmp_path / "nothing", "val")


def test_unknown_folder_error_says_how_to_use_its_json(tmp_path):
    """A folder with one COCO-format JSON file and an image folder but no known layout: the error's
    first line (all the command line prints) names the dataset.yaml to write, and writing it works."""
    root = tmp_path / "mine"
    shutil.copytree(DATA / "coco" / "images", root / "images")
    shutil.copy(DATA / "coco" / "person_keypoints.json", root / "person_keypoints.json")
    with pytest.raises(DataError) as err:
        resolve_dataset(root, "train")
    first = str(err.value).splitlines()[0]
    assert "dataset.yaml" in first and "person_keypoints.json" in first and not first.endswith(":")
    lines = re.findall(r"'([a-z]+: [^']+)'", first)
    assert lines == ["spec: coco", "annotations: person_keypoints.json", "images: images"]
    (root / "dataset.yaml").write_text("\n".join(lines) + "\n")
    ann, images, spec = resolve_dataset(root, "train")
    assert (ann, images, spec) == (root / "person_keypoints.json", root / "images", COCO)
    # nothing to go on: the expected file names of the known layouts, for the split asked
    (root / "dataset.yaml").unlink()
    (root / "person_keypoints.json").unlink()
    with pytest.raises(DataError, match=r"person_keypoints_val2017\.json .*crowdpose_val\.json"):
        resolve_dataset(root, "val")


def test_yaml_descriptions(tmp_path):
    flat = tmp_path / "crowd.yaml"
    flat.write_text("annotations: ../data_cp/annotations.json\nimages: ../data_cp/images\nspec: crowdpose\n")
    (tmp_path.parent / "data_cp").mkdir(exist_ok=True)
    (tmp_path.parent / "data_cp" / "images").mkdir(exist_ok=True)
    (tmp_path.parent / "data_cp" / "annotations.json").write_text(CROWDPOSE_JSON.read_text())
    ann, images, spec = resolve_dataset(flat, "anything")
    assert spec is CROWDPOSE and ann.resolve() == (tmp_path.parent / "data_cp" / "annotations.json").resolve()

    folder = tmp_path / "synth"
    (folder / "images").mkdir(parents=True)
    (folder / "train.json").write_text("{}")
    (folder / "val.json").write_text("{}")
    (folder / "dataset.yaml").write_text(
        "spec:\n  name: stick\n  keypoints: [head, left_hand, right_hand]\n  sigmas: [0.1, 0.1, 0.1]\n"
        "  flip_pairs: [[left_hand, right_hand]]\n  skeleton: [[0, 1], [0, 2]]\n"
        "train: {annotations: train.json, images: images}\nval: {annotations: val.json, images: images}\n"
    )
    ann, images, spec = resolve_dataset(folder, "val")
    assert ann == folder / "val.json" and images == folder / "images"
    assert isinstance(spec, KeypointSpec) and spec.num_keypoints == 3 and spec.flip_pairs == ((1, 2),)
    with pytest.raises(DataError, match=r"dataset\.yaml: no split 'test' \(available: train, val\)"):
        resolve_dataset(folder, "test")
    (folder / "dataset.yaml").write_text("train: {annotations: train.json, images: images}\n")
    with pytest.raises(DataError, match="missing field 'spec'"):
        resolve_dataset(folder, "train")
    (folder / "dataset.yaml").write_text("spec: coco\ntrain: {annotations: gone.json, images: images}\n")
    with pytest.raises(DataError, match="annotation file not found"):
        resolve_dataset(folder, "train")
    (folder / "dataset.yaml").write_text("spec: [unclosed\n")
    with pytest.raises(DataError, match="not valid YAML"):
        resolve_dataset(folder, "train")


# ---------------------------------------------------------------------------------- dataset


def _available(records: list[ImageRecord]) -> list[ImageRecord]:
    return [r for r in records if r.path.is_file()]


def test_dataset_sample_shapes(coco_records):
    ds = PoseDataset(_available(coco_records), COCO, input_size=128, augment=True, seed=3)
    sample = ds[1]
    assert sample["image"].shape == (3, 128, 128) and sample["image"].dtype == torch.float32
    assert sample["mask"].shape == (32, 32) and sample["mask"].dtype == torch.float32
    kp = sample["keypoints"]
    assert kp.dtype == torch.float32 and kp.ndim == 3 and kp.shape[1:] == (COCO.num_keypoints, 3)
    assert sample["image_id"] == ds.records[1].image_id
    batch = collate([ds[0], ds[1]])
    assert batch["image"].shape == (2, 3, 128, 128) and batch["mask"].shape == (2, 32, 32)
    assert isinstance(batch["keypoints"], list) and len(batch["keypoints"]) == 2
    assert batch["image_id"].tolist() == [ds.records[0].image_id, ds.records[1].image_id]


def test_dataset_reproducible(coco_records):
    recs = _available(coco_records)
    a = PoseDataset(recs, COCO, 128, augment=True, seed=1)
    b = PoseDataset(recs, COCO, 128, augment=True, seed=1)
    s1, s2 = a[1], b[1]
    for key in ("image", "keypoints", "mask", "matrix"):
        assert torch.equal(s1[key], s2[key])
    b.set_epoch(1)
    assert not torch.equal(b[1]["matrix"], s1["matrix"])
    b.set_epoch(0)
    assert torch.equal(b[1]["image"], s1["image"])  # independent of the order of draws
    c = PoseDataset(recs, COCO, 128, augment=True, seed=2)
    assert not torch.equal(c[1]["matrix"], s1["matrix"])


def test_dataset_eval_mode_keypoints_and_mask(coco_records):
    rec = by_id(coco_records)[7281]
    ds = PoseDataset([rec], COCO, 256, augment=False)
    sample = ds[0]
    M = sample["matrix"].double().numpy()
    kp = rec.keypoints.astype(np.float64)
    expected = kp[:, :, :2] @ M[:, :2].T + M[:, 2]
    labelled = kp[:, :, 2] > 0
    np.testing.assert_allclose(sample["keypoints"][:, :, :2].numpy()[labelled], expected[labelled], atol=1e-3)
    np.testing.assert_array_equal(sample["keypoints"][:, :, 2].numpy(), kp[:, :, 2])
    # naive twin of the mask warp: map cell j looks up the image pixel nearest to inv(M)(4 j)
    full = ignore_mask(rec, rec.height, rec.width)
    inv = invert_affine(M)
    n = 256 // OUTPUT_STRIDE
    naive = np.ones((n, n), np.float32)
    for j in range(n):
        for i in range(n):
            x, y = inv @ np.array([OUTPUT_STRIDE * i, OUTPUT_STRIDE * j, 1.0])
            xi, yi = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
            if 0 <= xi < rec.width and 0 <= yi < rec.height and full[yi, xi]:
                naive[j, i] = 0.0
    mask = sample["mask"].numpy()
    assert (mask == 0).sum() > 0
    assert (mask != naive).sum() <= 2


def test_dataset_skips_unreadable_images(coco_records, caplog, tmp_path):
    # 3 of the 5 image files absent: keep only images 785 and 7281 next to the records
    kept = {785, 7281}
    for r in coco_records:
        if r.image_id in kept:
            shutil.copy(r.path, tmp_path / r.path.name)
    coco_records = [dataclasses.replace(r, path=tmp_path / r.path.name) for r in coco_records]
    ds = PoseDataset(coco_records, COCO, 64, augment=False)
    present = [r.path.is_file() for r in coco_records]
    expected_skips = 0
    for i in range(len(present)):
        j = i
        while not present[j % len(present)]:
            expected_skips += 1
            j += 1
    with caplog.at_level(logging.WARNING, logger="grmpose.data.dataset"):
        ids = [ds[i]["image_id"] for i in range(len(ds))]
    assert sum(present) == 2 and set(ids) == {785, 7281}
    assert ds.skipped == expected_skips > 0
    assert "skipping sample" in caplog.text
    broken = ImageRecord(
        1, "x.jpg", Path("/nonexistent/x.jpg"), 10, 10, np.zeros((0, 17, 3)), np.zeros((0, 4)), np.zeros(0)
    )
    with pytest.raises(DataError, match="no readable image"):
        PoseDataset([broken], COCO, 64, augment=False)[0]


def test_normalize_round_trip():
    img = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    t = normalize_image(img)
    assert t.shape == (3, 5, 7)
    np.testing.assert_allclose(
        t[:, 0, 0].numpy(), (img[0, 0] / 255.0 - np.array(MEAN)) / np.array(STD), rtol=1e-5
    )
    np.testing.assert_array_equal(denormalize_image(t), img)


# ------------------------------------------------------------- DEKR's training rules (issue 9)


def _one_image_dataset(tmp_path: Path, people: list[dict], size=(200, 160), spec=COCO) -> list[ImageRecord]:
    """A w x h grey PNG and a COCO JSON with the given annotations (keypoints as (x, y, v) rows)."""
    w, h = size
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(tmp_path / "img.png")
    anns = []
    for i, p in enumerate(people):
        kp = np.zeros((spec.num_keypoints, 3))
        kp[: len(p["joints"])] = p["joints"]
        anns.append({"id": i + 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "keypoints": kp.ravel().tolist(),
                     "bbox": p["bbox"], "area": p["area"], "num_keypoints": int((kp[:, 2] > 0).sum())})  # fmt: skip
    data = {"images": [{"id": 1, "file_name": "img.png", "width": w, "height": h}], "annotations": anns}
    (tmp_path / "gt.json").write_text(json.dumps(data))
    return load_coco_keypoints(tmp_path / "gt.json", tmp_path, spec)


class _FixedAugment(PoseDataset):
    """A dataset whose every sample uses the given augmentation."""

    def __init__(self, *args, fixed: AugmentParams, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fixed = fixed

    def params(self, index: int) -> AugmentParams:
        return self.fixed


def test_offset_weight_equals_dekr_area_times_final_scale(tmp_path):
    """DEKR restated: ``area = w*w + h*h`` of the person's joints in image pixels
    (``cal_area_2_torch``), ``area * final_scale`` with ``final_scale = (input / (200 * scale))^2``
    and ``scale = short / 200 * aug_scale`` (``RandomAffineTransform``), weight ``1 / sqrt(area)``.
    DEKR's code measures from the image origin, so the person's joints start at (0, 0) here, where
    its code and its paper agree."""
    joints = [(0.0, 0.0, 2), (60.0, 10.0, 2), (30.0, 90.0, 2), (45.0, 120.0, 1)]
    recs = _one_image_dataset(tmp_path, [{"joints": joints, "bbox": [0, 0, 60, 120], "area": 5000.0}])
    aug_scale, aug_rot, input_size, short = 1.25, 20.0, 128, 160
    ds = _FixedAugment(
        recs, COCO, input_size, augment=True, fixed=AugmentParams(rotation=aug_rot, scale=aug_scale)
    )
    batch = TargetCollate(input_size // OUTPUT_STRIDE)([ds[0]])
    xs, ys = [j[0] for j in joints], [j[1] for j in joints]
    area = (max(xs) - min(xs)) ** 2 + (max(ys) - min(ys)) ** 2
    final_scale = (input_size / (200 * (short / 200 * aug_scale))) ** 2
    expected = 1 / np.sqrt(area * final_scale)
    weights = batch["targets"]["offset_weights"][0]
    assert weights.max() > 0
    np.testing.assert_allclose(np.unique(weights[weights > 0].numpy()), [expected], rtol=1e-5)


def test_centre_from_all_joints_before_the_crop(tmp_path):
    """The centre is the mean of every labelled joint in the image, mapped by the crop's matrix,
    even when the crop cuts some joints off (DEKR computes it before the transform)."""
    joints = [(20.0, 20.0, 2), (40.0, 30.0, 2), (180.0, 140.0, 2)]
    recs = _one_image_dataset(tmp_path, [{"joints": joints, "bbox": [20, 20, 160, 120], "area": 9000.0}])
    ds = _FixedAugment(recs, COCO, 64, augment=True, fixed=AugmentParams(scale=0.5, translate=(60.0, 60.0)))
    sample = ds[0]
    M = sample["matrix"].double().numpy()
    mean = np.mean([j[:2] for j in joints], axis=0)
    np.testing.assert_allclose(sample["centers"][0, :2].numpy(), M[:, :2] @ mean + M[:, 2], atol=1e-3)
    kp = sample["keypoints"][0].numpy()
    assert (kp[:, 2] > 0).sum() < 3  # the crop cut a joint off: the in-crop mean would differ


def test_small_people_get_no_centre_on_coco_only(tmp_path):
    """COCO's rule (DEKR ``COCOKeypoints.py``): ``area < 32**2`` -> no centre, no offsets; joints keep
    their heatmaps. The CrowdPose spec has no such rule (DEKR ``CrowdPoseKeypoints.py``)."""
    assert COCO.min_person_area == 32**2 and CROWDPOSE.min_person_area == 0
    small = {"joints": [(50.0, 50.0, 2), (70.0, 110.0, 2)], "bbox": [45, 45, 30, 70], "area": 32**2 - 1}
    big = {"joints": [(130.0, 40.0, 2), (150.0, 120.0, 2)], "bbox": [125, 35, 30, 90], "area": 32**2}
    for spec, has_centre in ((COCO, [False, True]), (CROWDPOSE, [True, True])):
        sub = tmp_path / spec.name
        sub.mkdir()
        recs = _one_image_dataset(sub, [small, big], spec=spec)
        sample = PoseDataset(recs, spec, 64, augment=False)[0]
        assert (sample["centers"][:, 2] > 0).tolist() == has_centre
        t = TargetCollate(16)([sample])["targets"]
        assert t["heatmaps"][0, :2].amax((1, 2)).min() > 0.5  # every joint channel drawn
        cx, cy = (sample["centers"][0, :2] / OUTPUT_STRIDE).round().long().tolist()
        assert (t["offset_weights"][0, :, cy, cx].max() > 0) == has_centre[0]


def test_centre_sigma_defaults_follow_dekr_idx_17_rule():
    """DEKR draws heatmap channel ``idx`` with the joint sigma (2) when ``idx < 17``, else the centre
    sigma (4); the centre is channel K, so a 14-joint CrowdPose centre gets 2, COCO's gets 4."""
    for spec in (COCO, CROWDPOSE):
        dekr = 2.0 if spec.num_keypoints < 17 else 4.0
        assert spec.center_sigma == dekr
    assert TrainConfig(data="x", out="y").center_sigma is None  # None: the spec's


def test_annotated_images_drop_person_free_images(coco_records):
    """DEKR keeps images with at least one annotation of any kind (people, crowds, unlabelled)."""
    rec = coco_records[0]
    empty = dataclasses.replace(rec, image_id=1, keypoints=np.zeros((0, 17, 3), np.float32), ignore=[])
    only_crowd = dataclasses.replace(empty, image_id=2, ignore=[IgnoreRegion(None, (0, 0, 5, 5), 9, "crowd")])
    kept = annotated_images([rec, empty, only_crowd])
    assert [r.image_id for r in kept] == [rec.image_id, 2]
    assert TrainConfig(data="x", out="y").skip_empty_images


def _write_json(path: Path, image_ids: list[int]) -> Path:
    data = {"images": [{"id": i, "file_name": f"{i}.jpg", "width": 10, "height": 10} for i in image_ids],
            "annotations": []}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_yaml_split_lists_several_files(tmp_path):
    (tmp_path / "images").mkdir()
    a = _write_json(tmp_path / "a.json", [1, 2])
    b = _write_json(tmp_path / "b.json", [3])
    desc = tmp_path / "dataset.yaml"
    desc.write_text(
        "spec: crowdpose\nmin_person_area: 100\n"
        "train:\n  - {annotations: a.json, images: images}\n  - {annotations: b.json, images: images}\n"
        "val: {annotations: b.json, images: images}\n"
    )
    parts, spec = resolve_dataset_parts(desc, "train")
    assert parts == [(a, tmp_path / "images"), (b, tmp_path / "images")]
    assert spec.name == "crowdpose" and spec.min_person_area == 100
    records, _ = load_split(desc, "train")
    assert [r.image_id for r in records] == [1, 2, 3]
    assert resolve_dataset(desc, "val")[0] == b
    with pytest.raises(DataError, match=r"split 'train' joins 2 annotation files"):
        resolve_dataset(desc, "train")
    _write_json(tmp_path / "b.json", [2, 3])
    with pytest.raises(DataError, match=r"b\.json: image id 2 is also in .*a\.json"):
        load_split(desc, "train")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train: []\n", r"dataset\.yaml: split 'train': empty list"),
        ("train: [5]\n", r"dataset\.yaml: split 'train' entry 1: expected a mapping"),
        ("train:\n  - {annotations: a.json, images: images}\n  - {images: images}\n",
         r"dataset\.yaml: split 'train' entry 2: missing field 'annotations'"),
        ("train: [{annotations: gone.json, images: images}]\n", r"split 'train' entry 1: annotation file not found"),
        ("train: [{annotations: a.json, images: nope}]\n", r"split 'train' entry 1: image folder not found"),
        ("min_person_area: -1\ntrain: {annotations: a.json, images: images}\n",
         r"dataset\.yaml: field 'min_person_area' must be a number >= 0"),
        ("min_person_area: big\ntrain: {annotations: a.json, images: images}\n", r"'min_person_area'"),
    ],
)  # fmt: skip
def test_bad_yaml_split_lists_name_the_file_and_field(tmp_path, text, message):
    (tmp_path / "images").mkdir()
    _write_json(tmp_path / "a.json", [1])
    (tmp_path / "dataset.yaml").write_text("spec: coco\n" + text)
    with pytest.raises(DataError, match=message) as err:
        load_split(tmp_path, "train")
    assert "\n" not in str(err.value)


def test_crowdpose_root_trains_on_trainval(tmp_path, caplog):
    root = tmp_path / "crowdpose"
    (root / "images").mkdir(parents=True)
    train = _write_json(root / "json" / "crowdpose_train.json", [1, 2])
    val = _write_json(root / "json" / "crowdpose_val.json", [3])
    test = _write_json(root / "json" / "crowdpose_test.json", [4])
    parts, spec = resolve_dataset_parts(root, "train")
    assert spec is CROWDPOSE and parts == [(train, root / "images"), (val, root / "images")]
    assert [r.image_id for r in load_split(root, "train")[0]] == [1, 2, 3]
    assert resolve_dataset(root, "test")[0] == test and resolve_dataset(root, "val")[0] == val
    trainval = _write_json(root / "json" / "crowdpose_trainval.json", [1, 2, 3])
    assert resolve_dataset_parts(root, "train")[0] == [(trainval, root / "images")]
    assert resolve_dataset(root, "train")[0] == trainval
    trainval.unlink()
    val.unlink()
    with caplog.at_level(logging.WARNING, logger="grmpose.data.coco"):
        assert resolve_dataset_parts(root, "train")[0] == [(train, root / "images")]
    assert "not the paper's train + val" in caplog.text
