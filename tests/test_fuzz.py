"""Fuzzing (hypothesis, bounded): the COCO-format loader and the image reader fail only with
``DataError`` naming the file -- never another exception -- or return well-formed data."""

from __future__ import annotations

import io
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from grmpose.data.coco import DataError, ImageRecord, ignore_mask, load_coco_keypoints, load_image
from grmpose.spec import COCO

SKIERS = Path(__file__).parent / "data" / "photos" / "000000541055.jpg"
FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
K = COCO.num_keypoints


@pytest.fixture(scope="module")
def workdir():
    with tempfile.TemporaryDirectory(prefix="grmpose-fuzz-") as d:
        yield Path(d)


# ------------------------------------------------------------------------------- COCO loader
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.text(max_size=8),
    st.floats(allow_nan=True, allow_infinity=True),
)  # fmt: skip
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=20,
)
numbers = st.one_of(st.integers(-5, 700), st.floats(-10, 700), st.just(float("nan")), st.just(-1.0))


def maybe(value_strategy):
    """The field's plausible value, a random JSON value, or (as ``...``) the field left out."""
    return st.one_of(value_strategy, value_strategy, json_values, st.just(...))


category = st.fixed_dictionaries(
    {"id": st.one_of(st.integers(0, 2), json_values)},
    optional={
        "keypoints": st.one_of(st.just(list(COCO.keypoints)), json_values),
        "name": st.text(max_size=5),
    },
)


@st.composite
def coco_like(draw) -> object:
    """Mostly valid COCO keypoint files with random fields broken, dropped or retyped."""
    n_images = draw(st.integers(0, 3))
    images = []
    for _ in range(n_images):
        entry = {
            "id": draw(maybe(st.integers(0, 4))),
            "file_name": draw(maybe(st.sampled_from(["a.jpg", "b.png", ""]))),
            "width": draw(maybe(st.integers(-2, 640))),
            "height": draw(maybe(st.integers(-2, 480))),
            "crowdIndex": draw(maybe(st.floats(0, 1))),
        }
        images.append({k: v for k, v in entry.items() if v is not ...})
    annotations = []
    for _ in range(draw(st.integers(0, 4))):
        length = draw(st.sampled_from([3 * K, 3 * K, 3 * K, 3 * K - 1, 0, 3 * 14]))
        kps = draw(st.lists(numbers, min_size=length, max_size=length))
        kps[2::3] = [draw(st.sampled_from([0, 1, 2, 2, 3, -1])) for _ in kps[2::3]]
        entry = {
            "id": draw(maybe(st.integers(0, 9))),
            "image_id": draw(maybe(st.integers(0, 4))),
            "category_id": draw(maybe(st.integers(0, 2))),
            "keypoints": draw(st.one_of(st.just(kps), st.just(kps), json_values, st.just(...))),
            "bbox": draw(maybe(st.lists(numbers, min_size=0, max_size=5))),
            "area": draw(maybe(numbers)),
            "iscrowd": draw(maybe(st.integers(0, 1))),
            "num_keypoints": draw(maybe(st.integers(0, K))),
            "segmentation": draw(
                maybe(
                    st.one_of(
                        st.lists(st.lists(numbers, max_size=8), max_size=2),
                        st.fixed_dictionaries(
                            {
                                "size": st.lists(st.integers(0, 9), max_size=3),
                                "counts": st.one_of(st.text(max_size=6), st.lists(st.integers(0, 9))),
                            }
                        ),
                    )
                )  # fmt: skip
            ),
        }
        annotations.append({k: v for k, v in entry.items() if v is not ...})
    data = {
        "images": draw(st.one_of(st.just(images), st.just(images), json_values)),
        "annotations": draw(st.one_of(st.just(annotations), st.just(annotations), json_values)),
        "categories": draw(maybe(st.lists(category, max_size=3))),
    }
    data = {k: v for k, v in data.items() if v is not ... and draw(st.integers(0, 9)) > 0}
    return draw(st.one_of(st.just(data), st.just(data), st.just(data), json_values))


def check_loader(path: Path) -> None:
    try:
        records = load_coco_keypoints(path, path.parent, COCO)
    except DataError as err:
        assert path.name in str(err), str(err)
        return
    assert isinstance(records, list)
    for rec in records:
        assert isinstance(rec, ImageRecord)
        try:  # the training dataset rasterises the ignore regions: DataError (a skip) or a mask
            mask = ignore_mask(rec, min(rec.height, 32), min(rec.width, 32))
            assert mask.dtype == bool
        except DataError:
            pass
        assert rec.keypoints.dtype == np.float32 and rec.keypoints.shape[1:] == (K, 3)
        assert np.isfinite(rec.keypoints).all() and np.isfinite(rec.boxes).all()
        assert rec.width > 0 and rec.height > 0


@settings(FUZZ, max_examples=150)
@given(data=coco_like())
def test_coco_loader_on_random_structures(data, workdir):
    path = workdir / "fuzz_ann.json"
    path.write_text(json.dumps(data, allow_nan=True))
    check_loader(path)


@FUZZ
@given(raw=st.one_of(st.binary(max_size=200), st.text(max_size=200)))
def test_coco_loader_on_random_bytes(raw, workdir):
    path = workdir / "fuzz_raw.json"
    path.write_bytes(raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass"))
    check_loader(path)


# ---------------------------------------------------------------------------------- images
def _seed_files() -> dict[str, bytes]:
    with Image.open(SKIERS) as im:
        small = im.convert("RGB").resize((40, 24))
    out = {}
    for name, img, fmt, kw in [
        ("jpg", small, "JPEG", {"quality": 80}),
        ("png", small, "PNG", {}),
        ("gray.png", small.convert("L"), "PNG", {}),
        ("p.png", small.quantize(8), "PNG", {}),
        ("cmyk.jpg", small.convert("CMYK"), "JPEG", {}),
    ]:
        buf = io.BytesIO()
        img.save(buf, format=fmt, **kw)
        out[name] = buf.getvalue()
    out["real.jpg"] = SKIERS.read_bytes()
    return out


SEEDS = _seed_files()


def check_image(path: Path) -> None:
    try:
        img = load_image(path)
    except DataError as err:
        assert path.name in str(err), str(err)
        return
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) >= 1


@FUZZ
@given(raw=st.binary(max_size=2000))
def test_image_reader_on_random_bytes(raw, workdir):
    path = workdir / "fuzz.jpg"
    path.write_bytes(raw)
    check_image(path)


@FUZZ
@given(
    seed=st.sampled_from(sorted(SEEDS)),
    cut=st.floats(0, 1),
    flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=4),
)
def test_image_reader_on_damaged_real_files(seed, cut, flips, workdir):
    """Real JPEG/PNG files truncated at a random point and with a few random bytes overwritten."""
    data = bytearray(SEEDS[seed])
    for where, value in flips:
        data[min(len(data) - 1, math.floor(where * len(data)))] = value
    data = data[: max(0, math.floor(cut * len(data)))] if cut < 0.98 else data
    path = workdir / f"fuzz_{seed}"
    path.write_bytes(bytes(data))
    check_image(path)
