"""Synthetic crowds written as a COCO-format keypoint dataset, so training demos need no download.

Each image shows 1..``max_people`` articulated, clothed stick figures that follow the keypoint
spec's names (COCO and CrowdPose work; see ``grmpose.data.synthetic_body``) over a cluttered
background, overlapping in depth order (``grmpose.data.synthetic_render``). The output folder::

    out_dir/dataset.yaml        spec + one {annotations, images} entry per split (merged if present)
    out_dir/train.json          COCO keypoint annotations of the split
    out_dir/train/000000.jpg    images

Annotation fields: ``keypoints`` (3K values; x, y rounded to 2 decimals, integer v; v = 0 has
coordinates 0), ``num_keypoints`` (count of v > 0), ``bbox`` and ``area`` of the person's whole
silhouette clipped to the image (``bbox`` in mask-pixel units: ``[col_min, row_min, n_cols,
n_rows]``, as pycocotools' ``toBbox``), ``segmentation`` (uncompressed COCO RLE of the same
silhouette), ``iscrowd = 0``. Annotations of an image are listed in drawing order, back to front:
a keypoint has v = 1 exactly when a later annotation's silhouette covers it.

For specs with ``crowd_eval`` every image also gets a ``crowdIndex`` (see :func:`crowd_index`).

Determinism: image ``i`` of a split is drawn from ``np.random.default_rng([seed, i])`` alone, so
the same seed gives the same bytes whatever the number of images generated.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

from grmpose.data.synthetic_render import check_height_range, render_scene, spec_body_points
from grmpose.spec import SPECS, KeypointSpec, get_spec

logger = logging.getLogger(__name__)

ProgressFn = Callable[[Iterable[int]], Iterable[int]]
"""Wraps the loop over image indices, e.g. ``tqdm.tqdm``."""

_IMAGE_NAME = re.compile(r"^\d{6}\.(jpg|png)$")


def crowd_index(keypoints: np.ndarray, boxes: np.ndarray) -> float:
    """CrowdPose crowd index of one image, clipped to [0, 1].

    As defined in the CrowdPose paper (Li et al., CVPR 2019): for each person i with at least one
    labelled joint, ``N_a(i)`` is its number of labelled joints (v > 0) and ``N_b(i)`` the number
    of labelled joints of *other* people inside its box; the index is the mean of
    ``N_b(i) / N_a(i)`` over these people (0 for an image without them). The raw value exceeds 1
    only when a box holds more joints of others than the person has; it is clipped to 1, which
    leaves the easy (< 0.1) / medium / hard (> 0.8) split unchanged.

    Args:
        keypoints: N x K x 3 (x, y, v).
        boxes: N x 4 boxes ``(x, y, w, h)``.
    """
    labelled = keypoints[..., 2] > 0
    ratios = []
    for i in range(len(keypoints)):
        own = int(labelled[i].sum())
        if own == 0:
            continue
        x, y, w, h = boxes[i]
        others = np.delete(np.arange(len(keypoints)), i)
        xy = keypoints[others, :, :2]
        inside = (xy[..., 0] >= x) & (xy[..., 0] <= x + w) & (xy[..., 1] >= y) & (xy[..., 1] <= y + h)
        ratios.append(float((inside & labelled[others]).sum()) / own)
    return float(min(1.0, np.mean(ratios))) if ratios else 0.0


def mask_to_rle(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE (column-major run lengths, starting with a 0-run) of an H x W mask."""
    flat = mask.T.ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def mask_box(mask: np.ndarray) -> list[float]:
    """``[col_min, row_min, n_cols, n_rows]`` of a non-empty mask."""
    rows = np.flatnonzero(mask.any(1))
    cols = np.flatnonzero(mask.any(0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]


def _image_size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    width, height = image_size
    return int(width), int(height)


def _spec_yaml_value(spec: KeypointSpec) -> str | dict:
    """A built-in spec by name, any other spec inline."""
    return spec.name if SPECS.get(spec.name) == spec else spec.to_dict()


def categories(spec: KeypointSpec) -> list[dict]:
    """The COCO ``categories`` entry: one person category with 1-based skeleton pairs."""
    return [
        {
            "id": 1,
            "name": "person",
            "supercategory": "person",
            "keypoints": list(spec.keypoints),
            "skeleton": [[a + 1, b + 1] for a, b in spec.skeleton],
        }
    ]


def update_dataset_yaml(out_dir: str | Path, spec: KeypointSpec, splits: Iterable[str]) -> Path:
    """Write or merge ``out_dir/dataset.yaml`` with ``{split: {annotations, images}}`` entries.

    Raises ``ValueError`` if an existing file describes a different keypoint spec.
    """
    path = Path(out_dir) / "dataset.yaml"
    desc: dict = {}
    if path.is_file():
        loaded = yaml.safe_load(path.read_text())
        desc = loaded if isinstance(loaded, dict) else {}
    value = _spec_yaml_value(spec)
    old = desc.get("spec")
    if old is not None:
        old_spec = KeypointSpec.from_dict(old) if isinstance(old, dict) else get_spec(old)
        if old_spec != spec:
            raise ValueError(f"{path} describes keypoint spec {old_spec.name!r}, not {spec.name!r}")
    desc["spec"] = value
    if spec.min_person_area > 0:  # every synthetic person has labelled joints, however small
        desc["min_person_area"] = 0
    for split in splits:
        desc[split] = {"annotations": f"{split}.json", "images": split}
    path.write_text(yaml.safe_dump(desc, sort_keys=False))
    return path


@dataclass(frozen=True)
class _RenderJob:
    """What every image of one split shares (sent once to each worker process)."""

    spec: KeypointSpec
    seed: int
    width: int
    height: int
    max_people: int
    height_range: tuple[float, float] | None
    image_dir: str
    image_format: str
    jpeg_quality: int

    def render(self, i: int) -> tuple[dict, list[dict]]:
        """Draw and save image ``i``; return its ``images`` entry and its annotations (no ids yet)."""
        rng = np.random.default_rng([self.seed, i])
        image, people = render_scene(
            rng, self.spec, self.width, self.height, self.max_people, self.height_range
        )
        file_name = f"{i:06d}.{self.image_format}"
        path = Path(self.image_dir) / file_name
        if self.image_format == "jpg":
            image.save(path, quality=self.jpeg_quality)
        else:
            image.save(path)
        entry: dict = {"id": i + 1, "file_name": file_name, "width": self.width, "height": self.height}
        boxes, annotations = [], []
        for person in people:
            kp = person.keypoints
            flat = []
            for x, y, v in kp:
                flat += [round(float(x), 2), round(float(y), 2), int(v)]
            box = mask_box(person.mask)
            boxes.append(box)
            annotations.append(
                {
                    "image_id": i + 1,
                    "category_id": 1,
                    "keypoints": flat,
                    "num_keypoints": int((kp[:, 2] > 0).sum()),
                    "bbox": box,
                    "area": float(person.mask.sum()),
                    "iscrowd": 0,
                    "segmentation": mask_to_rle(person.mask),
                }
            )
        if self.spec.crowd_eval:
            kps = np.array([p.keypoints for p in people])
            entry["crowdIndex"] = round(crowd_index(kps, np.array(boxes)), 4)
        return entry, annotations

    def render_range(self, bounds: tuple[int, int]) -> list[tuple[dict, list[dict]]]:
        return [self.render(i) for i in range(*bounds)]


#: Images per task handed to a worker process (small enough for a smooth progress bar).
_CHUNK = 25


def default_generate_workers(num_images: int) -> int:
    """Processes that ``generate_dataset`` uses by default: one per core, but only from 100 images
    per process on (below that, starting the processes costs more than they save)."""
    return max(1, min(os.cpu_count() or 1, num_images // 100))


def _render_all(job: _RenderJob, num_images: int, workers: int | None) -> Iterator[tuple[dict, list[dict]]]:
    """Every image's ``(entry, annotations)`` in index order, rendered by ``workers`` processes.

    Each image depends on ``(seed, i)`` alone, so the files and annotations are the same whatever
    the number of processes.
    """
    workers = default_generate_workers(num_images) if workers is None else workers
    if workers == 1:
        for i in range(num_images):
            yield job.render(i)
        return
    chunks = [(lo, min(lo + _CHUNK, num_images)) for lo in range(0, num_images, _CHUNK)]
    # spawn, not fork: the caller may hold threads (torch's), which fork does not copy safely
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        for chunk in pool.map(job.render_range, chunks):
            yield from chunk


def generate_dataset(
    out_dir: str | Path,
    spec: str | KeypointSpec,
    num_images: int,
    seed: int,
    image_size: int | tuple[int, int] = (256, 256),
    split: str = "train",
    max_people: int = 15,
    image_format: str = "jpg",
    jpeg_quality: int = 92,
    progress: ProgressFn | None = None,
    height_range: tuple[float, float] | None = None,
    workers: int | None = None,
) -> Path:
    """Generate one split: ``out_dir/{split}/NNNNNN.{jpg,png}`` and ``out_dir/{split}.json``.

    Also writes or updates ``out_dir/dataset.yaml``. Earlier images of the split (files named
    ``NNNNNN.jpg``/``.png``) are removed first. Returns the annotation file's path.

    Args:
        image_size: ``(width, height)`` or one int for square images.
        max_people: people per image are drawn uniformly from 1..max_people.
        progress: optional wrapper of the loop over image indices (e.g. ``tqdm.tqdm``).
        height_range: people's standing heights as fractions ``(lo, hi)`` of the image height;
            ``None`` (the crowd level) makes people smaller the more there are (``sample_figures``).
        workers: processes drawing the images (default ``default_generate_workers``); the output
            is the same for any number.
    """
    spec = get_spec(spec)
    spec_body_points(spec)
    if max_people < 1:
        raise ValueError(f"max_people must be at least 1, got {max_people}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    check_height_range(height_range)  # before anything is written
    width, height = _image_size(image_size)
    if width < 32 or height < 32:
        raise ValueError(f"image_size must be at least 32 x 32 pixels, got {width} x {height}")
    out_dir = Path(out_dir)
    image_dir = out_dir / split
    image_dir.mkdir(parents=True, exist_ok=True)
    for old in sorted(image_dir.iterdir()):
        if _IMAGE_NAME.match(old.name):
            old.unlink()

    images, annotations = [], []
    indices: Iterable[int] = range(num_images)
    if progress is not None:
        indices = progress(indices)
    job = _RenderJob(
        spec, seed, width, height, max_people, height_range, str(image_dir), image_format, jpeg_quality
    )
    for (entry, people), _ in zip(_render_all(job, num_images, workers), indices):
        for ann in people:
            annotations.append({"id": len(annotations) + 1, **ann})
        images.append(entry)

    data = {
        "info": {
            "description": f"grmpose synthetic crowds ({spec.name} keypoints)",
            "seed": seed,
            "max_people": max_people,
            "height_range": list(height_range) if height_range else None,
        },
        "images": images,
        "annotations": annotations,
        "categories": categories(spec),
    }
    ann_file = out_dir / f"{split}.json"
    ann_file.write_text(json.dumps(data, separators=(",", ":")) + "\n")  # dumps: the C encoder
    update_dataset_yaml(out_dir, spec, [split])
    logger.info("synthetic %s: %d images, %d people -> %s", split, len(images), len(annotations), ann_file)
    return ann_file


def derived_seed(seed: int, stream: int) -> int:
    """A seed for another split, independent of ``seed``'s own stream."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])


def generate(
    out_dir: str | Path,
    spec: str | KeypointSpec,
    train_images: int,
    val_images: int,
    seed: int,
    image_size: int | tuple[int, int] = (256, 256),
    max_people: int = 15,
    progress: ProgressFn | None = None,
    height_range: tuple[float, float] | None = None,
    workers: int | None = None,
) -> Path:
    """Generate ``train`` (from ``seed``) and ``val`` (from a derived seed); return dataset.yaml."""
    generate_dataset(
        out_dir, spec, train_images, seed, image_size, "train", max_people, progress=progress,
        height_range=height_range, workers=workers,
    )  # fmt: skip
    generate_dataset(
        out_dir, spec, val_images, derived_seed(seed, 1), image_size, "val", max_people, progress=progress,
        height_range=height_range, workers=workers,
    )  # fmt: skip
    return Path(out_dir) / "dataset.yaml"


def synth_main(
    out: str,
    spec: str,
    images: int,
    seed: int,
    val_images: int | None = None,
    image_size: int = 256,
    max_people: int = 15,
    progress: ProgressFn | None = None,
    height_range: tuple[float, float] | None = None,
) -> Path:
    """CLI entry: ``images`` training images and ``val_images`` (default ``max(1, images // 10)``).

    ``image_size``: one int (square) or ``(width, height)``; ``height_range``: the people's heights
    as fractions of the image height (None: the crowd level; the demo's level is ``(0.25, 0.9)``
    with ``max_people=5``)."""
    if val_images is None:
        val_images = max(1, images // 10)
    return generate(out, spec, images, val_images, seed, image_size, max_people, progress, height_range)


def draw_annotations(image: Image.Image, keypoints: np.ndarray, spec: KeypointSpec) -> Image.Image:
    """A copy of ``image`` with skeletons (spec limbs) and keypoints; occluded ones hollow."""
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    palette = [(255, 60, 60), (60, 220, 60), (70, 120, 255), (255, 200, 0), (255, 0, 255), (0, 220, 220)]
    for n, person in enumerate(keypoints):
        color = palette[n % len(palette)]
        for a, b in spec.skeleton:
            if person[a, 2] > 0 and person[b, 2] > 0:
                draw.line([tuple(person[a, :2]), tuple(person[b, :2])], fill=color, width=2)
        for j, (x, y, v) in enumerate(person):
            if v <= 0:
                continue
            left = spec.keypoints[j].startswith("left")
            dot = (255, 255, 255) if left else (0, 0, 0)
            if v >= 2:
                draw.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=dot, outline=color)
            else:
                draw.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], outline=dot)
    return out


def render_preview(
    spec: str | KeypointSpec, seed: int, count: int = 4, image_size: int = 256, max_people: int = 15
) -> Image.Image:
    """A row of ``count`` generated images, each as drawn and with its annotations drawn over it."""
    spec = get_spec(spec)
    tiles = Image.new("RGB", (count * image_size, 2 * image_size))
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        image, people = render_scene(rng, spec, image_size, image_size, max_people)
        kps = np.array([p.keypoints for p in people])
        tiles.paste(image, (i * image_size, 0))
        tiles.paste(draw_annotations(image, kps, spec), (i * image_size, image_size))
    return tiles


def write_sample_picture(path: str | Path, seed: int = 0, count: int = 2, image_size: int = 256) -> Path:
    """The documentation picture (``docs/images/synthetic_sample.png``): ``count`` COCO scenes
    (seed ``seed``) and ``count`` CrowdPose scenes (seed ``seed + 1``), plain above, annotated below."""
    tiles = [render_preview(spec, seed + i, count, image_size) for i, spec in enumerate(SPECS.values())]
    out = Image.new("RGB", (sum(t.width for t in tiles), tiles[0].height))
    x = 0
    for tile in tiles:
        out.paste(tile, (x, 0))
        x += tile.width
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out.save(path, optimize=True)
    return path
