"""Losses: weighted heatmap MSE, weighted smooth-L1 offsets (DEKR) and AE tag pull/push.

The keypoint maps can instead be trained with CornerNet's penalty-reduced focal loss
(``heatmap_focal_loss``, ``grmpose train --heatmap-loss focal``, a model whose heatmap head ends in a
sigmoid; the centre map keeps the MSE). It is not DEKR's: it weights the few cells at the joints as
much as the many background cells, where the MSE's gradient is spread thin over the whole map.
Measured in ``benchmarks/results/demo_levers.md``: in 4 demo minutes it placed more joints at 128 px,
fewer at 192, and scored a lower AP at both.

All functions are batched and vectorised (people are padded with tag index −1). Targets come from
``grmpose.targets.build_targets`` and are stacked with ``collate_targets``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "LossWeights",
    "collate_targets",
    "heatmap_focal_loss",
    "heatmap_loss",
    "offset_loss",
    "pad_tag_index",
    "smooth_l1",
    "tag_loss",
    "total_loss",
]


@dataclass(frozen=True)
class LossWeights:
    """Factors of the loss terms (DESIGN.md §2)."""

    heatmap: float = 1.0
    offset: float = 0.03
    pull: float = 1e-3
    push: float = 1e-3
    heatmap_form: str = "mse"  # "mse" (DEKR's) | "focal" (heatmap_focal_loss, sigmoid heatmaps)


def heatmap_loss(pred: torch.Tensor, gt: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``mean((pred - gt)^2 * weights)`` over every element.

    Args:
        pred, gt, weights: B×(K+1)×H×W (weights broadcastable).
    """
    return ((pred - gt) ** 2 * weights).mean()


def heatmap_focal_loss(
    prob: torch.Tensor, gt: torch.Tensor, weights: torch.Tensor, alpha: float = 2.0, beta: float = 4.0
) -> torch.Tensor:
    """CornerNet's penalty-reduced focal loss (Law & Deng 2018, eq. 1), divided by the number of peaks.

    A joint's own cell (a peak: the target's maximum over its 3×3 neighbourhood, above 0.5; the
    Gaussians are centred on the joint, not on a cell, so the peak is below 1) costs
    ``-(1 - p)^alpha log p``; every other cell ``-(1 - y)^beta p^alpha log(1 - p)``, so cells close to
    a joint are penalised less for firing. Cells with weight 0 (ignored crowds, padding) are left out;
    the MSE's background weight (0.1) is not used, the focal terms already down-weight the easy
    background.

    Args:
        prob: B×C×H×W, the sigmoid heatmaps (clamped to [1e-4, 1 - 1e-4] here).
        gt: B×C×H×W Gaussian targets; weights: their weights, broadcastable to ``prob``.
    """
    p = prob.clamp(1e-4, 1.0 - 1e-4)
    keep = (weights > 0).to(p.dtype).expand_as(p)
    local_max = torch.nn.functional.max_pool2d(gt, 3, stride=1, padding=1)
    peak = ((gt == local_max) & (gt > 0.5)).to(p.dtype) * keep
    pos = -((1.0 - p) ** alpha) * torch.log(p) * peak
    neg = -((1.0 - gt) ** beta) * p**alpha * torch.log1p(-p) * (keep - peak)
    return (pos.sum() + neg.sum()) / peak.sum().clamp(min=1.0)


def smooth_l1(diff: torch.Tensor, beta: float = 1.0 / 9.0) -> torch.Tensor:
    """Elementwise smooth-L1: ``0.5 d^2 / beta`` for ``|d| < beta``, else ``|d| - 0.5 beta``."""
    a = diff.abs()
    return torch.where(a < beta, 0.5 * a**2 / beta, a - 0.5 * beta)


def offset_loss(
    pred: torch.Tensor, gt: torch.Tensor, weights: torch.Tensor, beta: float = 1.0 / 9.0
) -> torch.Tensor:
    """Weighted smooth-L1 summed and divided by the number of non-zero weights (at least 1).

    Args:
        pred, gt, weights: B×2K×H×W.
    """
    count = (weights != 0).sum().clamp(min=1)
    return (smooth_l1(pred - gt, beta) * weights).sum() / count


def tag_loss(
    tags: torch.Tensor, tag_index: torch.Tensor | Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Associative-embedding pull and push losses per image.

    For image b with people n (those with at least one valid joint), ``h̄_n`` is the mean tag of n's
    joints; ``pull = mean_n mean_k (h_k - h̄_n)^2`` and ``push = mean_{n != m} exp(-(h̄_n - h̄_m)^2)``
    (ordered pairs; 0 with fewer than two people). Images without people give 0 for both.

    Args:
        tags: B×K×H×W, one embedding value per keypoint.
        tag_index: B×N×K int64 flat indices ``y*W + x`` (−1 = no joint; people padded with −1 rows),
            or a length-B list of N_b×K tensors.

    Returns:
        ``(pull, push)``, each of shape B.
    """
    b, k, h, w = tags.shape
    if not torch.is_tensor(tag_index):
        tag_index = pad_tag_index(list(tag_index), k)
    index = tag_index.to(tags.device, torch.long)
    if index.shape[0] != b or index.shape[2] != k:
        raise ValueError(f"tag_index shape {tuple(index.shape)} does not match tags {tuple(tags.shape)}")
    n = index.shape[1]
    if n == 0:
        zero = tags.sum((1, 2, 3)) * 0.0
        return zero, zero
    valid = index >= 0  # B×N×K
    flat = tags.reshape(b, k, h * w)
    values = flat.gather(2, index.clamp(min=0).transpose(1, 2)).transpose(1, 2)  # B×N×K
    vf = valid.to(tags.dtype)
    joints = vf.sum(2)  # B×N
    person = joints > 0
    pf = person.to(tags.dtype)
    mean = (values * vf).sum(2) / joints.clamp(min=1)  # B×N
    pull_n = (((values - mean[:, :, None]) ** 2) * vf).sum(2) / joints.clamp(min=1)  # B×N
    people = pf.sum(1)  # B
    pull = (pull_n * pf).sum(1) / people.clamp(min=1)

    diff = mean[:, :, None] - mean[:, None, :]  # B×N×N
    pair = pf[:, :, None] * pf[:, None, :] * (1.0 - torch.eye(n, dtype=tags.dtype, device=tags.device))
    pairs = pair.sum((1, 2))
    push = (torch.exp(-(diff**2)) * pair).sum((1, 2)) / pairs.clamp(min=1)
    return pull, push


def pad_tag_index(indices: Sequence[torch.Tensor], num_keypoints: int) -> torch.Tensor:
    """Stack per-image N_b×K tag indices into B×N×K, padding people with −1 rows."""
    n = max((int(t.shape[0]) for t in indices), default=0)
    out = torch.full((len(indices), n, num_keypoints), -1, dtype=torch.long)
    for i, t in enumerate(indices):
        out[i, : t.shape[0]] = torch.as_tensor(t, dtype=torch.long)
    return out


def collate_targets(targets: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack per-image targets from ``build_targets`` into batch tensors.

    Returns:
        ``heatmaps``/``heat_weights`` B×(K+1)×H×W, ``offsets``/``offset_weights`` B×2K×H×W,
        ``tag_index`` B×N×K (N = most people in one image, padded with −1).
    """
    if not targets:
        raise ValueError("collate_targets needs at least one image")
    out = {key: torch.stack([torch.as_tensor(t[key]) for t in targets]) for key in _DENSE}
    k = out["offsets"].shape[1] // 2
    out["tag_index"] = pad_tag_index([torch.as_tensor(t["tag_index"]) for t in targets], k)
    return out


_DENSE = ("heatmaps", "heat_weights", "offsets", "offset_weights")


def _unpack(outputs: Sequence[torch.Tensor] | Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    if isinstance(outputs, Mapping):
        return outputs["heatmaps"], outputs["offsets"], outputs["tags"]
    heatmaps, offsets, tags = outputs
    return heatmaps, offsets, tags


def total_loss(
    outputs: Sequence[torch.Tensor] | Mapping[str, torch.Tensor],
    targets: Mapping[str, torch.Tensor],
    factors: LossWeights = LossWeights(),  # noqa: B008 - frozen dataclass, immutable default
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of the four terms.

    Args:
        outputs: network outputs ``(heatmaps B×(K+1)×H×W, offsets B×2K×H×W, tags B×K×H×W)`` (a
            tuple, or a mapping with those keys).
        targets: batched targets from ``collate_targets`` (moved to the outputs' device here).
        factors: term weights.

    Returns:
        ``(loss, parts)``: the scalar loss, and the detached weighted terms ``heatmap``,
        ``offset``, ``pull``, ``push`` (scalars, batch means).
    """
    heatmaps, offsets, tags = _unpack(outputs)
    dev = heatmaps.device
    t = {key: v.to(dev) for key, v in targets.items()}
    if t["heatmaps"].shape != heatmaps.shape or t["offsets"].shape != offsets.shape:
        raise ValueError(
            f"target shapes {tuple(t['heatmaps'].shape)}, {tuple(t['offsets'].shape)} do not match "
            f"outputs {tuple(heatmaps.shape)}, {tuple(offsets.shape)}"
        )
    pull, push = tag_loss(tags, t["tag_index"])
    if factors.heatmap_form == "focal":  # the keypoint maps; the person centre keeps the MSE
        heat = heatmap_focal_loss(heatmaps[:, :-1], t["heatmaps"][:, :-1], t["heat_weights"][:, :-1])
        heat = heat + heatmap_loss(heatmaps[:, -1:], t["heatmaps"][:, -1:], t["heat_weights"][:, -1:])
    elif factors.heatmap_form == "mse":
        heat = heatmap_loss(heatmaps, t["heatmaps"], t["heat_weights"])
    else:
        raise ValueError(f"unknown heatmap loss {factors.heatmap_form!r}: choose mse or focal")
    parts = {
        "heatmap": factors.heatmap * heat,
        "offset": factors.offset * offset_loss(offsets, t["offsets"], t["offset_weights"]),
        "pull": factors.pull * pull.mean(),
        "push": factors.push * push.mean(),
    }
    loss = parts["heatmap"] + parts["offset"] + parts["pull"] + parts["push"]
    return loss, {key: v.detach() for key, v in parts.items()}
