"""Single-scale DEKR regression decoding (DESIGN.md §3), vectorised over people and keypoints.

Pipeline for one image: centre NMS on the centre heatmap (channel K) -> at each kept centre the
pose is ``location - offset`` -> keypoint scores from the keypoint heatmaps -> pose NMS -> map
coordinates to image pixels.

Scoring (what we do, compared with DEKR):
    * keypoint score = centre score × keypoint heatmap value, sampled bilinearly at the regressed
      joint (clamped into the map; heat values clamped at 0 since the maps are raw, un-sigmoided);
    * person score = mean keypoint score = centre score × mean heat. DEKR orders its pose NMS by the
      mean heat alone; we order by this person score, so that a strong centre also counts and
      multi-scale score factors act on the NMS order.

All functions accept CPU or CUDA tensors and run without autograd.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from grmpose.spec import KeypointSpec

__all__ = [
    "center_nms",
    "decode_image",
    "decode_regression",
    "map_to_image",
    "nms_kernel_size",
    "pose_duplicates",
    "pose_nms",
    "sample_bilinear",
]


def nms_kernel_size(height: int, width: int) -> int:
    """Max-pool kernel for centre NMS, by map size as DEKR's ``hierarchical_pool``.

    With ``m = (H + W) / 2``: ``m > 300`` -> 7, ``m > 200`` -> 5, else 3 (a 512 input gives a
    128×128 map and kernel 3; the 2× test scale gives 256×256 and kernel 5).
    """
    m = (height + width) / 2.0
    if m > 300:
        return 7
    if m > 200:
        return 5
    return 3


@torch.no_grad()
def center_nms(
    center_heat: torch.Tensor, max_people: int = 30, threshold: float = 0.01, kernel: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Local maxima of the centre heatmap by max-pooling, best first.

    Args:
        center_heat: H×W centre heatmap.
        max_people: keep at most this many centres.
        threshold: keep centres with score strictly above this.
        kernel: odd max-pool size; ``None`` = ``nms_kernel_size(H, W)``.

    Returns:
        ``(scores N, locations N×2 int64 (x, y))`` with N <= max_people, sorted by score.
    """
    h, w = center_heat.shape
    kernel = nms_kernel_size(h, w) if kernel is None else int(kernel)
    heat = center_heat.float()
    pooled = F.max_pool2d(heat[None, None], kernel, stride=1, padding=kernel // 2)[0, 0]
    peaks = torch.where(pooled == heat, heat, torch.zeros_like(heat)).reshape(-1)
    scores, flat = peaks.topk(min(int(max_people), peaks.numel()))
    keep = scores > threshold
    scores, flat = scores[keep], flat[keep]
    locations = torch.stack([flat % w, torch.div(flat, w, rounding_mode="floor")], 1)
    return scores, locations


def sample_bilinear(maps: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear value of map k at point (n, k), points clamped into the map.

    Args:
        maps: K×H×W.
        points: N×K×2 (x, y) in map units.

    Returns:
        N×K values.
    """
    k, h, w = maps.shape
    x = points[..., 0].clamp(0, w - 1)
    y = points[..., 1].clamp(0, h - 1)
    x0 = x.floor().long().clamp(max=w - 2) if w > 1 else x.floor().long()
    y0 = y.floor().long().clamp(max=h - 2) if h > 1 else y.floor().long()
    x1 = (x0 + 1).clamp(max=w - 1)
    y1 = (y0 + 1).clamp(max=h - 1)
    fx = x - x0
    fy = y - y0
    flat = maps.reshape(k, h * w)

    def at(yi: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        return flat.gather(1, (yi * w + xi).T).T  # N×K

    top = at(y0, x0) * (1 - fx) + at(y0, x1) * fx
    bottom = at(y1, x0) * (1 - fx) + at(y1, x1) * fx
    return top * (1 - fy) + bottom * fy


@torch.no_grad()
def decode_regression(
    heatmaps: torch.Tensor,
    offsets: torch.Tensor,
    spec: KeypointSpec,
    max_people: int = 30,
    center_threshold: float = 0.01,
    kernel: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Regressed poses at the centre peaks of one image.

    Args:
        heatmaps: (K+1)×H×W raw heatmaps, channel K = person centre.
        offsets: 2K×H×W, channel 2k = x, 2k+1 = y of ``cell - keypoint`` (map units).
        spec: keypoint spec (for K).
        max_people, center_threshold, kernel: see ``center_nms``.

    Returns:
        ``(poses N×K×3 (x, y, score) in map units, scores N)``: keypoint score = centre score ×
        heat at the joint, person score = mean keypoint score; sorted by centre score.
    """
    k = spec.num_keypoints
    if heatmaps.shape[0] != k + 1 or offsets.shape[0] != 2 * k or heatmaps.shape[1:] != offsets.shape[1:]:
        raise ValueError(
            f"expected heatmaps {k + 1}×H×W and offsets {2 * k}×H×W, got "
            f"{tuple(heatmaps.shape)} and {tuple(offsets.shape)}"
        )
    h, w = heatmaps.shape[1:]
    center_scores, loc = center_nms(heatmaps[k], max_people, center_threshold, kernel)
    off = offsets.float().reshape(k, 2, h * w)[:, :, loc[:, 1] * w + loc[:, 0]]  # K×2×N
    joints = loc[:, None, :].float() - off.permute(2, 0, 1)  # N×K×2
    heat = sample_bilinear(heatmaps[:k].float(), joints).clamp(min=0)  # N×K
    joint_scores = center_scores[:, None] * heat
    poses = torch.cat([joints, joint_scores[..., None]], 2)
    return poses, joint_scores.mean(1)


@torch.no_grad()
def pose_duplicates(poses: torch.Tensor, num_joints: int, dist_factor: float = 0.05) -> torch.Tensor:
    """Pairwise duplicate matrix: ``D[i, j]`` when more than ``num_joints`` joints of pose j lie
    within ``dist_factor * diag_i`` of pose i's joints (``diag_i`` = diagonal of pose i's joint box).

    Args:
        poses: N×K×C (x, y, ...).

    Returns:
        N×N bool (diagonal True for any pose with more than ``num_joints`` joints).
    """
    xy = poses[..., :2].float()
    extent = xy.amax(1) - xy.amin(1)  # N×2
    diag = extent.norm(dim=1)  # N
    dist = (xy[:, None] - xy[None]).norm(dim=-1)  # N×N×K
    close = (dist < dist_factor * diag[:, None, None]).sum(-1)
    return close > num_joints


@torch.no_grad()
def pose_nms(
    poses: torch.Tensor, scores: torch.Tensor, spec: KeypointSpec, dist_factor: float = 0.05
) -> torch.Tensor:
    """Greedy pose NMS; returns kept indices, best score first.

    A pose is dropped when a kept pose with a higher score (ties: earlier index) has it as a
    duplicate by ``pose_duplicates(poses, spec.nms_threshold_joints, dist_factor)`` with the kept
    pose as reference (its box diagonal sets the distance). The greedy result is computed as the
    fixed point of ``keep[j] = not any(keep[i] and D[i, j] for i before j)`` by matrix iterations
    (at most N, usually 2-3).

    Args:
        poses: N×K×C (x, y, ...).
        scores: N.
        spec: keypoint spec (``nms_threshold_joints``).

    Returns:
        int64 indices into ``poses``.
    """
    n = poses.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=poses.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    dup = pose_duplicates(poses[order], spec.nms_threshold_joints, dist_factor)
    rank = torch.arange(n, device=poses.device)
    earlier = rank[:, None] < rank[None, :]  # (aten::triu is slow on CPU for tiny bool matrices)
    suppress = dup & earlier
    keep = torch.ones(n, dtype=torch.bool, device=poses.device)
    for _ in range(n):
        new = ~(suppress & keep[:, None]).any(0)
        if torch.equal(new, keep):
            break
        keep = new
    return order[keep]


def map_to_image(
    points: torch.Tensor, stride: int = 4, image_to_input: np.ndarray | torch.Tensor | None = None
) -> torch.Tensor:
    """Map coordinates (…×2, x y) to image pixels: ``x_in = stride·u``, then the inverse of the
    2×3 affine ``image_to_input`` (image pixels -> network-input pixels), if given."""
    pts = points.double() * float(stride)
    if image_to_input is None:
        return pts
    a = torch.as_tensor(np.asarray(image_to_input, dtype=np.float64), device=pts.device)
    if a.shape != (2, 3):
        raise ValueError(f"image_to_input must be a 2×3 affine matrix, got {tuple(a.shape)}")
    inv = torch.linalg.inv(a[:, :2])
    return (pts - a[:, 2]) @ inv.T


@torch.no_grad()
def decode_image(
    outputs: Sequence[torch.Tensor],
    spec: KeypointSpec,
    image_to_input: np.ndarray | torch.Tensor | None = None,
    stride: int = 4,
    max_people: int = 30,
    center_threshold: float = 0.01,
    kernel: int | None = None,
    nms: bool = True,
    score_factor: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode one image's network outputs into poses in image pixels.

    Args:
        outputs: ``(heatmaps (K+1)×H×W, offsets 2K×H×W[, tags])``; a leading batch dim of 1 is
            accepted.
        spec: keypoint spec.
        image_to_input: 2×3 affine mapping image pixels to network-input pixels (the resize/crop
            used for this test scale); ``None`` = identity.
        stride: output stride (map cell u is input pixel ``stride·u``).
        max_people, center_threshold, kernel: see ``center_nms``.
        nms: apply ``pose_nms``.
        score_factor: a constant factor on every score (multi-scale scoring is ``grmpose.tta``).

    Returns:
        ``(poses N×K×3 float64 (x, y, score) in image pixels, scores N)``, best first.
    """
    heatmaps, offsets = outputs[0], outputs[1]
    if heatmaps.dim() == 4:
        heatmaps, offsets = heatmaps[0], offsets[0]
    poses, scores = decode_regression(heatmaps, offsets, spec, max_people, center_threshold, kernel)
    if nms:
        keep = pose_nms(poses, scores, spec)
    else:
        keep = torch.sort(scores, descending=True, stable=True).indices
    poses, scores = poses[keep], scores[keep]
    xy = map_to_image(poses[..., :2], stride, image_to_input)
    out = torch.cat([xy, poses[..., 2:].double() * score_factor], 2)
    return out.cpu().numpy(), (scores.double() * score_factor).cpu().numpy()
