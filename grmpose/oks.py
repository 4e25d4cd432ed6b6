"""Object Keypoint Similarity (eq. 11 of the paper, as the COCO tools compute it).

    OKS(pred, gt) = sum_k exp(-d_k^2 / (2 s^2 kappa_k^2)) [v_k > 0] / sum_k [v_k > 0]

with ``d_k`` the distance between predicted and ground-truth joint k, ``s^2`` the ground-truth
area and ``kappa_k = 2 sigma_k`` (COCO's ``variances = (2 sigma)^2``). Only labelled ground-truth
joints (``v > 0``) count. A ground truth without labelled joints gets OKS 0 here (COCO measures
the distance to an enlarged box instead, but such people are ignored by its matching anyway).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["oks"]

_EPS = np.spacing(1)  # COCO adds this to the area


def oks(
    pred: np.ndarray, gt: np.ndarray, areas: np.ndarray | Sequence[float], sigmas: Sequence[float]
) -> np.ndarray:
    """OKS between predictions and ground truths, vectorised.

    Args:
        pred: K×C (one pose) or M×K×C predicted joints, C >= 2, columns ``x, y, ...``.
        gt: N×K×3 ground-truth keypoints ``(x, y, v)`` in the same pixel units as ``pred``.
        areas: N ground-truth areas ``s^2`` (pixels^2).
        sigmas: K per-keypoint OKS constants (``KeypointSpec.sigmas``).

    Returns:
        N (for a single K×C pose) or M×N matrix of OKS values in [0, 1].
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    single = pred.ndim == 2
    if single:
        pred = pred[None]
    if gt.ndim != 3 or gt.shape[2] < 3:
        raise ValueError(f"gt must be N×K×3, got {gt.shape}")
    if pred.ndim != 3 or pred.shape[1] != gt.shape[1]:
        raise ValueError(f"pred must be K×C or M×K×C with K = {gt.shape[1]}, got {pred.shape}")
    areas = np.asarray(areas, dtype=np.float64).reshape(-1)
    if areas.shape[0] != gt.shape[0]:
        raise ValueError(f"{areas.shape[0]} areas for {gt.shape[0]} ground truths")
    variances = (2.0 * np.asarray(sigmas, dtype=np.float64)) ** 2  # K

    d2 = ((pred[:, None, :, :2] - gt[None, :, :, :2]) ** 2).sum(-1)  # M×N×K
    e = d2 / (2.0 * variances * (areas[None, :, None] + _EPS))
    labelled = (gt[:, :, 2] > 0).astype(np.float64)  # N×K
    count = labelled.sum(1)  # N
    total = (np.exp(-e) * labelled[None]).sum(-1)  # M×N
    result = np.where(count[None] > 0, total / np.maximum(count[None], 1.0), 0.0)
    return result[0] if single else result
