"""Where a model's AP goes: its offsets at each person's true centre against the poses it decodes.

A bottom-up pose (DEKR's regression) needs two things: a peak of the centre heatmap at the
person, and offsets at that peak that land on the joints. This diagnostic separates them. For
every labelled person of a held-out set it takes

* the *regressed pose at the true centre*: the offsets read at the map cell nearest the person's
  centre (the mean of the labelled joints, DEKR's centre and the one the training targets use),
  ``joint = cell - offset``; no centre detection, no scores, no NMS;
* the *best decoded pose*: the decoder's pose (``grmpose.decode.decode_image``, the evaluation's
  single-scale path) with the highest OKS against that person;

and the OKS of each against the person (``grmpose.oks``, COCO's formula). The pose at the true
centre is also scored with its left and right joints swapped where that scores better
(``at_true_centre_sides_free``): the gap to the plain score is what telling left from right costs. When the decoded poses
score about as well as the poses at the true centres, the centres are found and the offsets are what
limit AP; when they score much less, the centre heatmap or the decoder is. The share of people whose
OKS passes each threshold 0.50:0.95, averaged, is the AP these poses would reach if every person had
exactly one, perfectly ranked (an upper bound on the AP of the regression).

Per keypoint it also reports the median distance between the regressed joint and the label, over
``sqrt(area)`` (COCO's scale ``s``), beside COCO's tolerance ``2 sigma`` (the distance at which a
joint's OKS term falls to ``exp(-1/2)``, about 0.61).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from grmpose.data.coco import ImageRecord, load_image
from grmpose.data.dataset import OUTPUT_STRIDE
from grmpose.data.transforms import apply_affine_points, scale_affine
from grmpose.decode import decode_image, map_to_image
from grmpose.inference import prepare_image
from grmpose.oks import oks
from grmpose.spec import KeypointSpec
from grmpose.targets import person_centers

#: OKS thresholds of COCO's AP
THRESHOLDS = np.arange(0.5, 0.951, 0.05)


def poses_at_cells(offsets: torch.Tensor, centres: np.ndarray) -> np.ndarray:
    """The pose regressed at the cell nearest each centre.

    Args:
        offsets: 2K x H x W, channel 2k = x, 2k+1 = y of ``cell - keypoint`` (map pixels).
        centres: N x 2 ``(x, y)`` in map pixels; clamped into the map.

    Returns:
        N x K x 2 joints in map pixels.
    """
    _, h, w = offsets.shape
    k = offsets.shape[0] // 2
    off = offsets.detach().float().cpu().numpy().reshape(k, 2, h, w)
    cells = nearest_cells(centres, h, w)
    read = off[:, :, cells[:, 1], cells[:, 0]]  # K x 2 x N
    return cells[:, None, :].astype(np.float64) - read.transpose(2, 0, 1)


def nearest_cells(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """N x 2 int64 ``(x, y)`` cells nearest to N x 2 map-pixel points (halves round up), clamped into the map."""
    cells = np.floor(np.asarray(points, dtype=np.float64) + 0.5).astype(np.int64)
    cells[:, 0] = cells[:, 0].clip(0, width - 1)
    cells[:, 1] = cells[:, 1].clip(0, height - 1)
    return cells


def summarise(values: np.ndarray) -> dict:
    """Mean OKS, the share of people above 0.5 and 0.75, and that share averaged over 0.50:0.95."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {"mean_oks": None, "above_50": None, "above_75": None, "ap_bound": None}
    return {
        "mean_oks": float(values.mean()),
        "above_50": float((values > 0.5).mean()),
        "above_75": float((values > 0.75).mean()),
        "ap_bound": float(np.mean([(values > t).mean() for t in THRESHOLDS])),
    }


@torch.no_grad()
def ap_breakdown(
    model: nn.Module,
    records: Sequence[ImageRecord],
    spec: KeypointSpec,
    input_size: int,
    progress=None,
) -> dict:
    """The breakdown of the module notes for ``model`` on ``records`` (test short side ``input_size``);
    ``progress`` optionally wraps the records (a progress bar).

    Returns ``{"people", "at_true_centre": summary, "at_true_centre_sides_free": summary,
    "best_decoded": summary, "centre_heat_median", "error_over_scale": {keypoint: median},
    "tolerance_2sigma": {keypoint: 2 sigma}}``.
    """
    model.eval()
    device = next(model.parameters()).device
    k = spec.num_keypoints
    sigmas = np.asarray(spec.sigmas, dtype=np.float64)
    at_centre, sides_free, decoded, centre_heat, errors = [], [], [], [], []
    for rec in progress(records) if progress else records:
        labelled = (rec.keypoints[:, :, 2] > 0).any(1)
        if not labelled.any():
            continue
        gt = rec.keypoints[labelled].astype(np.float64)
        areas = rec.areas[labelled].astype(np.float64)
        tensor, image_to_input = prepare_image(load_image(rec.path), input_size)
        heat, offsets = model(tensor[None].to(device))[:2]
        # the centres in map pixels, as the training targets place them
        centres = apply_affine_points(person_centers(gt), scale_affine(image_to_input, 1 / OUTPUT_STRIDE))[
            :, :2
        ]
        joints = poses_at_cells(offsets[0], centres)  # map pixels
        joints = map_to_image(torch.from_numpy(joints), OUTPUT_STRIDE, image_to_input).numpy()
        for person, pose, area in zip(gt, joints, areas):
            at_centre.append(float(oks(pose, person[None], [area], sigmas)[0]))
            swapped = float(oks(pose[spec.flip_index], person[None], [area], sigmas)[0])
            sides_free.append(max(at_centre[-1], swapped))
            dist = np.hypot(*(pose - person[:, :2]).T) / np.sqrt(max(area, 1e-9))
            errors.append(np.where(person[:, 2] > 0, dist, np.nan))
        cells = nearest_cells(centres, *heat.shape[2:])
        centre_heat += heat[0, k].float().cpu().numpy()[cells[:, 1], cells[:, 0]].tolist()
        poses, _ = decode_image((heat, offsets), spec, image_to_input=image_to_input)
        if len(poses):
            decoded += oks(poses[:, :, :2], gt, areas, sigmas).max(0).tolist()
        else:
            decoded += [0.0] * len(gt)
    err = np.array(errors) if errors else np.full((0, k), np.nan)
    with warnings.catch_warnings():  # a keypoint nobody has labelled: NaN, reported as None
        warnings.simplefilter("ignore", RuntimeWarning)
        median_err = np.nanmedian(err, axis=0) if len(err) else np.full(k, np.nan)
    return {
        "people": len(at_centre),
        "at_true_centre": summarise(at_centre),
        "at_true_centre_sides_free": summarise(sides_free),
        "best_decoded": summarise(decoded),
        "centre_heat_median": float(np.median(centre_heat)) if centre_heat else None,
        "error_over_scale": {
            n: (None if np.isnan(v) else float(v)) for n, v in zip(spec.keypoints, median_err)
        },
        "tolerance_2sigma": {n: float(2 * s) for n, s in zip(spec.keypoints, sigmas)},
    }
