"""Test-time augmentation: flip test and multi-scale testing (paper §IV-A-4, DESIGN.md §3).

For every test scale s the image's short side goes to ``round(input_size · s)`` (aspect kept,
padded to /32, ``grmpose.inference.prepare_image``), with its own image -> input affine.

* Flip test: the mirrored input (``flip_input``: exact alignment of the mirrored map grid) is run
  too; its outputs are mirrored back with left/right channels swapped and x offsets negated
  (``flip_outputs``) and averaged with the plain outputs -- heatmaps (centre included), offsets and
  tags.
* Multi-scale: heatmaps and tags of every scale are resampled onto one common grid -- the map grid
  of the reference scale (1, or the scale closest to 1) -- through the exact affine between the two
  map grids (bilinear, zero outside), and averaged. Regressed candidates are collected from every
  scale on that scale's own maps, moved to the common grid, and their keypoint scores re-read from
  the averaged heatmap (centre score × heat); then one pose NMS (``grmpose.decode.pose_nms``) over
  the union keeps at most ``max_people``. Centre scores of every other scale are first normalised
  as DEKR does (``lib/core/nms.py``, ``pose_nms``): divided by that scale's highest centre score,
  times the reference scale's highest (1 when the reference found no centre), times
  ``spec.multiscale_factor`` (0.9 COCO, 0.8 CrowdPose). So the best candidate of a scale ≠ 1
  starts at ``factor ×`` the best of scale 1, whatever the scale's own heatmap level.
* Decoders: ``regression`` as above; ``hybrid`` takes the candidates that survive pose NMS, snaps
  them to tag-consistent peaks of the averaged maps and re-scores them; ``ae`` groups the averaged
  heatmaps and tags. Pose NMS is applied (again) for every decoder.

``forward(batch B×3×H×W float tensor) -> (heatmaps B×(K+1)×h×w, offsets B×2K×h×w, tags B×K×h×w)``
may be a PyTorch model or a wrapped ONNX Runtime session (numpy outputs are accepted).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from grmpose.decode import map_to_image, pose_nms
from grmpose.grouping import check_decoder, decode_ae, regression_candidates, score_joints, snap_joints
from grmpose.inference import flip_input, flip_outputs, prepare_image
from grmpose.spec import KeypointSpec

__all__ = ["ScaleMaps", "fuse_scales", "predict_batch", "predict_poses", "resample_maps", "run_forward"]

Forward = Callable[[torch.Tensor], Sequence]


@dataclass(frozen=True)
class ScaleMaps:
    """One image's network outputs at one test scale (flip-averaged if flip test is on).

    Attributes:
        heatmaps: (K+1)×h×w; offsets: 2K×h×w; tags: K×h×w.
        image_to_map: 2×3 affine, image pixels -> map units of this scale.
        image_to_input: 2×3 affine, image pixels -> network-input pixels.
        scale: the test scale.
    """

    heatmaps: torch.Tensor
    offsets: torch.Tensor
    tags: torch.Tensor
    image_to_map: np.ndarray
    image_to_input: np.ndarray
    scale: float


def _as_tensor(x) -> torch.Tensor:
    return x.float() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x, dtype=np.float32))


@torch.no_grad()
def run_forward(
    forward: Forward, batch: torch.Tensor, flip_index: np.ndarray | None = None, stride: int = 4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Outputs of ``forward`` for a B×3×H×W batch; with ``flip_index`` the mirrored batch runs in the
    same call (batch 2B) and its mirrored-back outputs are averaged in.

    Returns:
        ``(heatmaps B×(K+1)×h×w, offsets B×2K×h×w, tags B×K×h×w)`` float32.
    """
    b = batch.shape[0]
    inputs = batch if flip_index is None else torch.cat([batch, flip_input(batch, stride)])
    outputs = tuple(_as_tensor(o) for o in forward(inputs))
    if len(outputs) != 3:
        raise ValueError(f"forward must return (heatmaps, offsets, tags), got {len(outputs)} outputs")
    if flip_index is None:
        return outputs
    mirrored = flip_outputs(tuple(o[b:] for o in outputs), flip_index)
    return tuple((o[:b] + m) / 2 for o, m in zip(outputs, mirrored))


def _affine_3x3(a: np.ndarray) -> np.ndarray:
    return np.vstack([np.asarray(a, dtype=np.float64), [0.0, 0.0, 1.0]])


def _map_to_map(src_image_to_map: np.ndarray, dst_image_to_map: np.ndarray) -> np.ndarray:
    """2×3 affine taking ``dst`` map coordinates to ``src`` map coordinates (through the image)."""
    return (_affine_3x3(src_image_to_map) @ np.linalg.inv(_affine_3x3(dst_image_to_map)))[:2]


def _apply_affine(points: torch.Tensor, a: np.ndarray) -> torch.Tensor:
    """…×2 points through a 2×3 affine (computed in float64, returned in the points' dtype)."""
    m = torch.as_tensor(a, dtype=torch.float64, device=points.device)
    return (points.double() @ m[:, :2].T + m[:, 2]).to(points.dtype)


def resample_maps(
    maps: torch.Tensor, src_image_to_map: np.ndarray, dst_image_to_map: np.ndarray, size: tuple[int, int]
) -> torch.Tensor:
    """Resample C×h×w maps onto another map grid of the same image (bilinear, zeros outside).

    Args:
        maps: C×h×w on the grid given by ``src_image_to_map`` (image pixels -> map units).
        dst_image_to_map: the target grid's affine.
        size: target ``(H, W)``.

    Returns:
        C×H×W; cell (u, v) holds the source value at the same image point.
    """
    c, h, w = maps.shape
    hh, ww = size
    a = torch.as_tensor(_map_to_map(src_image_to_map, dst_image_to_map), dtype=torch.float64)
    v, u = torch.meshgrid(
        torch.arange(hh, dtype=torch.float64), torch.arange(ww, dtype=torch.float64), indexing="ij"
    )
    sx = a[0, 0] * u + a[0, 1] * v + a[0, 2]
    sy = a[1, 0] * u + a[1, 1] * v + a[1, 2]
    # align_corners=True: normalised −1 / +1 are the centres of the first / last cells
    gx = 2.0 * sx / max(w - 1, 1) - 1.0
    gy = 2.0 * sy / max(h - 1, 1) - 1.0
    grid = torch.stack([gx, gy], -1)[None].to(maps.dtype).to(maps.device)
    return F.grid_sample(maps[None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]


def _reference_index(scales: Sequence[float]) -> int:
    """Index of the scale whose map grid is the common grid: 1, or the one closest to 1."""
    return int(np.argmin([abs(np.log(s)) for s in scales]))


@torch.no_grad()
def fuse_scales(per_scale: Sequence[ScaleMaps]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Average heatmaps and tags of all scales on the reference scale's grid.

    Returns:
        ``(heatmaps (K+1)×H×W, tags K×H×W, reference index)``. With one scale the maps are
        returned unchanged.
    """
    ref = _reference_index([s.scale for s in per_scale])
    base = per_scale[ref]
    if len(per_scale) == 1:
        return base.heatmaps, base.tags, ref
    size = tuple(base.heatmaps.shape[1:])
    heat = torch.zeros_like(base.heatmaps)
    tags = torch.zeros_like(base.tags)
    for i, s in enumerate(per_scale):  # a handful of scales
        if i == ref:
            heat += s.heatmaps
            tags += s.tags
        else:
            both = resample_maps(torch.cat([s.heatmaps, s.tags]), s.image_to_map, base.image_to_map, size)
            heat += both[: s.heatmaps.shape[0]]
            tags += both[s.heatmaps.shape[0] :]
    return heat / len(per_scale), tags / len(per_scale), ref


_SNAP_OPTIONS = ("detection_threshold", "tag_threshold", "radius_scale", "min_radius", "keep_within")
_OPTIONS: dict[str, set[str]] = {
    "regression": {"center_threshold", "kernel"},
    "hybrid": {"center_threshold", "kernel", "peak_kernel", *_SNAP_OPTIONS},
    "ae": {"detection_threshold", "tag_threshold", "refine", "kernel"},
}


@torch.no_grad()
def decode_scales(
    per_scale: Sequence[ScaleMaps],
    spec: KeypointSpec,
    decoder: str = "regression",
    max_people: int = 30,
    stride: int = 4,
    **kw,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode one image from its per-scale maps (see the module docstring).

    Args:
        per_scale: the image's ``ScaleMaps``, one per test scale.
        kw: decoder options (``center_threshold`` for regression/hybrid candidates; AE and snapping
            options for ``ae`` / ``hybrid``).

    Returns:
        ``(poses N×K×3 float64 (x, y, score) image pixels, scores N)``, best first.
    """
    check_decoder(decoder)
    unknown = set(kw) - _OPTIONS[decoder]
    if unknown:
        raise TypeError(
            f"decoder {decoder!r} takes options {', '.join(sorted(_OPTIONS[decoder]))}; got {', '.join(sorted(unknown))}"
        )
    k = spec.num_keypoints
    heat, tags, ref = fuse_scales(per_scale)
    base = per_scale[ref]
    if decoder == "ae":
        poses, scores = decode_ae(heat, tags, spec, max_people=max_people, **kw)
    else:
        center_kw = {key: kw[key] for key in ("center_threshold", "kernel") if key in kw}
        snap_kw = {key: kw[key] for key in _SNAP_OPTIONS if key in kw}
        if "peak_kernel" in kw:
            snap_kw["kernel"] = kw["peak_kernel"]
        found = [
            regression_candidates(s.heatmaps, s.offsets, spec, max_people, **center_kw) for s in per_scale
        ]
        ref_max = found[ref][1].max() if len(found[ref][1]) else 1.0
        joints, centres = [], []
        for i, (s, (j, c)) in enumerate(zip(per_scale, found)):  # a handful of scales
            if i != ref:
                j = _apply_affine(j, _map_to_map(base.image_to_map, s.image_to_map))
                if len(c):  # DEKR: to the reference scale's maximum, then the factor
                    c = c / c.max() * ref_max * spec.multiscale_factor
            joints.append(j)
            centres.append(c)
        joints, centres = torch.cat(joints), torch.cat(centres)
        poses, scores = score_joints(joints, centres, heat[:k])
        if decoder == "hybrid":  # NMS first, so that duplicates do not compete for the same peaks
            keep = pose_nms(poses, scores, spec)[: int(max_people)]
            joints = snap_joints(poses[keep, :, :2], heat[:k], tags, spec.sigmas, max_people, **snap_kw)
            poses, scores = score_joints(joints, centres[keep], heat[:k])
    keep = pose_nms(poses, scores, spec)[: int(max_people)]
    poses, scores = poses[keep], scores[keep]
    xy = map_to_image(poses[..., :2], stride, base.image_to_input)
    out = torch.cat([xy, poses[..., 2:].double()], 2)
    return out.cpu().numpy(), scores.double().cpu().numpy()


@torch.no_grad()
def predict_batch(
    forward: Forward,
    images: Sequence[np.ndarray],
    spec: KeypointSpec,
    input_size: int,
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
    decoder: str = "regression",
    max_people: int = 30,
    stride: int = 4,
    device: torch.device | str | None = None,
    **kw,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Poses of several RGB uint8 images; images whose prepared inputs have the same size share one
    forward call per scale (with the flip test the mirrored copies join the same call).

    Args:
        forward: ``batch B×3×H×W -> (heatmaps, offsets, tags)``.
        images: H×W×3 uint8 RGB arrays.
        input_size: short side at scale 1 (512 / 640).
        flip: flip test; scales: test scales (paper: 0.5, 1, 2).
        decoder: a key of ``grmpose.grouping.DECODERS``.
        device: where the batch goes before ``forward`` (``None``: CPU tensors).
        kw: decoder options, see ``decode_scales``.

    Returns:
        one ``(poses N×K×3 float64 (x, y, score) in image pixels, scores N)`` per image.
    """
    check_decoder(decoder)
    if not scales:
        raise ValueError("scales must not be empty")
    flip_index = spec.flip_index if flip else None
    per_image: list[list[ScaleMaps]] = [[] for _ in images]
    for scale in scales:  # a handful of scales
        prepared = [prepare_image(img, max(1, round(input_size * scale))) for img in images]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (tensor, _) in enumerate(prepared):
            groups.setdefault(tuple(tensor.shape), []).append(i)
        for members in groups.values():
            batch = torch.stack([prepared[i][0] for i in members])
            if device is not None:
                batch = batch.to(device)
            heat, off, tags = run_forward(forward, batch, flip_index, stride)
            for row, i in enumerate(members):
                m = prepared[i][1]
                per_image[i].append(
                    ScaleMaps(heat[row], off[row], tags[row], np.asarray(m) / float(stride), m, float(scale))
                )
    return [decode_scales(maps, spec, decoder, max_people, stride, **kw) for maps in per_image]


def predict_poses(
    forward: Forward,
    image: np.ndarray,
    spec: KeypointSpec,
    input_size: int,
    flip: bool = False,
    scales: Sequence[float] = (1.0,),
    decoder: str = "regression",
    max_people: int = 30,
    stride: int = 4,
    device: torch.device | str | None = None,
    **kw,
) -> tuple[np.ndarray, np.ndarray]:
    """Poses of one RGB uint8 H×W×3 image with optional flip and multi-scale testing.

    With ``flip=False, scales=(1.0,)`` and the regression decoder this equals
    ``grmpose.inference.predict_image``.

    Returns:
        ``(poses N×K×3 float64 (x, y, score) in image pixels, scores N)``, best first.
    """
    return predict_batch(
        forward, [image], spec, input_size, flip, scales, decoder, max_people, stride, device, **kw
    )[0]
