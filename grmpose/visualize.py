"""Pictures of predictions: skeleton overlays and the network maps behind them.

* ``draw_poses`` draws every person's skeleton on a copy of the image: one colour per limb, from
  hue families by body side (left: blues, right: reds/oranges, middle: greens), joints as dots and
  the person score as text.
* ``render_maps`` shows why a pose came out: the strongest joint heat (max over the K keypoint
  heatmaps), the person-centre heatmap with its peaks, and the offset field, drawn as lines from
  the strongest centres to the joints they regress. All three are warped back onto the image.
* ``save_image`` writes a picture atomically (temporary file + rename).

Images are RGB uint8 arrays H×W×3; coordinates follow ``grmpose.spec`` (x before y, integer
coordinates are pixel centres, map cell u sits on network-input pixel 4u).
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from grmpose.decode import center_nms, map_to_image
from grmpose.fileio import atomic_path
from grmpose.spec import KeypointSpec

if TYPE_CHECKING:
    from grmpose.api import Pose

__all__ = ["draw_poses", "joint_colors", "limb_colors", "render_maps", "save_image", "side_by_side"]

Color = tuple[int, int, int]

# Hue ranges (0..1) of the three body-side families.
_HUE_FAMILIES = {"left": (0.52, 0.72), "right": (0.0, 0.12), "middle": (0.25, 0.40)}


# ------------------------------------------------------------------------------------------ colours
def _joint_sides(spec: KeypointSpec) -> list[str]:
    """``left``/``right``/``middle`` per keypoint: from the names, else from the flip pairs' order."""
    names = [n.lower() for n in spec.keypoints]
    if any("left" in n or "right" in n for n in names):
        return ["left" if "left" in n else "right" if "right" in n else "middle" for n in names]
    sides = ["middle"] * spec.num_keypoints
    for a, b in spec.flip_pairs:
        sides[a], sides[b] = "left", "right"
    return sides


def _family_colors(sides: Sequence[str]) -> list[Color]:
    """Distinct colours: members of a family spread evenly over its hue range."""
    out: list[Color] = []
    counts = {side: sides.count(side) for side in _HUE_FAMILIES}
    seen = dict.fromkeys(_HUE_FAMILIES, 0)
    for side in sides:
        lo, hi = _HUE_FAMILIES[side]
        n = counts[side]
        hue = lo + (hi - lo) * (seen[side] / (n - 1) if n > 1 else 0.5)
        seen[side] += 1
        r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
        out.append((round(255 * r), round(255 * g), round(255 * b)))
    return out


def limb_colors(spec: KeypointSpec) -> list[Color]:
    """One RGB colour per skeleton limb (``spec.limb_colors`` when the spec gives them).

    A limb belongs to the left/right family when both its joints are on that side, else to the
    middle family.
    """
    if spec.limb_colors and len(spec.limb_colors) == len(spec.skeleton):
        return [tuple(int(c) for c in col) for col in spec.limb_colors]  # type: ignore[misc]
    sides = _joint_sides(spec)
    limb_sides = [sides[a] if sides[a] == sides[b] else "middle" for a, b in spec.skeleton]
    return _family_colors(limb_sides)


def joint_colors(spec: KeypointSpec) -> list[Color]:
    """One RGB colour per keypoint, in its side's hue family."""
    return _family_colors(_joint_sides(spec))


# ------------------------------------------------------------------------------------------ helpers
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _label(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, size: int) -> None:
    """Text on a dark box, so it reads on any background."""
    font = _font(size)
    x0, y0, x1, y1 = draw.textbbox(xy, text, font=font)
    pad = max(1, size // 6)
    draw.rectangle((x0 - pad, y0 - pad, x1 + pad, y1 + pad), fill=(0, 0, 0))
    draw.text(xy, text, fill=(255, 255, 255), font=font)


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 image H×W×3, got {image.dtype} {image.shape}")
    return image


def _pose_arrays(poses: Sequence[Pose] | np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(N×K×3 keypoints, N person scores)`` from ``Pose`` objects or an N×K×3 array."""
    if isinstance(poses, np.ndarray):
        kps = poses.reshape(-1, k, 3).astype(np.float64)
        return kps, kps[..., 2].mean(1) if len(kps) else np.zeros(0)
    if len(poses) == 0:
        return np.zeros((0, k, 3)), np.zeros(0)
    return np.stack([np.asarray(p.keypoints, np.float64) for p in poses]), np.array([p.score for p in poses])


# ------------------------------------------------------------------------------------------ overlay
def draw_poses(
    image: np.ndarray,
    poses: Sequence[Pose] | np.ndarray,
    spec: KeypointSpec,
    score_threshold: float = 0.1,
    line_width: int | None = None,
    radius: int | None = None,
    show_scores: bool = True,
) -> np.ndarray:
    """Draw skeletons on a copy of ``image``.

    Args:
        image: RGB uint8 H×W×3 (not modified).
        poses: ``Pose`` objects or an N×K×3 array (x, y, score) in image pixels.
        spec: keypoint spec (skeleton and joint sides for colours).
        score_threshold: people whose score is below it are skipped; joints below it are not
            drawn, nor limbs touching them.
        line_width, radius: limb width and joint radius in pixels; default scales with the image.
        show_scores: write each person's score next to its box.

    Returns:
        RGB uint8 H×W×3.
    """
    image = _check_image(image)
    kps, scores = _pose_arrays(poses, spec.num_keypoints)
    h, w = image.shape[:2]
    size = min(h, w)
    line_width = line_width or max(1, round(size / 160))
    radius = radius or max(2, round(size / 130))
    canvas = Image.fromarray(image.copy())
    draw = ImageDraw.Draw(canvas)
    limb_cols, joint_cols = limb_colors(spec), joint_colors(spec)
    order = np.argsort(scores, kind="stable")  # best drawn last, on top
    for n in order:
        if scores[n] < score_threshold:
            continue
        pts, ok = kps[n, :, :2], kps[n, :, 2] >= score_threshold
        ok &= np.isfinite(pts).all(1)
        for (a, b), col in zip(spec.skeleton, limb_cols):
            if ok[a] and ok[b]:
                draw.line([tuple(pts[a]), tuple(pts[b])], fill=col, width=line_width)
        for j in np.flatnonzero(ok):
            x, y = pts[j]
            draw.ellipse(
                (x - radius, y - radius, x + radius, y + radius), fill=joint_cols[j], outline=(0, 0, 0)
            )
        if show_scores and ok.any():
            x0, y0 = pts[ok, 0].min(), pts[ok, 1].min()
            font_size = max(10, round(size / 40))
            tx = float(np.clip(x0, 0, max(0, w - 4 * font_size)))
            ty = float(np.clip(y0 - font_size - 4, 0, max(0, h - font_size)))
            _label(draw, (tx, ty), f"{scores[n]:.2f}", font_size)
    return np.asarray(canvas)


# ------------------------------------------------------------------------------------------ maps
def _colormap(v: np.ndarray) -> np.ndarray:
    """A perceptually ordered black-purple-orange-yellow map of values in [0, 1] -> float RGB."""
    anchors = np.array(
        [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64
    )
    pos = np.clip(v, 0.0, 1.0) * (len(anchors) - 1)
    i = np.minimum(pos.astype(np.int64), len(anchors) - 2)
    f = (pos - i)[..., None]
    return anchors[i] * (1 - f) + anchors[i + 1] * f


def _image_to_map_grid(
    shape: tuple[int, int], map_shape: tuple[int, int], image_to_input: np.ndarray, stride: int
) -> torch.Tensor:
    """``grid_sample`` grid (1×H×W×2) holding, for each image pixel, its map coordinate."""
    h, w = shape
    mh, mw = map_shape
    a = np.asarray(image_to_input, dtype=np.float64)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    u = (a[0, 0] * xs + a[0, 1] * ys + a[0, 2]) / stride
    v = (a[1, 0] * xs + a[1, 1] * ys + a[1, 2]) / stride
    # align_corners=True: -1 and 1 are the centres of the first and last cells
    gx = u / max(mw - 1, 1) * 2 - 1
    gy = v / max(mh - 1, 1) * 2 - 1
    return torch.from_numpy(np.stack([gx, gy], -1)[None]).float()


def _heat_panel(image: np.ndarray, heat: np.ndarray, title: str, size: int) -> tuple[Image.Image, float]:
    """Image dimmed to grey with ``heat`` (H×W, image-aligned) as a colour overlay."""
    vmax = max(1.0, float(heat.max())) if heat.size else 1.0
    v = np.clip(heat / vmax, 0.0, 1.0)
    grey = image.astype(np.float64).mean(2, keepdims=True) * 0.45
    alpha = np.sqrt(v)[..., None] * 0.9
    out = grey * (1 - alpha) + _colormap(v) * alpha
    panel = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
    _label(ImageDraw.Draw(panel), (4, 4), f"{title} (0..{vmax:.2f})", size)
    return panel, vmax


def render_maps(
    image: np.ndarray,
    heatmaps: torch.Tensor | np.ndarray,
    offsets: torch.Tensor | np.ndarray,
    spec: KeypointSpec,
    image_to_input: np.ndarray | None = None,
    stride: int = 4,
    max_centres: int = 5,
    centre_threshold: float = 0.01,
) -> np.ndarray:
    """Three panels side by side, each the size of ``image`` (so the result is H × 3W × 3):

    1. joint heat: the maximum over the K keypoint heatmaps, as a colour overlay;
    2. centre heat: heatmap channel K, with its strongest peaks circled and their values;
    3. offsets: from each of the ``max_centres`` strongest centres, lines to the joints it
       regresses (``centre - offset``), coloured by joint side.

    Heat values are raw network outputs (targets peak at 1); each panel's colour scale runs from 0
    to max(1, the map's maximum), written in its title, so weak maps look weak.

    Args:
        image: RGB uint8 H×W×3, the image the network saw (before resizing).
        heatmaps: (K+1)×h×w (a leading batch dim of 1 is accepted).
        offsets: 2K×h×w, channel 2k = x, 2k+1 = y of ``cell - keypoint`` in map units.
        spec: keypoint spec.
        image_to_input: 2×3 affine from image pixels to network-input pixels (as returned by
            ``grmpose.inference.prepare_image``); ``None`` = the image was the network input.
        stride: output stride.
        max_centres, centre_threshold: which centres get their offsets drawn.

    Returns:
        RGB uint8 H × 3W × 3.
    """
    image = _check_image(image)
    heat = torch.as_tensor(np.asarray(heatmaps) if not torch.is_tensor(heatmaps) else heatmaps)
    off = torch.as_tensor(np.asarray(offsets) if not torch.is_tensor(offsets) else offsets)
    heat, off = heat.detach().float().cpu(), off.detach().float().cpu()
    if heat.dim() == 4:
        heat, off = heat[0], off[0]
    k = spec.num_keypoints
    if heat.shape[0] != k + 1 or off.shape[0] != 2 * k or heat.shape[1:] != off.shape[1:]:
        raise ValueError(
            f"expected heatmaps {k + 1}×h×w and offsets {2 * k}×h×w, got {tuple(heat.shape)} and {tuple(off.shape)}"
        )
    affine = np.array([[1.0, 0, 0], [0, 1.0, 0]]) if image_to_input is None else np.asarray(image_to_input)
    h, w = image.shape[:2]
    mh, mw = heat.shape[1:]
    size = max(10, round(min(h, w) / 28))

    # Two image-aligned channels: joint max and centre.
    two = torch.stack([heat[:k].amax(0), heat[k]])[None]
    grid = _image_to_map_grid((h, w), (mh, mw), affine, stride)
    aligned = F.grid_sample(two, grid, mode="bilinear", padding_mode="border", align_corners=True)[0].numpy()

    joints_panel, _ = _heat_panel(image, aligned[0], "joint heat, max over keypoints", size)
    centre_panel, _ = _heat_panel(image, aligned[1], "centre heat", size)

    scores, loc = center_nms(heat[k], max_centres, centre_threshold)
    centres_img = map_to_image(loc.double(), stride, affine).numpy()  # N×2
    draw = ImageDraw.Draw(centre_panel)
    r = max(3, size // 2)
    small = _font(max(9, size * 3 // 4))
    for (x, y), s in zip(centres_img, scores.tolist()):
        draw.ellipse((x - r, y - r, x + r, y + r), outline=(255, 255, 255), width=max(1, r // 3))
        text = f"{s:.2f}"
        tw = draw.textlength(text, font=small)
        tx = x + r + 2 if x + r + 2 + tw <= w else x - r - 2 - tw  # keep the value inside the panel
        draw.text((tx, y - r), text, fill=(255, 255, 255), font=small)

    grey = (image.astype(np.float64).mean(2, keepdims=True) * 0.45).repeat(3, 2).astype(np.uint8)
    offset_panel = Image.fromarray(grey)
    draw = ImageDraw.Draw(offset_panel)
    cols = joint_colors(spec)
    width = max(1, round(min(h, w) / 250))
    if len(loc):
        o = off.reshape(k, 2, mh * mw)[:, :, loc[:, 1] * mw + loc[:, 0]]  # K×2×N
        joints_map = loc[:, None, :].double() - o.permute(2, 0, 1).double()  # N×K×2
        joints_img = map_to_image(joints_map, stride, affine).numpy()
        for c, pts in zip(centres_img, joints_img):
            for j, (x, y) in enumerate(pts):
                draw.line([tuple(c), (x, y)], fill=cols[j], width=width)
                draw.ellipse((x - 2 * width, y - 2 * width, x + 2 * width, y + 2 * width), fill=cols[j])
            draw.ellipse((c[0] - r, c[1] - r, c[0] + r, c[1] + r), fill=(255, 255, 255))
    _label(draw, (4, 4), f"offsets: {len(loc)} strongest centres -> joints", size)

    return np.concatenate([np.asarray(joints_panel), np.asarray(centre_panel), np.asarray(offset_panel)], 1)


def side_by_side(*images: np.ndarray, height: int | None = None) -> np.ndarray:
    """Concatenate RGB images horizontally, resizing each to ``height`` (default: the first's)."""
    height = height or images[0].shape[0]
    parts = []
    for im in images:
        if im.shape[0] != height:
            w = max(1, round(im.shape[1] * height / im.shape[0]))
            im = np.asarray(Image.fromarray(im).resize((w, height), Image.BILINEAR))
        parts.append(im)
    return np.concatenate(parts, 1)


# ------------------------------------------------------------------------------------------ files
def save_image(path: str | Path, rgb: np.ndarray, quality: int = 90) -> Path:
    """Write an RGB uint8 image (format from the suffix) via a temporary file and a rename.

    Raises:
        ValueError: unknown file suffix or not an RGB uint8 image.
    """
    path = Path(path)
    rgb = _check_image(rgb)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown image file suffix {path.suffix!r}")
    kwargs = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format=fmt, **kwargs)
    return path
