"""Grouping decoders for one image's maps: Associative Embedding, and a regression/heatmap hybrid.

Three decoders share one output convention (that of ``grmpose.decode.decode_regression``):
``(poses N×K×3 (x, y, score) in map units, scores N)``, no pose NMS applied.

* ``regression`` -- DEKR: the pose regressed at each centre peak (``grmpose.decode``).
* ``ae`` -- Associative Embedding grouping (Newell et al., as HigherHRNet runs it): heatmap peaks
  per joint, joints taken in a fixed order, each joint's peaks matched to the groups built so far by
  the Hungarian algorithm on tag distance, unmatched peaks start new groups; missing joints are
  filled by the refinement step.
* ``hybrid`` -- ours: DEKR regressed poses whose joints snap to a nearby heatmap peak of the same
  joint type when the peak's tag agrees with the person's tag.

Coordinates are map units with integer coordinates at cell centres (``grmpose.spec``). Heatmap
peaks get AE's quarter-pixel refinement: a quarter cell toward the higher of the two neighbours
along each axis (no shift when the neighbours are equal; AE shifts by −¼ on ties).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from grmpose.decode import center_nms, decode_regression, sample_bilinear
from grmpose.spec import KeypointSpec

__all__ = [
    "DECODERS",
    "decode_ae",
    "decode_hybrid",
    "decode_maps",
    "joint_order",
    "joint_peaks",
    "max_filter",
    "regression_candidates",
    "score_joints",
    "snap_joints",
]

# Keypoint-name fragments of the head and torso: AE groups these first (their tags are the most
# reliable and they anchor a person before the limbs are matched).
_TORSO_WORDS = ("nose", "head", "neck", "eye", "ear", "shoulder", "hip", "pelvis", "thorax", "spine")


def joint_order(spec: KeypointSpec) -> np.ndarray:
    """Order in which AE matches joint types: head/torso joints first, then the rest.

    Joints whose name contains one of ``nose, head, neck, eye, ear, shoulder, hip, pelvis, thorax,
    spine`` come first, each group in spec order. For COCO this is AE's own order (face, shoulders,
    hips, then elbows, wrists, knees, ankles); a spec with other names falls back to spec order.

    Returns:
        K int64 permutation of ``range(K)``.
    """
    names = [n.lower() for n in spec.keypoints]
    torso = [i for i, n in enumerate(names) if any(w in n for w in _TORSO_WORDS)]
    rest = [i for i in range(len(names)) if i not in torso]
    return np.asarray(torso + rest, dtype=np.int64)


def _quarter_offsets(heat: torch.Tensor, ch: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Quarter-cell shift toward the higher neighbour along x and y.

    Args:
        heat: K×H×W maps.
        ch, x, y: int64 tensors of one shape S: map index and cell of each peak.

    Returns:
        S×2 shifts in {−¼, 0, ¼}.
    """
    _, h, w = heat.shape
    flat = heat.reshape(-1)

    def at(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        return flat[(ch * h + yy) * w + xx]

    dx = at(y, (x + 1).clamp(max=w - 1)) - at(y, (x - 1).clamp(min=0))
    dy = at((y + 1).clamp(max=h - 1), x) - at((y - 1).clamp(min=0), x)
    return 0.25 * torch.stack([dx.sign(), dy.sign()], -1)


def max_filter(maps: torch.Tensor, kernel: int) -> torch.Tensor:
    """Maximum over the ``kernel``×``kernel`` window centred on each cell of C×H×W maps (the same
    values as ``max_pool2d(kernel, stride=1, padding=kernel // 2)``), as separable shifted maxima:
    about 10× faster than ``max_pool2d`` on CPU for a 5×5 window."""
    r = int(kernel) // 2
    h, w = maps.shape[-2:]
    padded = F.pad(maps, (r, r), value=float("-inf"))
    rows = padded[..., :, 0:w]
    for i in range(1, 2 * r + 1):
        rows = torch.maximum(rows, padded[..., :, i : i + w])
    padded = F.pad(rows, (0, 0, r, r), value=float("-inf"))
    out = padded[..., 0:h, :]
    for i in range(1, 2 * r + 1):
        out = torch.maximum(out, padded[..., i : i + h, :])
    return out


@torch.no_grad()
def joint_peaks(
    heat: torch.Tensor, max_peaks: int = 30, kernel: int = 5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top local maxima of every keypoint heatmap (max-pool NMS), best first.

    Args:
        heat: K×H×W keypoint heatmaps (no centre channel).
        max_peaks: M = min(max_peaks, H·W) peaks per map.
        kernel: odd max-pool size (AE uses 5 at stride 4).

    Returns:
        ``(values K×M, xy K×M×2 float (x, y) sub-pixel refined, cells K×M int64 flat index y·W+x)``;
        non-maxima have value 0 (callers threshold the values).
    """
    k, h, w = heat.shape
    heat = heat.float()
    pooled = max_filter(heat, kernel)
    peaks = torch.where(pooled == heat, heat, torch.zeros_like(heat)).reshape(k, h * w)
    values, cells = peaks.topk(min(int(max_peaks), h * w), dim=1)
    x, y = cells % w, torch.div(cells, w, rounding_mode="floor")
    ch = torch.arange(k, device=heat.device)[:, None].expand_as(x)
    xy = torch.stack([x, y], -1).float() + _quarter_offsets(heat, ch, x, y)
    return values, xy, cells


# ---------------------------------------------------------------- Associative Embedding


def _group_by_tag(
    values: np.ndarray,
    xy: np.ndarray,
    tags: np.ndarray,
    order: np.ndarray,
    detection_threshold: float,
    tag_threshold: float,
) -> tuple[np.ndarray, np.ndarray]:
    """AE's greedy joint-by-joint matching.

    For each joint type j in ``order``: the peaks above ``detection_threshold`` are matched to the
    existing groups by ``linear_sum_assignment`` on the cost ``round(|tag − group tag|)·100 − heat``
    (AE: tag distances are compared in whole units first, the heat breaks ties), a match is accepted
    when the tag distance is below ``tag_threshold``; every other peak starts a new group. A group's
    tag is the mean tag of its joints.

    Args:
        values, tags: K×M peak heat and tag values; xy: K×M×2 peak positions.

    Returns:
        ``(joints G×K×3 (x, y, heat; zeros where missing), group tags G)``.
    """
    k, m = values.shape
    joints = np.zeros((k * m, k, 3))
    tag_sum = np.zeros(k * m)
    count = np.zeros(k * m)
    g = 0
    for j in order:  # inherent to AE: each joint type is matched against the groups built so far
        ok = values[j] > detection_threshold
        val, pos, tag = values[j][ok], xy[j][ok], tags[j][ok]
        if len(val) == 0:
            continue
        new = np.ones(len(val), dtype=bool)
        if g > 0:
            dist = np.abs(tag[:, None] - tag_sum[None, :g] / count[None, :g])  # peaks × groups
            rows, cols = linear_sum_assignment(np.round(dist) * 100.0 - val[:, None])
            accept = dist[rows, cols] < tag_threshold
            rows, cols = rows[accept], cols[accept]
            joints[cols, j, :2] = pos[rows]
            joints[cols, j, 2] = val[rows]
            tag_sum[cols] += tag[rows]
            count[cols] += 1
            new[rows] = False
        fresh = np.arange(g, g + new.sum())
        joints[fresh, j, :2] = pos[new]
        joints[fresh, j, 2] = val[new]
        tag_sum[fresh] = tag[new]
        count[fresh] = 1
        g += len(fresh)
    return joints[:g], tag_sum[:g] / np.maximum(count[:g], 1)


@torch.no_grad()
def _refine_missing(
    joints: torch.Tensor, person_tags: torch.Tensor, heat: torch.Tensor, tags: torch.Tensor
) -> torch.Tensor:
    """AE refinement: fill each missing joint (heat 0) with the cell maximising
    ``heat − round(|tag − person tag|)``, quarter-pixel refined; kept when its heat is positive.

    Args:
        joints: N×K×3 (x, y, heat); person_tags: N; heat, tags: K×H×W.

    Returns:
        N×K×3 joints with the missing ones filled where possible.
    """
    k, h, w = heat.shape
    n_idx, k_idx = torch.nonzero(joints[..., 2] <= 0, as_tuple=True)  # P missing (person, joint)
    if len(n_idx) == 0:
        return joints
    flat_heat = heat.reshape(k, h * w)
    score = tags.reshape(k, h * w)[k_idx]  # P×HW copy, then in place: heat − round(|Δtag|)
    score.sub_(person_tags[n_idx, None]).abs_().round_()
    torch.sub(flat_heat[k_idx], score, out=score)
    cell = score.argmax(1)  # P
    val = flat_heat[k_idx, cell]
    x, y = cell % w, torch.div(cell, w, rounding_mode="floor")
    shift = _quarter_offsets(heat, k_idx, x, y)  # P×2
    filled = torch.cat([torch.stack([x, y], -1).to(joints.dtype) + shift, val[:, None].to(joints)], 1)
    keep = val > 0
    out = joints.clone()
    out[n_idx[keep], k_idx[keep]] = filled[keep]
    return out


@torch.no_grad()
def decode_ae(
    heatmaps: torch.Tensor,
    tags: torch.Tensor,
    spec: KeypointSpec,
    max_people: int = 30,
    detection_threshold: float = 0.1,
    tag_threshold: float = 1.0,
    refine: bool = True,
    kernel: int = 5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Associative Embedding grouping of one image's maps.

    Steps: ``joint_peaks`` (top ``max_people`` peaks per joint, max-pool ``kernel``) ->
    ``_group_by_tag`` over ``joint_order(spec)`` (Hungarian matching on
    ``round(|Δtag|)·100 − heat``, tag threshold ``tag_threshold``) -> person score = mean joint heat
    over all K joints (missing = 0), as AE scores before refinement -> keep the ``max_people`` best
    -> ``refine``: fill missing joints (see ``_refine_missing``).

    A joint still missing after that (no refinement, or no positive heat) is placed at the mean of
    the person's found joints with score 0, so that boxes and pose NMS stay meaningful.

    Args:
        heatmaps: (K+1)×H×W (channel K, the centre, is not used).
        tags: K×H×W, one embedding value per joint.
        spec: keypoint spec.

    Returns:
        ``(poses N×K×3 (x, y, heat) float32 map units, scores N)`` sorted by score, N <= max_people.
    """
    k = spec.num_keypoints
    if heatmaps.shape[0] != k + 1 or tags.shape[0] != k or heatmaps.shape[1:] != tags.shape[1:]:
        raise ValueError(
            f"expected heatmaps {k + 1}×H×W and tags {k}×H×W, got {tuple(heatmaps.shape)} and {tuple(tags.shape)}"
        )
    heat = heatmaps[:k].float()
    tag_maps = tags.float()
    values, xy, cells = joint_peaks(heat, max_people, kernel)
    peak_tags = tag_maps.reshape(k, -1).gather(1, cells)
    joints, person_tags = _group_by_tag(
        values.cpu().double().numpy(),
        xy.cpu().double().numpy(),
        peak_tags.cpu().double().numpy(),
        joint_order(spec),
        detection_threshold,
        tag_threshold,
    )
    device = heatmaps.device
    joints_t = torch.as_tensor(joints, dtype=torch.float32, device=device)
    scores = joints_t[..., 2].mean(1)
    order = torch.sort(scores, descending=True, stable=True).indices[: int(max_people)]
    joints_t, scores = joints_t[order], scores[order]
    person_t = torch.as_tensor(person_tags, dtype=torch.float32, device=device)[order]
    if refine:
        joints_t = _refine_missing(joints_t, person_t, heat, tag_maps)
    found = joints_t[..., 2] > 0  # N×K
    mean_xy = (joints_t[..., :2] * found[..., None]).sum(1) / found.sum(1, keepdim=True).clamp(min=1)
    joints_t[..., :2] = torch.where(found[..., None], joints_t[..., :2], mean_xy[:, None, :])
    return joints_t, scores


# ---------------------------------------------------------------- regression + snapping


@torch.no_grad()
def regression_candidates(
    heatmaps: torch.Tensor,
    offsets: torch.Tensor,
    spec: KeypointSpec,
    max_people: int = 30,
    center_threshold: float = 0.01,
    kernel: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DEKR's regressed joints and their centre scores.

    Returns:
        ``(joints N×K×2 (x, y) map units, centre scores N)``, in ``decode_regression``'s order.
    """
    poses, _ = decode_regression(heatmaps, offsets, spec, max_people, center_threshold, kernel)
    center_scores, _ = center_nms(heatmaps[spec.num_keypoints], max_people, center_threshold, kernel)
    return poses[..., :2], center_scores


@torch.no_grad()
def score_joints(
    joints: torch.Tensor, center_scores: torch.Tensor, heat: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """DEKR scoring: keypoint score = centre score × heat at the joint (bilinear, clamped at 0);
    person score = mean keypoint score.

    Args:
        joints: N×K×2 map units; center_scores: N; heat: K×H×W keypoint heatmaps.

    Returns:
        ``(poses N×K×3 (x, y, score), scores N)``.
    """
    joint_scores = center_scores[:, None] * sample_bilinear(heat.float(), joints).clamp(min=0)
    return torch.cat([joints, joint_scores[..., None].to(joints.dtype)], 2), joint_scores.mean(1)


@torch.no_grad()
def snap_joints(
    joints: torch.Tensor,
    heat: torch.Tensor,
    tags: torch.Tensor,
    sigmas: tuple[float, ...] | list[float] | np.ndarray,
    max_peaks: int = 30,
    detection_threshold: float = 0.1,
    tag_threshold: float = 1.0,
    radius_scale: float = 2.0,
    min_radius: float = 2.0,
    kernel: int = 5,
    keep_within: float = 0.5,
) -> torch.Tensor:
    """Move regressed joints onto nearby heatmap peaks whose tag agrees with the person's.

    * person tag = median over its K joints of the tag map sampled (bilinear) at the regressed
      joints;
    * peaks: ``joint_peaks`` of each keypoint map, heat > ``detection_threshold``;
    * joint k of person n may snap to a peak of map k within radius
      ``max(min_radius, radius_scale · 2σ_k · sqrt(area_n))`` (``2σ_k·s`` is the OKS falloff
      ``κ_k·s``; ``area_n`` = box area of the regressed joints, map units²) whose tag is within
      ``tag_threshold`` of the person tag; the nearest such peak is taken;
    * one peak serves one person: the person nearest to it wins, the others keep their regressed
      joint;
    * a joint already within ``keep_within`` map units of its peak stays where it is (the peak
      only says which cell, the regression carries the sub-cell detail).

    Args:
        joints: N×K×2 regressed joints (map units).
        heat: K×H×W keypoint heatmaps; tags: K×H×W tag maps.
        sigmas: K OKS sigmas (``spec.sigmas``).

    Returns:
        N×K×2 joints.
    """
    n, k = joints.shape[:2]
    if n == 0:
        return joints
    values, peak_xy, cells = joint_peaks(heat, max_peaks, kernel)  # K×M
    peak_tags = tags.float().reshape(k, -1).gather(1, cells)
    person_tag = sample_bilinear(tags.float(), joints.float()).median(1).values  # N
    extent = joints.amax(1) - joints.amin(1)  # N×2
    size = (extent[:, 0] * extent[:, 1]).clamp(min=1.0).sqrt()  # N
    kappa = 2.0 * torch.as_tensor(
        np.asarray(sigmas, dtype=np.float64), dtype=joints.dtype, device=joints.device
    )
    radius = (radius_scale * kappa[None] * size[:, None]).clamp(min=min_radius)  # N×K

    dist = (joints[:, :, None, :] - peak_xy[None].to(joints.dtype)).norm(dim=-1)  # N×K×M
    ok = (
        (values[None] > detection_threshold)
        & (dist <= radius[..., None])
        & ((peak_tags[None] - person_tag[:, None, None]).abs() < tag_threshold)
    )
    cost = torch.where(ok, dist, torch.full_like(dist, float("inf")))
    best_cost, best_peak = cost.min(2)  # N×K
    owner = cost.argmin(0)  # K×M: nearest person of each peak
    k_idx = torch.arange(k, device=joints.device)[None].expand(n, k)
    n_idx = torch.arange(n, device=joints.device)[:, None].expand(n, k)
    snap = torch.isfinite(best_cost) & (best_cost > keep_within) & (owner[k_idx, best_peak] == n_idx)
    target = peak_xy[k_idx, best_peak].to(joints.dtype)  # N×K×2
    return torch.where(snap[..., None], target, joints)


@torch.no_grad()
def decode_hybrid(
    heatmaps: torch.Tensor,
    offsets: torch.Tensor,
    tags: torch.Tensor,
    spec: KeypointSpec,
    max_people: int = 30,
    center_threshold: float = 0.01,
    detection_threshold: float = 0.1,
    tag_threshold: float = 1.0,
    radius_scale: float = 2.0,
    min_radius: float = 2.0,
    kernel: int | None = None,
    peak_kernel: int = 5,
    keep_within: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DEKR regressed poses with joints snapped to tag-consistent heatmap peaks (``snap_joints``),
    scored from the heat at the snapped joints (``score_joints``).

    Args:
        heatmaps: (K+1)×H×W; offsets: 2K×H×W; tags: K×H×W.
        kernel: centre NMS kernel (``None`` = by map size); peak_kernel: keypoint-peak NMS kernel.

    Returns:
        ``(poses N×K×3 (x, y, score) map units, scores N)`` in centre-score order.
    """
    k = spec.num_keypoints
    if tags.shape[0] != k or tags.shape[1:] != heatmaps.shape[1:]:
        raise ValueError(f"expected tags {k}×H×W matching the heatmaps, got {tuple(tags.shape)}")
    joints, center_scores = regression_candidates(
        heatmaps, offsets, spec, max_people, center_threshold, kernel
    )
    joints = snap_joints(
        joints,
        heatmaps[:k],
        tags,
        spec.sigmas,
        max_people,
        detection_threshold,
        tag_threshold,
        radius_scale,
        min_radius,
        peak_kernel,
        keep_within,
    )
    return score_joints(joints, center_scores, heatmaps[:k])


# ---------------------------------------------------------------- one entry point


def _regression(heatmaps, offsets, tags, spec, **kw):
    return decode_regression(heatmaps, offsets, spec, **kw)


def _ae(heatmaps, offsets, tags, spec, **kw):
    return decode_ae(heatmaps, tags, spec, **kw)


DECODERS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    "regression": _regression,
    "ae": _ae,
    "hybrid": decode_hybrid,
}


def check_decoder(decoder: str) -> str:
    """Return ``decoder`` if it names one of ``DECODERS``, else raise ``ValueError`` listing them."""
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}: choose one of {', '.join(DECODERS)}")
    return decoder


@torch.no_grad()
def decode_maps(
    heatmaps: torch.Tensor,
    offsets: torch.Tensor,
    tags: torch.Tensor | None,
    spec: KeypointSpec,
    decoder: str = "regression",
    **kw,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode one image's maps with the named decoder (a key of ``DECODERS``).

    Args:
        heatmaps: (K+1)×H×W; offsets: 2K×H×W; tags: K×H×W (may be ``None`` for ``regression``).
        kw: decoder keyword arguments (``max_people``, thresholds, ...).

    Returns:
        ``(poses N×K×3 (x, y, score) map units, scores N)``, no pose NMS.
    """
    fn = DECODERS[check_decoder(decoder)]
    if tags is None and decoder != "regression":
        raise ValueError(f"decoder {decoder!r} needs tag maps")
    return fn(heatmaps, offsets, tags, spec, **kw)
