"""Training targets for DEKR-style regression plus associative-embedding tags (DESIGN.md §2).

Conventions (see ``grmpose.spec``): points are ``(x, y)``, integer coordinates are pixel centres,
and a map of output stride ``s`` has cell ``j`` centred on input pixel ``s * j``, so an input
coordinate ``x`` is ``x / s`` in map units. All targets below are in map units.

A keypoint (or person centre) is *in the map* when its nearest map cell ``floor(u + 0.5)`` lies
inside the H×W map; keypoints outside the map are ignored everywhere (no Gaussian, no offset, no
tag). A keypoint is *labelled* when ``v > 0``.

Offset weights follow DEKR (``target_generators.py`` ``OffsetGenerator``, ``COCOKeypoints.py``
``cal_area_2_torch``, ``transforms.py`` ``area * final_scale``): ``1 / sqrt(w^2 + h^2)``, one over
the person's box diagonal in *input-crop* pixels, while the offsets themselves are in map pixels.
Two departures, both for people DEKR's code mis-sizes: the box is the labelled joints' box joined
with the annotation box (DEKR's code measures from the image origin, because the centre row and
unlabelled joints are still zeros when it measures: a quirk, not the paper's ``Z``), and
the diagonal is floored at ``MIN_PERSON_SIZE`` so that a one-joint person without a box (diagonal
0) cannot dominate the loss.

Everything is vectorised over people and keypoints with numpy: each Gaussian or offset disc is a
fixed-size window of candidate cells, built for all (person, keypoint) pairs at once and scattered
into the maps.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["MIN_PERSON_SIZE", "build_targets", "person_centers", "person_sizes"]

#: Floor of a person's size (box diagonal, input-crop pixels) in the offset weight ``1 / size``:
#: a person with one labelled joint and no box has size 0; the floor keeps them from dominating.
MIN_PERSON_SIZE = 32.0


def _round(u: np.ndarray) -> np.ndarray:
    """Nearest cell index (halves round up), as int64."""
    return np.floor(u + 0.5).astype(np.int64)


def person_centers(keypoints: np.ndarray) -> np.ndarray:
    """Each person's centre: the mean of their labelled joints (DEKR's centre).

    Args:
        keypoints: N×K×3 ``(x, y, v)`` in any pixel frame.

    Returns:
        N×3 float64 ``(x, y, v)`` in the same frame; ``v = 1`` for people with a labelled joint,
        ``(0, 0, 0)`` for the others.
    """
    kpts = np.asarray(keypoints, dtype=np.float64)
    labelled = kpts[:, :, 2] > 0  # N×K
    count = labelled.sum(1)
    out = np.zeros((len(kpts), 3))
    has = count > 0
    out[has, :2] = (kpts[has, :, :2] * labelled[has, :, None]).sum(1) / count[has, None]
    out[has, 2] = 1.0
    return out


def person_sizes(keypoints: np.ndarray, boxes: np.ndarray | None = None) -> np.ndarray:
    """Each person's size ``sqrt(w^2 + h^2)``: the diagonal of their box (DEKR's ``Z``).

    The box holds the person's labelled joints and, when given, their annotation box.

    Args:
        keypoints: N×K×3 ``(x, y, v)``.
        boxes: optional N×4 ``(x, y, w, h)`` annotation boxes, same pixel frame.

    Returns:
        N float64 diagonals (0 for a person with one labelled joint and no box, or none at all).
    """
    kpts = np.asarray(keypoints, dtype=np.float64)
    if len(kpts) == 0 or kpts.shape[1] == 0:
        return np.zeros(len(kpts))
    labelled = kpts[:, :, 2] > 0
    xy = kpts[:, :, :2]
    lo = np.where(labelled[:, :, None], xy, np.inf).min(1)  # N×2
    hi = np.where(labelled[:, :, None], xy, -np.inf).max(1)
    if boxes is not None:
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        lo = np.minimum(lo, b[:, :2])
        hi = np.maximum(hi, b[:, :2] + b[:, 2:])
    extent = np.where(np.isfinite(lo) & np.isfinite(hi), hi - lo, 0.0)
    return np.sqrt((extent**2).sum(1))


def _window(radius: int) -> np.ndarray:
    """All integer displacements (dx, dy) with |dx|, |dy| <= radius: P×2."""
    r = np.arange(-radius, radius + 1)
    dy, dx = np.meshgrid(r, r, indexing="ij")
    return np.stack([dx.ravel(), dy.ravel()], 1)


def _draw_gaussians(
    points: np.ndarray, channels: np.ndarray, sigma: float, heat: np.ndarray, inside: np.ndarray
) -> None:
    """Max-composite truncated Gaussians into ``heat`` and mark their windows in ``inside``.

    The Gaussian ``exp(-d^2 / (2 sigma^2))`` of a point is drawn on the cells with
    ``|x - px| <= 3 sigma`` and ``|y - py| <= 3 sigma`` (its window).

    Args:
        points: P×2 (x, y) in map units (all in the map).
        channels: P channel indices.
        sigma: Gaussian standard deviation in map pixels.
        heat: C×H×W float array, updated in place (maximum).
        inside: C×H×W bool array, set True over the windows.
    """
    if len(points) == 0:
        return
    _, h, w = heat.shape
    reach = 3.0 * sigma
    steps = np.arange(-int(math.ceil(reach + 0.5)), int(math.ceil(reach + 0.5)) + 1)  # Q
    # separable: per-axis cells, distances and 1-D Gaussians, combined by broadcasting P×Q×Q (y, x)
    cx = _round(points[:, 0])[:, None] + steps  # P×Q
    cy = _round(points[:, 1])[:, None] + steps
    dx = cx - points[:, :1]
    dy = cy - points[:, 1:2]
    okx = (np.abs(dx) <= reach) & (cx >= 0) & (cx < w)
    oky = (np.abs(dy) <= reach) & (cy >= 0) & (cy < h)
    gx = np.exp(-(dx**2) / (2.0 * sigma**2))
    gy = np.exp(-(dy**2) / (2.0 * sigma**2))
    keep = oky[:, :, None] & okx[:, None, :]
    value = (gy[:, :, None] * gx[:, None, :])[keep]
    flat = ((channels[:, None, None] * h + cy[:, :, None]) * w + cx[:, None, :])[keep]
    np.maximum.at(heat.reshape(-1), flat, value.astype(heat.dtype))
    inside.reshape(-1)[flat] = True


def build_targets(
    keypoints: np.ndarray,
    map_size: tuple[int, int],
    stride: int = 4,
    sigma: float = 2.0,
    center_sigma: float = 4.0,
    center_radius: int = 4,
    mask: np.ndarray | None = None,
    background_weight: float = 0.1,
    centers: np.ndarray | None = None,
    sizes: np.ndarray | None = None,
    min_size: float = MIN_PERSON_SIZE,
) -> dict[str, torch.Tensor]:
    """Heatmap, offset and tag targets for one image.

    Args:
        keypoints: N×K×3 ``(x, y, v)`` in input-crop pixels.
        map_size: ``(H, W)`` of the output maps.
        stride: output stride (input pixel ``x`` is map coordinate ``x / stride``).
        sigma: keypoint Gaussian σ (map pixels).
        center_sigma: person-centre Gaussian σ (map pixels); DEKR trains COCO with 4, CrowdPose
            with 2 (``KeypointSpec.center_sigma``).
        center_radius: offsets are stored at every cell within this Euclidean distance of a
            person's centre.
        mask: optional H×W weight map; 0 marks cells to ignore (crowds, unannotated people).
            Heatmap and offset weights are multiplied by it.
        background_weight: heatmap weight outside every Gaussian window.
        centers: optional N×3 ``(x, y, v)`` person centres in input-crop pixels; ``v > 0`` means
            the person has a centre. The dataset computes them before the crop from all labelled
            joints (DEKR) and clears ``v`` for people under the spec's ``min_person_area``.
            Default: :func:`person_centers` of ``keypoints``.
        sizes: optional N person sizes ``sqrt(w^2 + h^2)`` in input-crop pixels (the dataset's:
            box of the labelled joints and the annotation box, scaled into the crop). Default:
            :func:`person_sizes` of ``keypoints``.
        min_size: floor on the size in the offset weight (input-crop pixels).

    Returns:
        dict of torch tensors:
            ``heatmaps`` (K+1)×H×W float32: Gaussians, maximum over people; channel K = centre.
            ``heat_weights`` (K+1)×H×W float32: 1 inside a Gaussian window of that channel,
            ``background_weight`` elsewhere, times ``mask``.
            ``offsets`` 2K×H×W float32: channel 2k = x, 2k+1 = y of ``cell - keypoint`` (map
            units) around each centre; where discs overlap the person with the smaller size
            wins (ties: lower index).
            ``offset_weights`` 2K×H×W float32: ``1 / max(size, min_size)`` (DEKR's
            ``1 / sqrt(w^2 + h^2)``, one over the person's diagonal in input-crop pixels) for
            labelled in-map joints of the owning person, 0 elsewhere, times ``mask``.
            ``tag_index`` N×K int64: flat index ``y*W + x`` of the nearest cell of each labelled
            in-map keypoint, −1 otherwise.
        People without a centre, or whose centre is outside the map, get no centre Gaussian and
        no offsets (their in-map joints still get Gaussians and tag indices).
    """
    kpts = np.asarray(keypoints, dtype=np.float64)
    h, w = int(map_size[0]), int(map_size[1])
    if kpts.ndim != 3 or kpts.shape[2] < 3:
        if kpts.size == 0:
            raise ValueError("keypoints must be N×K×3 (with K known) even for N = 0")
        raise ValueError(f"keypoints must be N×K×3, got {kpts.shape}")
    n, k = kpts.shape[:2]
    kmap = kpts[:, :, :3].copy()
    kmap[:, :, :2] /= float(stride)
    centers = person_centers(kpts) if centers is None else np.asarray(centers, dtype=np.float64)
    sizes = person_sizes(kpts) if sizes is None else np.asarray(sizes, dtype=np.float64)
    if centers.shape != (n, 3) or not np.all(np.isfinite(centers)):
        raise ValueError(f"centers must be a finite {n}×3 array (x, y, v), got shape {centers.shape}")
    if sizes.shape != (n,) or not np.all(np.isfinite(sizes)):
        raise ValueError(f"sizes must be {n} finite numbers, got shape {sizes.shape}")

    heatmaps = np.zeros((k + 1, h, w), np.float32)
    inside = np.zeros((k + 1, h, w), bool)
    offsets = np.zeros((2 * k, h, w), np.float32)
    offset_weights = np.zeros((2 * k, h, w), np.float32)
    tag_index = np.full((n, k), -1, np.int64)

    # keypoints: labelled and in the map
    cell = _round(kmap[:, :, :2]) if n else np.zeros((0, k, 2), np.int64)
    in_map = (cell[..., 0] >= 0) & (cell[..., 0] < w) & (cell[..., 1] >= 0) & (cell[..., 1] < h)
    valid = (kmap[:, :, 2] > 0) & in_map  # N×K
    tag_index[valid] = cell[valid][:, 1] * w + cell[valid][:, 0]
    _, joint = np.nonzero(valid)
    _draw_gaussians(kmap[:, :, :2][valid], joint, sigma, heatmaps, inside)

    # centres (map units)
    cmap = centers[:, :2] / float(stride)
    ccell = _round(cmap)
    has = (
        (centers[:, 2] > 0) & (ccell[:, 0] >= 0) & (ccell[:, 0] < w) & (ccell[:, 1] >= 0) & (ccell[:, 1] < h)
    )
    people = np.nonzero(has)[0]
    _draw_gaussians(cmap[people], np.full(len(people), k), center_sigma, heatmaps, inside)

    # offsets: candidate cells of every person's disc, then the smallest person wins each cell
    if len(people):
        disc = _window(int(center_radius) + 1)  # Q×2
        cells = ccell[people][:, None, :] + disc[None]  # P×Q×2
        dist2 = ((cells - cmap[people][:, None, :]) ** 2).sum(-1)
        keep = (
            (dist2 <= center_radius**2)
            & (cells[..., 0] >= 0)
            & (cells[..., 0] < w)
            & (cells[..., 1] >= 0)
            & (cells[..., 1] < h)
        )
        owner = np.broadcast_to(people[:, None], keep.shape)[keep]  # R people
        cx, cy = cells[..., 0][keep], cells[..., 1][keep]  # R cells
        flat = cy * w + cx
        order = np.lexsort((owner, sizes[owner], flat))  # by cell, then size, then index
        flat, owner, cx, cy = flat[order], owner[order], cx[order], cy[order]
        first = np.ones(len(flat), bool)
        first[1:] = flat[1:] != flat[:-1]
        flat, owner, cx, cy = flat[first], owner[first], cx[first], cy[first]  # R' unique cells

        dx = cx[:, None] - kmap[owner, :, 0]  # R'×K
        dy = cy[:, None] - kmap[owner, :, 1]
        weight = 1.0 / np.maximum(sizes, float(min_size))  # N
        wgt = (valid[owner] * weight[owner][:, None]).astype(np.float32)  # R'×K
        off_flat = offsets.reshape(2 * k, -1)
        wgt_flat = offset_weights.reshape(2 * k, -1)
        off_flat[0::2, flat] = np.where(valid[owner], dx, 0.0).T
        off_flat[1::2, flat] = np.where(valid[owner], dy, 0.0).T
        wgt_flat[0::2, flat] = wgt.T
        wgt_flat[1::2, flat] = wgt.T

    heat_weights = np.where(inside, 1.0, background_weight).astype(np.float32)
    if mask is not None:
        m = np.asarray(mask, dtype=np.float32)
        if m.shape != (h, w):
            raise ValueError(f"mask has shape {m.shape}, expected {(h, w)}")
        heat_weights *= m[None]
        offset_weights *= m[None]

    return {
        "heatmaps": torch.from_numpy(heatmaps),
        "heat_weights": torch.from_numpy(heat_weights),
        "offsets": torch.from_numpy(offsets),
        "offset_weights": torch.from_numpy(offset_weights),
        "tag_index": torch.from_numpy(tag_index),
    }
