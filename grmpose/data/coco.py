"""Reading COCO-format person-keypoint data: annotations, ignore regions, images, dataset layouts.

Every dataset grmpose trains or evaluates on is read through :func:`load_coco_keypoints`, which
turns one COCO-format keypoint JSON into a list of :class:`ImageRecord`. Per image:

* ``keypoints`` (N x K x 3, float32, ``(x, y, v)``) holds the training targets: every annotation
  with ``iscrowd == 0`` and at least one labelled keypoint (``v > 0`` in its keypoint array; the
  ``num_keypoints`` field is not trusted because CrowdPose counts only its body joints there).
* ``ignore`` holds the regions the losses must not penalise: every ``iscrowd == 1`` region (even
  when some of its keypoints are labelled, as in CrowdPose) and every person without a single
  labelled keypoint. A region is its polygons, its RLE, or its box when it has no segmentation.
* Images without annotations are kept in the records; training drops them by default, as DEKR
  does (:func:`annotated_images`).
* A labelled keypoint with a negative coordinate (below -0.5, i.e. outside the image) is treated
  as unlabelled (``v = 0``), with one warning per file giving the count. NaN or infinite numbers
  are errors.

Dataset description files (YAML), read by :func:`resolve_dataset`::

    # dataset.yaml -- all paths are relative to this file's folder
    spec: coco              # coco | crowdpose | path/to/spec.yaml |
                            #   {keypoints: [...], sigmas: [...], flip_pairs: [...], skeleton: [...]}
    train:                  # one entry per split; the split names are free (train, val, test, ...)
      annotations: train.json
      images: images/train
    val:
      annotations: val.json
      images: images/val

    # a split may join several files (their image ids must differ), e.g. CrowdPose train + val:
    # train:
    #   - {annotations: json/crowdpose_train.json, images: images}
    #   - {annotations: json/crowdpose_val.json, images: images}
    min_person_area: 0      # optional: overrides the spec's min_person_area (image pixels^2)

A single-split file may instead give ``annotations:`` and ``images:`` at the top level; they are
then used for every split asked for. A folder holding a ``dataset.yaml`` can be passed in place of
the file itself. A CrowdPose root's ``train`` split is train + val (:func:`crowdpose_parts`).

Training uses every file of a split (:func:`load_split`); evaluation scores against one
ground-truth file (:func:`resolve_dataset`).

Coordinates follow the grmpose convention (``grmpose.spec``): x before y, integer coordinates are
pixel centres. Polygons and boxes are rasterised with PIL, RLE masks are decoded here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image, ImageDraw, ImageOps

from grmpose.spec import COCO, CROWDPOSE, KeypointSpec, get_spec

logger = logging.getLogger(__name__)

#: Images with more pixels than this are refused before decoding (decompression-bomb guard).
MAX_IMAGE_PIXELS = 100_000_000


class DataError(ValueError):
    """A dataset file (annotations, image, layout or YAML description) is missing or invalid."""


@dataclass
class IgnoreRegion:
    """A region whose pixels are excluded from the losses.

    Attributes:
        segmentation: COCO polygons (list of flat ``[x0, y0, x1, y1, ...]`` lists), an RLE dict
            (``{"size": [h, w], "counts": str | list[int]}``) or ``None`` (then ``bbox`` is used).
        bbox: ``(x, y, w, h)`` box in image pixels, or ``None``.
        ann_id: id of the annotation this region comes from.
        reason: ``"crowd"`` (``iscrowd == 1``) or ``"unlabelled"`` (a person with no keypoint).
    """

    segmentation: list | dict | None
    bbox: tuple[float, float, float, float] | None
    ann_id: int
    reason: str


@dataclass
class ImageRecord:
    """One image and its annotations.

    Attributes:
        image_id: the COCO image id.
        file_name: ``file_name`` as written in the JSON.
        path: the image file (``image_dir / file_name``); not checked for existence at load time.
        width, height: image size from the JSON, in pixels.
        keypoints: float32 N x K x 3 ``(x, y, v)`` of the training targets (see module docstring).
        boxes: float32 N x 4 ``(x, y, w, h)`` boxes of those people.
        areas: float32 N areas (``area`` field; ``w * h`` of the box when the field is absent).
        ann_ids: int64 N annotation ids of those people.
        ignore: regions to ignore (crowds and people without any labelled keypoint).
        crowd_index: the image's ``crowdIndex`` (CrowdPose) or ``None``.
    """

    image_id: int
    file_name: str
    path: Path
    width: int
    height: int
    keypoints: np.ndarray
    boxes: np.ndarray
    areas: np.ndarray
    ann_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    ignore: list[IgnoreRegion] = field(default_factory=list)
    crowd_index: float | None = None

    @property
    def num_people(self) -> int:
        return int(self.keypoints.shape[0])


# ----------------------------------------------------------------------------------------------
# Annotation loading


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found")
    try:
        with path.open("rb") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON: {err}") from err
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not valid JSON (not UTF-8 text): {err}") from err
    except (ValueError, RecursionError) as err:  # e.g. numbers too long, nesting too deep
        raise DataError(f"{path}: not valid JSON: {type(err).__name__}: {err}") from err


def _require(entry: dict, key: str, where: str) -> Any:
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object, got {type(entry).__name__}")
    if key not in entry:
        raise DataError(f"{where}: missing field {key!r}")
    return entry[key]


def _as_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"{where}: expected an integer, got {value!r}")
    if int(value) != value:
        raise DataError(f"{where}: expected an integer, got {value!r}")
    return int(value)


def _finite_array(values: Any, where: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as err:
        raise DataError(f"{where}: expected a list of numbers: {err}") from err
    if arr.ndim != 1:
        raise DataError(f"{where}: expected a flat list of numbers, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{where}: contains NaN or infinite values")
    return arr


def _keypoint_categories(data: dict, source: Path) -> set[int] | None:
    """Ids of the categories that define keypoints, or ``None`` to accept every annotation."""
    cats = data.get("categories")
    if cats is not None and not isinstance(cats, list):
        raise DataError(f"{source}: field 'categories' must be a list")
    if not cats or len(cats) <= 1:
        return None
    ids = {
        _as_int(c["id"], f"{source}: categories[{i}].id")
        for i, c in enumerate(cats)
        if isinstance(c, dict) and "id" in c and c.get("keypoints")
    }
    if not ids:
        logger.warning("%s: no category lists keypoints; accepting every annotation", source)
        return None
    return ids


def _check_category_names(data: dict, spec: KeypointSpec, source: Path) -> None:
    for cat in data.get("categories") or []:
        names = cat.get("keypoints") if isinstance(cat, dict) else None
        if isinstance(names, list) and len(names) == spec.num_keypoints and tuple(names) != spec.keypoints:
            logger.warning(
                "%s: category %r keypoint names differ from spec %r: %s",
                source,
                cat.get("name"),
                spec.name,
                names,
            )


def _parse_image(entry: Any, index: int, source: Path, image_dir: Path) -> ImageRecord:
    where = f"{source}: images[{index}]"
    image_id = _as_int(_require(entry, "id", where), f"{where}.id")
    where = f"{source}: image id {image_id}"
    file_name = _require(entry, "file_name", where)
    if not isinstance(file_name, str) or not file_name:
        raise DataError(f"{where}: field 'file_name' must be a non-empty string")
    width = _as_int(_require(entry, "width", where), f"{where}.width")
    height = _as_int(_require(entry, "height", where), f"{where}.height")
    if width <= 0 or height <= 0:
        raise DataError(f"{where}: non-positive size {width}x{height}")
    crowd_index = entry.get("crowdIndex")
    if crowd_index is not None:
        crowd_index = float(_finite_array([crowd_index], f"{where}.crowdIndex")[0])
    return ImageRecord(
        image_id=image_id,
        file_name=file_name,
        path=image_dir / file_name,
        width=width,
        height=height,
        keypoints=np.zeros((0, 0, 3), dtype=np.float32),  # filled in below
        boxes=np.zeros((0, 4), dtype=np.float32),
        areas=np.zeros(0, dtype=np.float32),
        crowd_index=crowd_index,
    )


def _check_segmentation(seg: Any, where: str) -> list | dict | None:
    """Validate a segmentation; return ``None`` when it is absent or empty."""
    if seg is None or (isinstance(seg, (list, dict)) and len(seg) == 0):
        return None
    if isinstance(seg, dict):
        size = _require(seg, "size", f"{where}.segmentation")
        counts = _require(seg, "counts", f"{where}.segmentation")
        if not (isinstance(size, list) and len(size) == 2) or any(
            _as_int(v, f"{where}.segmentation.size") < 0 for v in size
        ):
            raise DataError(f"{where}: segmentation 'size' must be [height, width], got {size!r}")
        if not (
            isinstance(counts, str)
            or isinstance(counts, list)
            and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts)
        ):
            raise DataError(
                f"{where}: segmentation 'counts' must be a string or a list of non-negative integers"
            )
        return seg
    if isinstance(seg, list):
        polys = []
        for i, poly in enumerate(seg):
            arr = _finite_array(poly, f"{where}.segmentation[{i}]")
            if arr.size % 2:
                raise DataError(f"{where}: segmentation polygon {i} has an odd number of coordinates")
            polys.append(arr.tolist())
        return polys
    raise DataError(f"{where}: segmentation must be a list of polygons or an RLE dict")


def load_coco_keypoints(
    ann_file: str | Path, image_dir: str | Path, spec: KeypointSpec | str
) -> list[ImageRecord]:
    """Read a COCO-format person-keypoint JSON into one :class:`ImageRecord` per image.

    Args:
        ann_file: the annotation JSON (``images``, ``annotations``, optional ``categories``).
        image_dir: folder that ``file_name`` entries are relative to.
        spec: keypoint spec (or its name); every keypoint array must hold ``3 * K`` numbers.

    Returns:
        Records in the order of the file's ``images`` list, including images with no annotation.

    Raises:
        DataError: naming the file (and the image or annotation id) on any invalid content.
    """
    spec = get_spec(spec)
    source = Path(ann_file)
    image_dir = Path(image_dir)
    data = _read_json(source)
    if not isinstance(data, dict):
        raise DataError(f"{source}: expected a JSON object with 'images' and 'annotations'")
    images = _require(data, "images", str(source))
    annotations = _require(data, "annotations", str(source))
    if not isinstance(images, list):
        raise DataError(f"{source}: field 'images' must be a list")
    if not isinstance(annotations, list):
        raise DataError(f"{source}: field 'annotations' must be a list")
    keep_categories = _keypoint_categories(data, source)  # checks that 'categories' is a list
    _check_category_names(data, spec, source)

    records: dict[int, ImageRecord] = {}
    for i, entry in enumerate(images):
        rec = _parse_image(entry, i, source, image_dir)
        if rec.image_id in records:
            raise DataError(f"{source}: duplicate image id {rec.image_id}")
        records[rec.image_id] = rec

    k = spec.num_keypoints
    negative = 0
    people: dict[int, list[tuple[np.ndarray, np.ndarray, float, int]]] = {i: [] for i in records}
    for i, ann in enumerate(annotations):
        where = f"{source}: annotations[{i}]"
        ann_id = _as_int(_require(ann, "id", where), f"{where}.id")
        where = f"{source}: annotation id {ann_id}"
        if keep_categories is not None:
            category = ann.get("category_id")
            if category is None or _as_int(category, f"{where}.category_id") not in keep_categories:
                continue
        image_id = _as_int(_require(ann, "image_id", where), f"{where}.image_id")
        if image_id not in records:
            raise DataError(f"{where}: image_id {image_id} is not in 'images'")
        kpts = _finite_array(_require(ann, "keypoints", where), f"{where}.keypoints")
        if kpts.size != 3 * k:
            raise DataError(
                f"{where}: 'keypoints' has {kpts.size} numbers, expected {3 * k} "
                f"(3 x {k} keypoints of spec {spec.name!r})"
            )
        kpts = kpts.reshape(k, 3)
        if np.any(kpts[:, 2] < 0) or np.any(kpts[:, 2] > 2):
            raise DataError(f"{where}: visibility flags must be 0, 1 or 2")
        outside = (kpts[:, 2] > 0) & (kpts[:, :2] < -0.5).any(axis=1)  # left of / above pixel 0
        if outside.any():
            kpts[outside, 2] = 0  # treated as unlabelled (see the module docstring)
            negative += int(outside.sum())
        bbox = ann.get("bbox")
        if bbox is not None:
            bbox = _finite_array(bbox, f"{where}.bbox")
            if bbox.size != 4:
                raise DataError(f"{where}: 'bbox' must be [x, y, w, h], got {bbox.size} numbers")
        segmentation = _check_segmentation(ann.get("segmentation"), where)
        iscrowd = bool(ann.get("iscrowd", 0))
        labelled = kpts[:, 2] > 0

        if iscrowd or not labelled.any():
            if segmentation is None and bbox is None:
                raise DataError(f"{where}: ignore region has neither 'segmentation' nor 'bbox'")
            records[image_id].ignore.append(
                IgnoreRegion(
                    segmentation=segmentation,
                    bbox=None if bbox is None else tuple(float(b) for b in bbox),
                    ann_id=ann_id,
                    reason="crowd" if iscrowd else "unlabelled",
                )
            )
            continue

        if bbox is None:  # box from the labelled keypoints' extent
            xy = kpts[labelled, :2]
            lo, hi = xy.min(axis=0), xy.max(axis=0)
            bbox = np.array([lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1]])
        area = ann.get("area")
        area = float(bbox[2] * bbox[3]) if area is None else float(_finite_array([area], f"{where}.area")[0])
        people[image_id].append((kpts, bbox, area, ann_id))

    if negative:
        logger.warning(
            "%s: %d labelled keypoint(s) with negative coordinates (outside the image) treated as "
            "unlabelled (v = 0)",
            source,
            negative,
        )
    for image_id, rec in records.items():
        found = people[image_id]
        rec.keypoints = np.array([p[0] for p in found], dtype=np.float32).reshape(-1, k, 3)
        rec.boxes = np.array([p[1] for p in found], dtype=np.float32).reshape(-1, 4)
        rec.areas = np.array([p[2] for p in found], dtype=np.float32).reshape(-1)
        rec.ann_ids = np.array([p[3] for p in found], dtype=np.int64).reshape(-1)
    return list(records.values())


# ----------------------------------------------------------------------------------------------
# Ignore masks


def rle_counts_from_string(s: str) -> np.ndarray:
    """Decode the compressed COCO RLE ``counts`` string into run lengths (int64, 1-D).

    Each run length is written as 5-bit groups, least significant first, each group stored as
    ``chr(group + 48)`` with bit 0x20 meaning "another group follows"; the last group's bit 0x10
    is the sign. From the third run on, the stored value is the difference to the run two
    places earlier.
    """
    counts: list[int] = []
    p, n = 0, len(s)
    while p < n:
        x, shift, more = 0, 0, True
        while more:
            if p >= n:
                raise ValueError("truncated RLE counts string")
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            p += 1
            shift += 5
            if not more and (c & 0x10):
                x -= 1 << shift  # sign-extend
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return np.asarray(counts, dtype=np.int64)


def rle_decode(rle: dict) -> np.ndarray:
    """Decode a COCO RLE (``{"size": [h, w], "counts": str | list[int]}``) to a bool H x W mask.

    Runs alternate 0, 1, 0, ... starting with zeros, over the pixels in column-major order.
    """
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    runs = rle_counts_from_string(counts) if isinstance(counts, str) else np.asarray(counts, np.int64)
    if np.any(runs < 0) or runs.sum() != h * w:
        raise ValueError(f"RLE runs sum to {runs.sum()}, expected {h} x {w} = {h * w}")
    values = (np.arange(runs.size) % 2).astype(bool)
    flat = np.repeat(values, runs)
    return flat.reshape(w, h).T


def _region_mask(region: IgnoreRegion, height: int, width: int) -> np.ndarray:
    seg = region.segmentation
    if isinstance(seg, dict):
        try:
            m = rle_decode(seg)
        except ValueError as err:
            raise DataError(
                f"ignore region of annotation {region.ann_id}: invalid RLE segmentation: {err}"
            ) from err
        if m.shape != (height, width):
            logger.warning(
                "ignore region of annotation %d: RLE size %s differs from image %dx%d; resizing",
                region.ann_id,
                m.shape,
                height,
                width,
            )
            pil = Image.fromarray(m.astype(np.uint8) * 255).resize((width, height), Image.NEAREST)
            m = np.asarray(pil) > 127
        return m
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    drawn = False
    if isinstance(seg, list):
        for poly in seg:
            if len(poly) >= 6:
                draw.polygon([(float(x), float(y)) for x, y in zip(poly[0::2], poly[1::2])], fill=255)
                drawn = True
    if not drawn and region.bbox is not None:
        x, y, w, h = region.bbox
        # pixels i with x <= i < x + w (a box of integer width w covers w pixels)
        x0, y0 = math.ceil(x), math.ceil(y)
        x1, y1 = math.ceil(x + w) - 1, math.ceil(y + h) - 1
        if x1 >= x0 and y1 >= y0:
            draw.rectangle([x0, y0, x1, y1], fill=255)
    return np.asarray(canvas) > 0


def ignore_mask(record: ImageRecord, height: int, width: int) -> np.ndarray:
    """Rasterise a record's ignore regions onto an image of ``height x width`` pixels.

    Polygons and boxes are in image pixels and drawn as they are (no rescaling), so pass the
    size of the image they annotate. An RLE of another size is resized (nearest).

    Returns:
        bool H x W array, True where the losses must ignore the pixel.
    """
    mask = np.zeros((height, width), dtype=bool)
    for region in record.ignore:
        mask |= _region_mask(region, height, width)
    return mask


# ----------------------------------------------------------------------------------------------
# Images


_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def load_image(
    path: str | Path, exif_transpose: bool = True, max_pixels: int = MAX_IMAGE_PIXELS
) -> np.ndarray:
    """Read an image as uint8 RGB, H x W x 3.

    Args:
        path: image file (any format PIL reads).
        exif_transpose: apply the EXIF orientation tag. Dataset annotations refer to the stored
            pixels (HigherHRNet/DEKR read with ``IMREAD_IGNORE_ORIENTATION``), so the training
            dataset passes ``False``; photos given for inference want ``True``.
        max_pixels: refuse larger images (checked from the header, before decoding). PIL's own
            decompression-bomb guard (about 179 MP by default) still applies above it.

    Raises:
        DataError: naming the file when it is missing, empty, too large, truncated or not an image.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: image file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise DataError(
                        f"{path}: image too large: {w}x{h} pixels exceeds the limit of {max_pixels}"
                    )
                img.load()
                if exif_transpose:
                    img = ImageOps.exif_transpose(img)
                return _to_rgb(img)
    except DataError:
        raise
    except Image.DecompressionBombError as err:
        raise DataError(f"{path}: image too large, refused before decoding: {err}") from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise DataError(f"{path}: cannot read image (corrupt, truncated or not an image): {err}") from err


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Convert any PIL mode to uint8 H x W x 3 RGB (16-bit grey scaled down, not clipped)."""
    if img.mode in _SIXTEEN_BIT_MODES:
        grey = np.asarray(img).astype(np.float64)
        grey = np.clip(np.rint(grey / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if img.mode == "F":
        grey = np.clip(np.rint(np.asarray(img)), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.array(img, dtype=np.uint8)


# ----------------------------------------------------------------------------------------------
# Dataset layouts


def _first_existing(candidates: list[Path], what: str, root: Path) -> Path:
    for c in candidates:
        if c.exists():
            return c
    tried = ", ".join(str(c) for c in candidates)
    raise DataError(f"{root}: no {what} found (tried {tried})")


def coco_layout(root: str | Path, split: str) -> tuple[Path, Path]:
    """COCO layout: ``annotations/person_keypoints_{split}2017.json`` and ``{split}2017/``.

    ``split`` is ``train``, ``val``, ...; the names without ``2017`` are accepted too.
    Returns ``(ann_file, image_dir)``.
    """
    root = Path(root)
    ann = _first_existing(
        [
            root / "annotations" / f"person_keypoints_{split}2017.json",
            root / "annotations" / f"person_keypoints_{split}.json",
        ],
        f"COCO annotation file for split {split!r}",
        root,
    )
    images = _first_existing(
        [root / f"{split}2017", root / split, root / "images" / f"{split}2017", root / "images" / split],
        f"COCO image folder for split {split!r}",
        root,
    )
    return ann, images


def crowdpose_layout(root: str | Path, split: str) -> tuple[Path, Path]:
    """CrowdPose layout: ``crowdpose_{split}.json`` in ``root``, ``root/json`` or ``root/annotations``,
    images in ``root/images``. Returns ``(ann_file, image_dir)``."""
    root = Path(root)
    name = f"crowdpose_{split}.json"
    ann = _first_existing(
        [root / "json" / name, root / name, root / "annotations" / name],
        f"CrowdPose annotation file for split {split!r}",
        root,
    )
    images = _first_existing([root / "images"], "CrowdPose image folder", root)
    return ann, images


def crowdpose_parts(root: str | Path, split: str) -> list[tuple[Path, Path]]:
    """The ``(ann_file, image_dir)`` pairs of a CrowdPose root's split.

    ``train`` (and ``trainval``) is train + val, as DEKR and the paper train: the
    ``crowdpose_trainval.json`` file when there is one, else ``crowdpose_train.json`` and
    ``crowdpose_val.json`` together (``crowdpose_train.json`` alone, with a warning, when there is
    no val file). Any other split is its own ``crowdpose_{split}.json``.
    """
    if split not in ("train", "trainval"):
        return [crowdpose_layout(root, split)]
    try:
        return [crowdpose_layout(root, "trainval")]
    except DataError:
        pass
    train = crowdpose_layout(root, "train")
    try:
        return [train, crowdpose_layout(root, "val")]
    except DataError:
        logger.warning(
            "%s: no crowdpose_val.json or crowdpose_trainval.json: training on %s alone, not the paper's "
            "train + val",
            root,
            train[0],
        )
        return [train]


def _spec_from_yaml_value(value: Any, base: Path, source: Path) -> KeypointSpec:
    if isinstance(value, dict):
        try:
            return KeypointSpec.from_dict(value, source=str(source))
        except ValueError as err:
            raise DataError(str(err)) from err
    if isinstance(value, str):
        candidate = base / value
        try:
            return get_spec(candidate if candidate.is_file() else value)
        except (ValueError, FileNotFoundError) as err:
            raise DataError(f"{source}: field 'spec': {err}") from err
    raise DataError(f"{source}: field 'spec' must be a spec name, a spec file or a mapping")


#: Top-level keys of a dataset.yaml that are not split names.
_RESERVED_KEYS = ("spec", "annotations", "images", "name", "min_person_area")


def _yaml_part(entry: Any, base: Path, where: str) -> tuple[Path, Path]:
    """One ``{annotations, images}`` mapping of a dataset.yaml split, checked on disk."""
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected a mapping with 'annotations' and 'images', got {entry!r}")
    ann = _require(entry, "annotations", where)
    images = _require(entry, "images", where)
    if not isinstance(ann, str) or not isinstance(images, str):
        raise DataError(f"{where}: 'annotations' and 'images' must be paths")
    ann_file, image_dir = base / ann, base / images
    if not ann_file.is_file():
        raise DataError(f"{where}: annotation file not found: {ann_file}")
    if not image_dir.is_dir():
        raise DataError(f"{where}: image folder not found: {image_dir}")
    return ann_file, image_dir


def _resolve_yaml(path: Path, split: str) -> tuple[list[tuple[Path, Path]], KeypointSpec]:
    try:
        desc = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read dataset description: {err}") from err
    except yaml.YAMLError as err:
        raise DataError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(desc, dict):
        raise DataError(f"{path}: expected a mapping with 'spec' and per-split entries")
    base = path.parent
    spec = _spec_from_yaml_value(_require(desc, "spec", str(path)), base, path)
    if "min_person_area" in desc:
        area = desc["min_person_area"]
        if isinstance(area, bool) or not isinstance(area, (int, float)) or not 0 <= area < math.inf:
            raise DataError(
                f"{path}: field 'min_person_area' must be a number >= 0 (image pixels^2), got {area!r}"
            )
        spec = dataclasses.replace(spec, min_person_area=float(area))
    if split in desc and split not in _RESERVED_KEYS:
        entry = desc[split]
        where = f"{path}: split {split!r}"
    elif "annotations" in desc:
        entry = desc
        where = str(path)
    else:
        splits = [k for k, v in desc.items() if k not in _RESERVED_KEYS and isinstance(v, (dict, list))]
        raise DataError(f"{path}: no split {split!r} (available: {', '.join(splits) or 'none'})")
    if isinstance(entry, list):
        if not entry:
            raise DataError(f"{where}: empty list (give one or more {{annotations, images}} entries)")
        return [_yaml_part(e, base, f"{where} entry {i + 1}") for i, e in enumerate(entry)], spec
    return [_yaml_part(entry, base, where)], spec


def resolve_dataset_parts(data: str | Path, split: str) -> tuple[list[tuple[Path, Path]], KeypointSpec]:
    """Find the annotation files, image folders and keypoint spec of one split of a dataset.

    Args:
        data: a dataset description YAML (schema in the module docstring), a folder holding
            ``dataset.yaml``, a COCO root (COCO spec) or a CrowdPose root (CrowdPose spec; its
            ``train`` split is train + val, see :func:`crowdpose_parts`).
        split: split name, e.g. ``train`` or ``val``.

    Returns:
        ``([(ann_file, image_dir), ...], spec)``: one pair, or several for a split that joins
        several files (a YAML list, CrowdPose train + val).
    """
    path = Path(data)
    if path.is_file():
        if path.suffix.lower() not in (".yaml", ".yml"):
            raise DataError(f"{path}: expected a dataset description .yaml or a dataset folder")
        return _resolve_yaml(path, split)
    if not path.is_dir():
        raise DataError(f"{path}: dataset not found (expected a folder or a .yaml description)")
    for name in ("dataset.yaml", "dataset.yml"):
        if (path / name).is_file():
            return _resolve_yaml(path / name, split)
    errors = []
    try:
        return [coco_layout(path, split)], COCO
    except DataError as err:
        errors.append(str(err))
    try:
        return crowdpose_parts(path, split), CROWDPOSE
    except DataError as err:
        errors.append(str(err))
    raise DataError(
        f"{path}: not a recognised dataset folder ({_layout_hint(path, split)})\n  " + "\n  ".join(errors)
    )


def _layout_hint(path: Path, split: str) -> str:
    """What a folder that is no known layout needs, in one line, naming a JSON file it holds if any."""
    jsons = sorted(p for p in path.glob("*.json") if p.is_file())
    folders = [
        d.name for d in sorted(path.iterdir()) if d.is_dir() and d.name.lower() in ("images", "imgs", "img")
    ]
    if jsons:
        ann = jsons[0].relative_to(path).as_posix()
        images = folders[0] if folders else "IMAGE_FOLDER"
        return (
            f"no dataset.yaml and no COCO or CrowdPose file for split {split!r}; to use {ann}, write "
            f"{path / 'dataset.yaml'} with the lines 'spec: coco', 'annotations: {ann}', 'images: {images}'"
        )
    return (
        f"no dataset.yaml, no annotations/person_keypoints_{split}2017.json (COCO) and no "
        f"json/crowdpose_{split}.json (CrowdPose)"
    )


def resolve_dataset(data: str | Path, split: str) -> tuple[Path, Path, KeypointSpec]:
    """The one annotation file, image folder and keypoint spec of a split (for evaluation, which
    scores against one ground-truth file); :func:`resolve_dataset_parts` for splits of several files.

    Returns:
        ``(ann_file, image_dir, spec)``.

    Raises:
        DataError: when the split joins several annotation files.
    """
    parts, spec = resolve_dataset_parts(data, split)
    if len(parts) > 1:
        files = ", ".join(str(a) for a, _ in parts)
        raise DataError(
            f"{data}: split {split!r} joins {len(parts)} annotation files ({files}); this needs one file "
            "(merge them into one JSON, or name one split per file in a dataset.yaml)"
        )
    ann_file, image_dir = parts[0]
    return ann_file, image_dir, spec


def load_split(data: str | Path, split: str) -> tuple[list[ImageRecord], KeypointSpec]:
    """The records of every annotation file of a split (:func:`resolve_dataset_parts`), in order.

    Raises:
        DataError: naming both files when two files of the split list the same image id.
    """
    parts, spec = resolve_dataset_parts(data, split)
    records: list[ImageRecord] = []
    seen: dict[int, Path] = {}
    for ann_file, image_dir in parts:
        for rec in load_coco_keypoints(ann_file, image_dir, spec):
            if rec.image_id in seen:
                raise DataError(
                    f"{ann_file}: image id {rec.image_id} is also in {seen[rec.image_id]}; "
                    f"the files of split {split!r} must not share images"
                )
            seen[rec.image_id] = ann_file
            records.append(rec)
    return records, spec


def annotated_images(records: list[ImageRecord]) -> list[ImageRecord]:
    """The records with at least one annotation (a person, a crowd region or an unlabelled person).

    DEKR trains only on these (``COCOKeypoints.py``: images with ``getAnnIds(...) > 0``); about
    half of COCO train2017 has no person.
    """
    return [r for r in records if r.num_people > 0 or r.ignore]
