"""Joint localisation of the keypoint heatmaps, given the person: a diagnostic for short runs.

Before a bottom-up model scores any AP its heatmaps must put each joint in the right place; in a
few CPU minutes they move from person-sized blobs towards peaks, while AP stays at zero. This
measures that step. For every annotated person with at least ``min_joints`` labelled joints, and
each labelled joint k: take the maximum of heatmap k inside the person's box (the labelled joints'
box in map pixels, padded by ``pad`` cells); the joint counts as found when that cell is within
``fraction`` x the box diagonal (at least one map pixel) of the labelled position.

The images are prepared as at evaluation time (``eval_affine``: whole image, long side fitted to
``input_size``). The result is the fraction found over all joints, and per keypoint.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from grmpose.data.coco import ImageRecord
from grmpose.data.dataset import OUTPUT_STRIDE, PoseDataset
from grmpose.spec import KeypointSpec


def found_joints(
    heat: np.ndarray, keypoints: np.ndarray, fraction: float = 0.1, pad: int = 2, min_joints: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Per keypoint, how many labelled joints the heatmaps find and how many there are.

    Args:
        heat: K x H x W keypoint heatmaps of one image.
        keypoints: N x K x 3 ``(x, y, v)`` in map pixels.

    Returns:
        ``(found, labelled)``: two length-K integer arrays.
    """
    k, h, w = heat.shape
    found, labelled = np.zeros(k, dtype=np.int64), np.zeros(k, dtype=np.int64)
    for person in keypoints:
        vis = person[:, 2] > 0
        if vis.sum() < min_joints:
            continue
        xy = person[:, :2]
        lo, hi = xy[vis].min(0), xy[vis].max(0)
        radius = max(1.0, fraction * float(np.hypot(*(hi - lo))))
        x0, y0 = (max(int(v), 0) for v in np.floor(lo - pad))
        x1, y1 = min(int(np.ceil(hi[0] + pad)), w - 1), min(int(np.ceil(hi[1] + pad)), h - 1)
        if x1 < x0 or y1 < y0:
            continue
        for j in np.flatnonzero(vis):
            window = heat[j, y0 : y1 + 1, x0 : x1 + 1]
            py, px = np.unravel_index(int(window.argmax()), window.shape)
            labelled[j] += 1
            found[j] += np.hypot(px + x0 - xy[j, 0], py + y0 - xy[j, 1]) <= radius
    return found, labelled


@torch.no_grad()
def heatmap_pck(
    model: nn.Module,
    records: Sequence[ImageRecord],
    spec: KeypointSpec,
    input_size: int,
    fraction: float = 0.1,
) -> dict:
    """``{"pck": all joints, "per_keypoint": {name: fraction}, "joints": count}`` of ``model`` on
    ``records`` (see the module notes). ``model`` returns ``(heatmaps, offsets, tags)``."""
    model.eval()
    data = PoseDataset(records, spec, input_size, augment=False)
    k = spec.num_keypoints
    found, labelled = np.zeros(k, dtype=np.int64), np.zeros(k, dtype=np.int64)
    device = next(model.parameters()).device
    for i in range(len(data)):
        sample = data[i]
        heat = model(sample["image"][None].to(device))[0][0, :k].float().cpu().numpy()
        kpts = sample["keypoints"].numpy().astype(np.float64)
        kpts[:, :, :2] /= OUTPUT_STRIDE
        f, n = found_joints(heat, kpts, fraction)
        found += f
        labelled += n
    per = {name: float(f / n) if n else None for name, f, n in zip(spec.keypoints, found, labelled)}
    return {
        "pck": float(found.sum() / max(labelled.sum(), 1)),
        "per_keypoint": per,
        "joints": int(labelled.sum()),
    }
