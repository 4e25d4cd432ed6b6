"""``PoseDataset``: COCO-format records -> augmented, normalised training samples.

A sample is a square ``S x S`` crop (``S = input_size``) with its keypoints in crop pixels and a
``S/4 x S/4`` loss mask (output stride 4; map cell ``j`` is centred on crop pixel ``4 j``).

Person centres and sizes are measured on the whole image *before* the crop, as DEKR does
(``COCOKeypoints.py`` ``get_joints``), and then carried through the crop's matrix: a centre is the
mean of all the person's labelled joints, also of those the crop cuts off; a size is the diagonal
of the box holding the labelled joints and the annotation box, scaled by the crop's zoom (DEKR's
``area * final_scale``). People whose annotated ``area`` is below the spec's ``min_person_area``
(COCO: 32², DEKR's rule) get no centre, so no centre heatmap and no offsets.
Randomness comes from ``numpy.random.default_rng([seed, epoch, index])``, so a sample depends only
on those three numbers, whatever the worker or the order in which samples are drawn.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from grmpose.data.coco import DataError, ImageRecord, ignore_mask, load_image
from grmpose.data.transforms import (
    AugmentParams,
    AugmentRanges,
    affine_matrix,
    apply_affine_image,
    apply_affine_points,
    eval_affine,
    sample_augment,
    scale_affine,
    transform_keypoints,
)
from grmpose.spec import KeypointSpec
from grmpose.targets import person_centers, person_sizes

logger = logging.getLogger(__name__)

#: ImageNet channel statistics (RGB, for images scaled to [0, 1]); inference uses them too.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

#: Network output stride: maps are ``input_size / OUTPUT_STRIDE`` on a side.
OUTPUT_STRIDE = 4


def normalize_image(img: np.ndarray) -> torch.Tensor:
    """uint8 H x W x 3 RGB -> float32 3 x H x W tensor, ``(img / 255 - MEAN) / STD``."""
    if not (img.flags.writeable and img.flags.c_contiguous):
        img = np.array(img, order="C")
    t = torch.from_numpy(img).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32).view(3, 1, 1)
    return (t - mean) / std


def denormalize_image(t: torch.Tensor) -> np.ndarray:
    """float 3 x H x W tensor (normalised) -> uint8 H x W x 3 RGB array."""
    mean = torch.tensor(MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32).view(3, 1, 1)
    img = (t.detach().float().cpu() * std + mean).mul(255.0).round().clamp(0, 255)
    return img.to(torch.uint8).permute(1, 2, 0).numpy()


class PoseDataset(torch.utils.data.Dataset):
    """Training / validation samples from :class:`ImageRecord` lists.

    Args:
        records: images and annotations (``load_coco_keypoints``).
        spec: keypoint spec (flip pairs).
        input_size: side S of the square crop; a multiple of ``OUTPUT_STRIDE``.
        augment: random rotation/scale/translation/flip (``ranges``); otherwise ``eval_affine``
            (the whole image, long side fitted to the crop).
        seed: base seed; per-sample randomness is drawn from ``(seed, epoch, index)``.
        ranges: augmentation ranges (the paper's by default).

    Each item is a dict:
        ``image``: float32 3 x S x S, normalised with ``MEAN``/``STD``;
        ``keypoints``: float32 N x K x 3 in crop pixels (people with a labelled keypoint or their
        centre in the crop; ``v = 0`` for unlabelled or cropped-out joints);
        ``centers``: float32 N x 3 ``(x, y, v)`` person centres in crop pixels (see the module
        docstring; ``v = 0``: no centre, or outside the crop);
        ``sizes``: float32 N person sizes ``sqrt(w^2 + h^2)`` in crop pixels;
        ``mask``: float32 S/4 x S/4, 1 = use, 0 = ignore (crowds, unlabelled people); the
        padding outside the image counts as "use" (it holds no person);
        ``matrix``: float32 2 x 3 image-to-crop matrix;
        ``image_id``: int.

    A sample whose image cannot be read is replaced by the next readable one; a warning is
    logged and ``skipped`` counts it (per process: each DataLoader worker has its own count).
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        spec: KeypointSpec,
        input_size: int,
        augment: bool,
        seed: int = 0,
        ranges: AugmentRanges = AugmentRanges(),  # noqa: B008
    ) -> None:
        if input_size % OUTPUT_STRIDE:
            raise ValueError(f"input_size must be a multiple of {OUTPUT_STRIDE}, got {input_size}")
        if not records:
            raise ValueError("PoseDataset: no records")
        self.records = list(records)
        self.spec = spec
        self.input_size = int(input_size)
        self.augment = bool(augment)
        self.seed = int(seed)
        self.ranges = ranges
        self.epoch = 0
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random draws ``__getitem__`` uses."""
        self.epoch = int(epoch)

    def rng(self, index: int) -> np.random.Generator:
        """The generator of sample ``index`` in the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def __getitem__(self, index: int) -> dict:
        n = len(self.records)
        for attempt in range(n):
            i = (int(index) + attempt) % n
            try:
                return self.load_sample(i)
            except DataError as err:
                self.skipped += 1
                logger.warning("skipping sample %d (image id %d): %s", i, self.records[i].image_id, err)
        raise DataError(
            f"no readable image among the {n} records of the dataset (e.g. {self.records[0].path})"
        )

    def params(self, index: int) -> AugmentParams:
        """Augmentation parameters of sample ``index`` (identity when ``augment`` is off)."""
        return sample_augment(self.rng(index), self.ranges) if self.augment else AugmentParams()

    def load_sample(self, index: int) -> dict:
        """Build sample ``index``; raises :class:`DataError` when its image is unreadable."""
        rec = self.records[index]
        img = load_image(rec.path, exif_transpose=False)
        h, w = img.shape[:2]
        if (w, h) != (rec.width, rec.height):
            logger.warning(
                "%s: image is %dx%d but the annotations say %dx%d; using the image size",
                rec.path,
                w,
                h,
                rec.width,
                rec.height,
            )
        size = self.input_size
        p = self.params(index)
        M = affine_matrix(p, w, h, size) if self.augment else eval_affine(w, h, size)

        crop = apply_affine_image(img, M, size, "bilinear")
        kpts = transform_keypoints(rec.keypoints, M, size, p.flip, self.spec.flip_index)
        # centres and sizes from the whole image, before the crop (DEKR)
        centers = person_centers(rec.keypoints)
        centers[rec.areas < self.spec.min_person_area, 2] = 0.0
        centers = apply_affine_points(centers[:, None, :], M, size)[:, 0]
        sizes = person_sizes(rec.keypoints, rec.boxes) * np.sqrt(abs(np.linalg.det(M[:, :2])))
        keep = (kpts[:, :, 2] > 0).any(axis=1) | (centers[:, 2] > 0)
        kpts, centers, sizes = kpts[keep], centers[keep], sizes[keep]

        map_size = size // OUTPUT_STRIDE
        if rec.ignore:
            ignore = ignore_mask(rec, h, w).astype(np.uint8) * 255
            ignore = apply_affine_image(ignore, scale_affine(M, 1.0 / OUTPUT_STRIDE), map_size, "nearest")
            mask = (ignore < 128).astype(np.float32)
        else:
            mask = np.ones((map_size, map_size), dtype=np.float32)

        return {
            "image": normalize_image(crop),
            "keypoints": torch.from_numpy(np.ascontiguousarray(kpts, dtype=np.float32)),
            "centers": torch.from_numpy(np.ascontiguousarray(centers, dtype=np.float32)),
            "sizes": torch.from_numpy(np.ascontiguousarray(sizes, dtype=np.float32)),
            "mask": torch.from_numpy(mask),
            "matrix": torch.from_numpy(M.astype(np.float32)),
            "image_id": rec.image_id,
        }


def collate(batch: list[dict]) -> dict:
    """Stack a list of samples: ``image`` B x 3 x S x S, ``mask`` B x S/4 x S/4, ``matrix`` B x 2 x 3,
    ``image_id`` int64 B; ``keypoints``, ``centers`` and ``sizes`` stay lists of B tensors
    (N_b x K x 3, N_b x 3, N_b)."""
    return {
        "image": torch.stack([b["image"] for b in batch]),
        "mask": torch.stack([b["mask"] for b in batch]),
        "matrix": torch.stack([b["matrix"] for b in batch]),
        "image_id": torch.tensor([b["image_id"] for b in batch], dtype=torch.int64),
        "keypoints": [b["keypoints"] for b in batch],
        "centers": [b["centers"] for b in batch],
        "sizes": [b["sizes"] for b in batch],
    }
