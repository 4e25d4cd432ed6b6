"""Multi-object tracking metrics for pose tracks, with OKS as the similarity.

* ``clear_mot``: MOTA, MOTP, IDF1 (with IDP, IDR), ID switches, misses and false positives, from
  the ``motmetrics`` library (py-motmetrics; ``pip install 'grmpose[track]'``). A prediction can
  match a ground truth when their OKS is at least ``threshold`` (0.5, as PoseTrack's MOTA); the
  distance handed to motmetrics is ``1 − OKS``.
* ``hota``: HOTA, DetA, AssA and LocA (Luiten et al., IJCV 2021), averaged over the localisation
  thresholds α = 0.05, 0.10, ..., 0.95. The motmetrics release on PyPI (1.4.0) has no HOTA, and
  TrackEval is not published there in a form that installs next to OpenCV-headless, so it is
  written out here following the paper and TrackEval's ``HOTA.eval_sequence``: per frame an
  optimal matching that maximises OKS × the pair's global alignment score, then per α the
  matched pairs with OKS ≥ α are true positives. ``docs/tracking.md`` records that it equals
  TrackEval's on the benchmark sequences.

Frames are given as ``(track_ids N, keypoints N×K×3)`` pairs; ground-truth keypoints carry COCO
visibility flags (``v > 0`` counts), predictions carry scores (ignored by OKS). Ground-truth areas
``s²`` come with the ground truth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from grmpose.oks import oks

__all__ = ["HOTA_ALPHAS", "TrackFrame", "clear_mot", "hota", "similarities"]

HOTA_ALPHAS = np.arange(1, 20) * 0.05  # 0.05 ... 0.95


@dataclass(frozen=True)
class TrackFrame:
    """People of one frame: ``ids`` N, ``keypoints`` N×K×3 and (ground truth) ``areas`` N."""

    ids: np.ndarray
    keypoints: np.ndarray
    areas: np.ndarray | None = None


def similarities(gt: TrackFrame, pred: TrackFrame, sigmas: Sequence[float]) -> np.ndarray:
    """OKS of every ground truth against every prediction: G×P."""
    if len(gt.ids) == 0 or len(pred.ids) == 0:
        return np.zeros((len(gt.ids), len(pred.ids)))
    areas = gt.areas if gt.areas is not None else np.ones(len(gt.ids))
    return oks(pred.keypoints, gt.keypoints, areas, sigmas).T


def clear_mot(
    gt: Sequence[TrackFrame], pred: Sequence[TrackFrame], sigmas: Sequence[float], threshold: float = 0.5
) -> dict[str, float]:
    """CLEAR-MOT and identity metrics of one sequence, via motmetrics.

    Returns:
        ``mota``, ``motp`` (mean OKS of the matches), ``idf1``, ``idp``, ``idr``,
        ``num_switches``, ``num_misses``, ``num_false_positives``, ``num_objects`` (ground-truth
        person-frames), ``num_matches``, ``num_frames``, ``num_unique_objects``,
        ``switches_per_100`` (ID switches per 100 ground-truth person-frames).
    """
    try:
        import motmetrics as mm
    except ImportError as err:
        raise ImportError("tracking metrics need motmetrics (pip install 'grmpose[track]')") from err
    if len(gt) != len(pred):
        raise ValueError(f"{len(gt)} ground-truth frames but {len(pred)} predicted frames")
    acc = mm.MOTAccumulator(auto_id=True)
    for g, p in zip(gt, pred):
        sim = similarities(g, p, sigmas)
        dist = np.where(sim >= threshold, 1.0 - sim, np.nan)
        acc.update(g.ids.tolist(), p.ids.tolist(), dist)
    names = [
        "mota", "motp", "idf1", "idp", "idr", "num_switches", "num_misses", "num_false_positives",
        "num_objects", "num_matches", "num_frames", "num_unique_objects",
    ]  # fmt: skip
    summary = mm.metrics.create().compute(acc, metrics=names, name="seq")
    out = {name: float(summary[name].iloc[0]) for name in names}
    out["motp"] = 1.0 - out["motp"] if np.isfinite(out["motp"]) else float("nan")  # mean OKS
    out["switches_per_100"] = 100.0 * out["num_switches"] / max(1.0, out["num_objects"])
    return out


def hota(gt: Sequence[TrackFrame], pred: Sequence[TrackFrame], sigmas: Sequence[float]) -> dict[str, float]:
    """HOTA of one sequence with OKS similarity (see the module docstring).

    Returns:
        ``hota``, ``deta``, ``assa``, ``loca`` (means over the 19 α) and ``hota_alpha`` (list).
    """
    if len(gt) != len(pred):
        raise ValueError(f"{len(gt)} ground-truth frames but {len(pred)} predicted frames")
    gt_ids = sorted({int(i) for f in gt for i in f.ids})
    pr_ids = sorted({int(i) for f in pred for i in f.ids})
    g_index = {v: i for i, v in enumerate(gt_ids)}
    p_index = {v: i for i, v in enumerate(pr_ids)}
    n_alpha = len(HOTA_ALPHAS)
    total_gt = sum(len(f.ids) for f in gt)
    total_pr = sum(len(f.ids) for f in pred)
    if total_gt == 0 or total_pr == 0:
        zero = {"hota": 0.0, "deta": 0.0, "assa": 0.0, "loca": 1.0, "hota_alpha": [0.0] * n_alpha}
        if total_gt == 0 and total_pr == 0:
            zero.update(hota=1.0, deta=1.0, assa=1.0, hota_alpha=[1.0] * n_alpha)
        return zero

    # pass 1: how strongly each (gt id, pred id) pair co-occurs over the sequence
    frames = []
    potential = np.zeros((len(gt_ids), len(pr_ids)))
    gt_count = np.zeros(len(gt_ids))
    pr_count = np.zeros(len(pr_ids))
    for g, p in zip(gt, pred):
        gi = np.array([g_index[int(i)] for i in g.ids], np.int64)
        pi = np.array([p_index[int(i)] for i in p.ids], np.int64)
        sim = similarities(g, p, sigmas)
        frames.append((gi, pi, sim))
        gt_count[gi] += 1
        pr_count[pi] += 1
        if sim.size:
            denom = sim.sum(0)[None, :] + sim.sum(1)[:, None] - sim
            potential[np.ix_(gi, pi)] += np.where(denom > 1e-12, sim / np.maximum(denom, 1e-12), 0.0)
    alignment = potential / (gt_count[:, None] + pr_count[None, :] - potential)

    # pass 2: per frame one matching, then per alpha the matches that are close enough
    tp = np.zeros(n_alpha)
    loc = np.zeros(n_alpha)
    matches = np.zeros((n_alpha, len(gt_ids), len(pr_ids)))
    for gi, pi, sim in frames:
        if not sim.size:
            continue
        score = alignment[np.ix_(gi, pi)] * sim
        rows, cols = linear_sum_assignment(-score)
        for a, alpha in enumerate(HOTA_ALPHAS):
            ok = sim[rows, cols] >= alpha - np.finfo(float).eps
            tp[a] += ok.sum()
            loc[a] += sim[rows[ok], cols[ok]].sum()
            matches[a, gi[rows[ok]], pi[cols[ok]]] += 1
    fn = total_gt - tp
    fp = total_pr - tp
    deta = tp / np.maximum(1.0, tp + fn + fp)
    assa = np.zeros(n_alpha)
    for a in range(n_alpha):
        m = matches[a]
        pair_score = m / np.maximum(1.0, gt_count[:, None] + pr_count[None, :] - m)
        assa[a] = (m * pair_score).sum() / max(1.0, tp[a])
    loca = np.where(tp > 0, loc / np.maximum(tp, 1.0), 1.0)
    hota_alpha = np.sqrt(deta * assa)
    return {
        "hota": float(hota_alpha.mean()),
        "deta": float(deta.mean()),
        "assa": float(assa.mean()),
        "loca": float(loca.mean()),
        "hota_alpha": [float(v) for v in hota_alpha],
    }
