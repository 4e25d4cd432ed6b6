"""DEKR's rescoring net (DESIGN.md §3): predict each pose's OKS from its shape and joint scores.

The decoder's person score (mean keypoint score) ranks poses for AP. A small MLP that looks at the
pose itself -- limb vectors, limb lengths and joint scores -- predicts the OKS the pose reaches with
its best-matching ground truth. As DEKR (``lib/utils/rescore.py``, ``rescore_valid``), the final
score is that prediction times the decoder's score (a NaN prediction counts as 0): the net
re-weights the decoder's confidence instead of replacing it.

Pipeline:
    * ``collect_training_pairs``: run the model on training images, match each predicted pose to
      the ground truth with the highest OKS; ``(pose_features(poses), that OKS)`` are the pairs.
    * ``fit_rescorer``: Adam + MSE on those pairs, deterministic from a seed.
    * ``save_rescorer`` / ``load_rescorer``: safetensors with the spec and feature layout in its
      metadata; ``load_rescorer`` refuses a file made for another keypoint spec.
    * ``rescore_fit_main`` (``grmpose rescore-fit``). The AP with / without the net is
      ``grmpose.evaluate_run.rescore_gain`` (evaluation depends on rescoring, not the reverse).

Feature layout (``FEATURE_LAYOUT``), for the L limbs ``(a, b)`` of ``spec.skeleton`` and K joints:
    ``[dx_1..dx_L, dy_1..dy_L, len_1..len_L, score_1..score_K]`` (F = 3L + K), with
    ``(dx, dy) = joint_b - joint_a`` and ``len = |(dx, dy)|``, all divided by the pose's torso
    length (DEKR ``get_feature``): the mean length of its shoulder–hip limbs (``torso_limbs``),
    at least ``MIN_SCALE`` pixels. A spec without shoulder–hip limbs uses the diagonal of the box
    around the K joints instead.

    DEKR's code takes its limbs 9 and 11 as the torso for both datasets; on COCO these are the
    shoulder–hip limbs, on CrowdPose (whose limb list is ordered differently) the left thigh and
    shin -- an index copied from COCO, not its intent ("use the torso distance to normalize").
    We take the shoulder–hip limbs on every spec.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from grmpose.checkpoint import CheckpointError
from grmpose.data.coco import DataError, ImageRecord, load_image
from grmpose.fileio import atomic_path
from grmpose.oks import oks
from grmpose.spec import KeypointSpec

__all__ = [
    "FEATURE_LAYOUT",
    "RescoreNet",
    "Rescorer",
    "collect_training_pairs",
    "fit_rescorer",
    "load_rescorer",
    "num_features",
    "pose_features",
    "rescore_fit_main",
    "save_rescorer",
    "torso_limbs",
]

log = logging.getLogger(__name__)

FEATURE_LAYOUT = "limb_dx,limb_dy,limb_len,joint_score/torso"
FORMAT = "grmpose-rescore"
MIN_SCALE = 1.0  # pixels: the torso length never goes below this (DEKR: normalize[normalize < 1] = 1)

Forward = Callable[[torch.Tensor], Sequence]


# ----------------------------------------------------------------------------------------------
# Features


def num_features(spec: KeypointSpec) -> int:
    """F = 3 L + K for the spec's L limbs and K keypoints."""
    return 3 * len(spec.skeleton) + spec.num_keypoints


def torso_limbs(spec: KeypointSpec) -> list[tuple[int, int]]:
    """The limbs of ``spec.skeleton`` that join a shoulder to a hip (by keypoint name).

    COCO: (left shoulder, left hip), (right shoulder, right hip) -- DEKR's limbs 9 and 11. Empty
    for a spec without such names (``pose_features`` then uses the joint box diagonal).
    """
    names = [n.lower() for n in spec.keypoints]
    out = []
    for a, b in spec.skeleton:
        pair = {names[a], names[b]}
        if any("shoulder" in n for n in pair) and any("hip" in n for n in pair):
            out.append((a, b))
    return out


def pose_scale(poses: np.ndarray, spec: KeypointSpec) -> np.ndarray:
    """Length that normalises the rescoring features: N values >= ``MIN_SCALE`` (pixels).

    The mean length of the ``torso_limbs``; without torso limbs, the diagonal of the joints' box.

    Args:
        poses: N×K×≥2 (x, y, ...) in image pixels.
    """
    xy = np.asarray(poses, dtype=np.float64)[:, :, :2]
    torso = np.asarray(torso_limbs(spec), dtype=np.int64).reshape(-1, 2)
    if len(torso):
        scale = np.linalg.norm(xy[:, torso[:, 1]] - xy[:, torso[:, 0]], axis=-1).mean(1)
    else:
        scale = np.linalg.norm(xy.max(1) - xy.min(1), axis=-1)
    return np.maximum(scale, MIN_SCALE)


def pose_features(poses: np.ndarray, spec: KeypointSpec) -> np.ndarray:
    """Rescoring features of N poses (layout in the module docstring).

    Args:
        poses: N×K×3 ``(x, y, score)`` in image pixels.
        spec: the keypoint spec (its skeleton gives the limbs).

    Returns:
        N×F float32, F = ``num_features(spec)``.
    """
    poses = np.asarray(poses, dtype=np.float64)
    k = spec.num_keypoints
    if poses.ndim != 3 or poses.shape[1] != k or poses.shape[2] < 3:
        raise ValueError(f"poses must be N×{k}×3 (x, y, score) for spec {spec.name!r}, got {poses.shape}")
    xy = poses[:, :, :2]  # N×K×2
    scale = pose_scale(poses, spec)  # N
    limbs = np.asarray(spec.skeleton, dtype=np.int64).reshape(-1, 2)  # L×2
    vec = (xy[:, limbs[:, 1]] - xy[:, limbs[:, 0]]) / scale[:, None, None]  # N×L×2
    length = np.sqrt((vec**2).sum(-1))  # N×L
    feats = np.concatenate([vec[:, :, 0], vec[:, :, 1], length, poses[:, :, 2]], axis=1)
    return feats.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Network and training


class RescoreNet(nn.Module):
    """MLP F → hidden → hidden → 1 with ReLU (DEKR's rescore net); outputs the predicted OKS."""

    def __init__(self, num_features: int, hidden: int = 256) -> None:
        super().__init__()
        self.num_features = int(num_features)
        self.hidden = int(hidden)
        self.layers = nn.Sequential(
            nn.Linear(self.num_features, self.hidden),
            nn.ReLU(inplace=True),
            nn.Linear(self.hidden, self.hidden),
            nn.ReLU(inplace=True),
            nn.Linear(self.hidden, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """N×F features -> N predicted OKS values."""
        return self.layers(features).squeeze(-1)


def fit_rescorer(
    features: np.ndarray,
    targets: np.ndarray,
    epochs: int = 50,
    lr: float = 1e-3,
    seed: int = 0,
    batch_size: int = 256,
    hidden: int = 256,
) -> RescoreNet:
    """Train a ``RescoreNet`` on ``(features, targets)`` with Adam and an MSE loss.

    A plain loop over shuffled mini-batches; the initial weights and the shuffling come from
    ``seed`` only (the global RNG is left as it was), so equal inputs give equal nets on CPU.

    Args:
        features: N×F float features (``pose_features``).
        targets: N target OKS values.
        epochs: passes over the data; lr: Adam learning rate; batch_size: samples per step.

    Returns:
        the trained net, in eval mode, on the CPU.
    """
    x = torch.as_tensor(np.asarray(features, dtype=np.float32))
    y = torch.as_tensor(np.asarray(targets, dtype=np.float32)).reshape(-1)
    if x.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"features must be N×F with N = {y.shape[0]} targets, got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("no training samples for the rescoring net")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = RescoreNet(x.shape[1], hidden)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for _ in range(int(epochs)):
        order = torch.randperm(x.shape[0], generator=gen)
        for start in range(0, x.shape[0], batch_size):
            idx = order[start : start + batch_size]
            loss = torch.nn.functional.mse_loss(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return net.eval()


@torch.no_grad()
def predict_oks(net: RescoreNet, features: np.ndarray) -> np.ndarray:
    """N predicted OKS values (float64) for N×F features."""
    x = torch.as_tensor(np.asarray(features, dtype=np.float32))
    was_training = net.training
    net.eval()
    out = net(x).double().numpy() if len(x) else np.zeros(0)
    net.train(was_training)
    return out


# ----------------------------------------------------------------------------------------------
# Training data


def collect_training_pairs(
    forward: Forward,
    records: Sequence[ImageRecord],
    spec: KeypointSpec,
    input_size: int,
    flip: bool = True,
    decoder: str = "regression",
    max_images: int | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Features of the model's own predictions and the OKS each reaches with its best ground truth.

    Each record's image is predicted with ``grmpose.tta.predict_poses`` at scale 1; every predicted
    pose is matched to the ground-truth person with the highest OKS (``grmpose.oks.oks``, area =
    the record's ``areas``: the annotation's ``area``, else its box area); its target is that OKS,
    0 when the image has no ground-truth person. Crowd regions are not ground truth here, so poses
    on crowds get target 0. Unreadable images are skipped with a warning.

    Args:
        forward: ``batch B×3×H×W -> (heatmaps, offsets, tags)``.
        records: training images (``grmpose.data.coco.load_coco_keypoints``).
        input_size: short side of the network input; flip: flip test; decoder: as ``predict_poses``.
        max_images: use only the first ones.

    Returns:
        ``(features M×F float32, targets M float32)`` over all predicted poses of all images.
    """
    from grmpose.tta import predict_poses

    records = list(records)[:max_images] if max_images is not None else list(records)
    iterator = records
    if progress:
        from tqdm import tqdm

        iterator = tqdm(records, desc="rescore data", dynamic_ncols=True, leave=False)
    feats: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    for rec in iterator:
        try:
            image = load_image(rec.path, exif_transpose=False)
        except DataError as err:
            log.warning("skipping unreadable image %s", err)
            continue
        poses, _ = predict_poses(forward, image, spec, input_size, flip=flip, decoder=decoder)
        if len(poses) == 0:
            continue
        if rec.num_people:
            best = oks(poses, rec.keypoints, rec.areas, spec.sigmas).max(1)  # M
        else:
            best = np.zeros(len(poses))
        feats.append(pose_features(poses, spec))
        targets.append(best.astype(np.float32))
    if not feats:
        return np.zeros((0, num_features(spec)), np.float32), np.zeros(0, np.float32)
    return np.concatenate(feats), np.concatenate(targets)


# ----------------------------------------------------------------------------------------------
# Files


def save_rescorer(path: str | Path, net: RescoreNet, spec: KeypointSpec) -> Path:
    """Write the net as safetensors (temp file + rename) with the spec and feature layout."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    meta = {
        "format": FORMAT,
        "spec_name": spec.name,
        "num_keypoints": str(spec.num_keypoints),
        "skeleton": json.dumps([list(p) for p in spec.skeleton]),
        "feature_layout": FEATURE_LAYOUT,
        "num_features": str(net.num_features),
        "hidden": str(net.hidden),
    }
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path


class Rescorer:
    """DEKR's rescoring with a fitted net.

    ``rescorer.predict(poses N×K×3) -> N`` predicted OKS; ``rescorer(poses, scores) -> N`` the new
    person scores: predicted OKS × ``scores`` (NaN predictions count as 0), float64.
    """

    def __init__(self, net: RescoreNet, spec: KeypointSpec) -> None:
        self.net = net.eval()
        self.spec = spec

    def predict(self, poses: np.ndarray) -> np.ndarray:
        poses = np.asarray(poses)
        if len(poses) == 0:
            return np.zeros(0)
        return predict_oks(self.net, pose_features(poses, self.spec))

    def __call__(self, poses: np.ndarray, scores: np.ndarray) -> np.ndarray:
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        predicted = self.predict(poses)
        if predicted.shape != scores.shape:
            raise ValueError(f"{len(predicted)} poses but {len(scores)} scores")
        return np.nan_to_num(predicted, nan=0.0) * scores


def load_rescorer(path: str | Path, spec: KeypointSpec) -> Rescorer:
    """Read a rescoring net written by ``save_rescorer``; it must have been made for ``spec``.

    Raises:
        CheckpointError: naming the file when it is missing, unreadable, not a rescoring net, or
            made for another keypoint spec (name, keypoint count or skeleton differ).
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"rescoring net not found: {path}")
    try:
        state = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a grmpose rescoring net (made by grmpose rescore-fit)")
    made_for = f"{meta.get('spec_name')!r} ({meta.get('num_keypoints')} keypoints)"
    wanted = f"{spec.name!r} ({spec.num_keypoints} keypoints)"
    skeleton = [list(p) for p in spec.skeleton]
    if (
        meta.get("spec_name") != spec.name
        or meta.get("num_keypoints") != str(spec.num_keypoints)
        or json.loads(meta.get("skeleton", "null")) != skeleton
    ):
        raise CheckpointError(f"{path}: rescoring net was made for spec {made_for}, not {wanted}")
    if meta.get("feature_layout") != FEATURE_LAYOUT:
        raise CheckpointError(
            f"{path}: feature layout {meta.get('feature_layout')!r} is not this version's {FEATURE_LAYOUT!r}"
        )
    try:
        net = RescoreNet(int(meta["num_features"]), int(meta["hidden"]))
        if net.num_features != num_features(spec):
            raise ValueError(f"{net.num_features} features, spec needs {num_features(spec)}")
        net.load_state_dict(state)
    except (KeyError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: rescoring net does not fit its metadata ({err})") from err
    return Rescorer(net, spec)


# ----------------------------------------------------------------------------------------------
# Entry points


def rescore_fit_main(
    checkpoint: str | Path,
    data: str | Path,
    out: str | Path,
    split: str = "train",
    max_images: int | None = None,
    flip: bool = True,
    epochs: int = 50,
    lr: float = 1e-3,
    seed: int = 0,
    decoder: str = "regression",
    device: str = "cpu",
    progress: bool = True,
    input_size: int | None = None,
) -> dict:
    """What ``grmpose rescore-fit --checkpoint CKPT --data DATA --out rescore.safetensors`` does.

    Predicts the ``split`` images with the checkpoint, fits the net on (features, OKS) pairs and
    writes it to ``out``. ``input_size``: the test short side of those predictions (default: the
    model's training size); fit at the short side the model will be evaluated at.

    Returns:
        ``{"out", "images", "samples", "epochs", "mse_baseline" (predicting the mean OKS),
        "mse" (the fitted net's, on the same training pairs), "mean_target"}``.
    """
    from grmpose.api import TorchForward
    from grmpose.checkpoint import load_model
    from grmpose.data.coco import load_coco_keypoints, resolve_dataset
    from grmpose.inference import check_short_side

    check_short_side(input_size)
    ann_file, image_dir, data_spec = resolve_dataset(data, split)
    model, config, spec = load_model(checkpoint, spec=data_spec, device=device)
    records = load_coco_keypoints(ann_file, image_dir, spec)
    n_images = len(records) if max_images is None else min(len(records), max_images)
    feats, targets = collect_training_pairs(
        TorchForward(model, device), records, spec, input_size or config.input_size,
        flip=flip, decoder=decoder, max_images=max_images, progress=progress,
    )  # fmt: skip
    if len(targets) == 0:
        raise DataError(f"{data} ({split}): the model predicted no pose on {n_images} image(s)")
    log.info("rescore-fit: %d poses from %d images", len(targets), n_images)
    net = fit_rescorer(feats, targets, epochs=epochs, lr=lr, seed=seed)
    pred = predict_oks(net, feats)
    save_rescorer(out, net, spec)
    return {
        "out": str(out),
        "images": n_images,
        "samples": int(len(targets)),
        "epochs": int(epochs),
        "mean_target": float(targets.mean()),
        "mse_baseline": float(((targets - targets.mean()) ** 2).mean()),
        "mse": float(((pred - targets) ** 2).mean()),
    }
