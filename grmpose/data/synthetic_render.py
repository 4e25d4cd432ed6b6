"""Rendering synthetic crowd scenes with PIL: backgrounds, clothed stick figures, occlusion flags.

:func:`render_scene` draws 1..``max_people`` figures (``grmpose.data.synthetic_body``) over a
cluttered background, back to front, and returns the image with each person's keypoints and
silhouette. Visibility follows the COCO flags: a keypoint outside the image is ``v = 0`` with
coordinates 0; a keypoint inside the silhouette of a person drawn later (in front) is ``v = 1``;
any other is ``v = 2``. Keypoints lie on the drawn body (limb ends, head, face dots).

The scenes are *mirror-symmetric*: a horizontally mirrored scene is as likely as the original with
its left and right labels swapped, as with photographs. Both sides of a person are drawn alike
(a watch, when there is one, is on either wrist), so left and right are told apart only by the way
the person faces: the face or the back of the head, the near ear and the near limbs drawn over the
body, the toes. That is what makes DEKR's flip augmentation and flip test valid on these images
(until 2026-12-06 the left limbs were drawn lighter, a cue a mirror moves to the wrong side).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from grmpose.data.synthetic_body import (
    BODY_POINTS,
    Body,
    Pose,
    forward_kinematics,
    head_yaw,
    sample_body,
    sample_pose,
)
from grmpose.spec import KeypointSpec

Color = tuple[int, int, int]

_SKIN_TONES = np.array(
    [[255, 224, 196], [241, 194, 150], [224, 172, 105], [198, 134, 66], [141, 85, 36], [92, 51, 23]], float
)
_HAIR_COLORS = np.array([[20, 15, 10], [60, 40, 25], [110, 75, 40], [200, 170, 100], [150, 150, 150]], float)
_TROUSER_COLORS = np.array([[35, 50, 90], [30, 30, 35], [150, 130, 95], [90, 90, 95], [60, 80, 60]], float)


@dataclass(frozen=True)
class Appearance:
    """Colours and clothing of one person."""

    skin: Color
    hair: Color
    shirt: Color
    trousers: Color
    shoes: Color
    watch: Color
    long_sleeves: bool
    long_trousers: bool
    has_watch: bool
    watch_side: str  # "left" or "right"


@dataclass
class Figure:
    """One posed, placed person: 2-D points in image pixels and camera depths (body units)."""

    body: Body
    pose: Pose
    look: Appearance
    height_px: float
    points: dict[str, np.ndarray]  # name -> (x, y) in image pixels
    depth: dict[str, float]  # name -> Z (larger is closer to the camera)


@dataclass
class RenderedPerson:
    """A drawn person: ``keypoints`` (K x 3, x y v) and the full silhouette ``mask`` (H x W bool)."""

    keypoints: np.ndarray
    mask: np.ndarray


def spec_body_points(spec: KeypointSpec) -> list[str]:
    """Check that every keypoint of ``spec`` is a body point the figures provide; return the names."""
    unknown = [name for name in spec.keypoints if name not in BODY_POINTS]
    if unknown:
        raise ValueError(
            f"keypoint spec {spec.name!r}: the synthetic figures have no keypoint named "
            f"{', '.join(map(repr, unknown))}; known names: {', '.join(BODY_POINTS)}"
        )
    return list(spec.keypoints)


def _clip_color(c: np.ndarray) -> Color:
    c = np.clip(np.rint(c), 0, 255).astype(int)
    return (int(c[0]), int(c[1]), int(c[2]))


def _random_color(rng: np.random.Generator, sat: tuple[float, float], val: tuple[float, float]) -> Color:
    """A colour from hue, saturation and value ranges (HSV -> RGB)."""
    h, s, v = rng.uniform(0.0, 6.0), rng.uniform(*sat), rng.uniform(*val)
    i, f = int(h) % 6, h - int(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return _clip_color(np.array(rgb) * 255.0)


def _pick(rng: np.random.Generator, palette: np.ndarray, jitter: float) -> Color:
    return _clip_color(palette[int(rng.integers(len(palette)))] + rng.normal(0.0, jitter, 3))


def sample_appearance(rng: np.random.Generator) -> Appearance:
    """Random skin tone, hair and clothing colours."""
    shirt = _random_color(rng, (0.2, 0.9), (0.25, 0.95))
    trousers = (
        _pick(rng, _TROUSER_COLORS, 12.0)
        if rng.random() < 0.6
        else _random_color(rng, (0.1, 0.7), (0.2, 0.8))
    )
    shoes = _random_color(rng, (0.0, 0.4), (0.05, 0.9))
    return Appearance(
        skin=_pick(rng, _SKIN_TONES, 8.0),
        hair=_pick(rng, _HAIR_COLORS, 10.0),
        shirt=shirt,
        trousers=trousers,
        shoes=shoes,
        watch=_random_color(rng, (0.0, 0.3), (0.0, 0.3)),
        long_sleeves=bool(rng.random() < 0.6),
        long_trousers=bool(rng.random() < 0.75),
        has_watch=bool(rng.random() < 0.5),
        watch_side="left" if rng.random() < 0.5 else "right",
    )


# ---------------------------------------------------------------------------------------- figures


def pose_figure(
    body: Body, pose: Pose, look: Appearance, height_px: float, tilt: float, offset: np.ndarray
) -> Figure:
    """Project the 3-D body to the image: orthographic, in-plane ``tilt`` (radians), scale, shift."""
    pts3 = forward_kinematics(body, pose)
    c, s = np.cos(tilt), np.sin(tilt)
    rot = np.array([[c, -s], [s, c]])
    xyz = np.stack(list(pts3.values()))
    xy = (xyz[:, :2] * np.array([1.0, -1.0])) @ rot.T * height_px + offset
    points = dict(zip(pts3, xy))
    depth = dict(zip(pts3, xyz[:, 2].tolist()))
    return Figure(body, pose, look, height_px, points, depth)


def figure_extent(fig: Figure) -> tuple[float, float, float, float]:
    """Box ``(x0, y0, x1, y1)`` around all the figure's points, padded by the head radius."""
    xy = np.array(list(fig.points.values()))
    pad = fig.body.head_radius * fig.height_px
    return (xy[:, 0].min() - pad, xy[:, 1].min() - pad, xy[:, 0].max() + pad, xy[:, 1].max() + pad)


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Convex hull (monotone chain) of P x 2 points, counter-clockwise."""
    pts = sorted({(float(x), float(y)) for x, y in points})
    if len(pts) <= 2:
        return np.array(pts)

    def cross(o: tuple, a: tuple, b: tuple) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[tuple] = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list[tuple] = []
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.array(lower[:-1] + upper[:-1])


# A shape: ("capsule", (p0, p1, width)), ("polygon", points) or ("circle", (centre, radius)).
Shape = tuple[str, tuple, Color]


def _capsule(fig: Figure, a: str, b: str, width: float, color: Color) -> Shape:
    return ("capsule", (fig.points[a], fig.points[b], width * fig.body.build * fig.height_px), color)


def _head_shapes(fig: Figure) -> tuple[list[Shape], list[Shape]]:
    """Shapes drawn behind the head (far ears) and the head itself (skin, hair, face, near ears)."""
    look, px = fig.look, fig.height_px
    r = fig.body.head_radius * px
    centre = fig.points["head_centre"]
    up = fig.points["head_up"] - centre
    norm = np.linalg.norm(up)
    up = up / norm if norm > 1e-3 * px else np.array([0.0, -1.0])
    right = np.array([-up[1], up[0]])
    yaw = head_yaw(fig.pose)
    facing, side = np.cos(yaw), np.sin(yaw)
    a = r * (0.8 * abs(facing) + 0.9 * abs(side))
    t = np.linspace(0.0, 2.0 * np.pi, 32, endpoint=False)
    unit = np.stack([np.cos(t), np.sin(t)], 1)
    outline = centre + a * unit[:, :1] * right + r * unit[:, 1:] * up
    # hair covers the part of the head away from the face: a cap seen from the front, the back
    # half from the side and everything from behind
    hair_dir = np.array([-0.9 * side, 1.0])
    hair_dir /= np.linalg.norm(hair_dir)
    threshold = -0.4 + 0.7 * facing
    covered = unit @ hair_dir >= threshold
    head: list[Shape] = [("polygon", outline, look.skin)]
    if covered.all():
        head.append(("polygon", outline, look.hair))
    elif covered.any():
        start = int(np.flatnonzero(covered & ~np.roll(covered, 1))[0])
        arc = np.roll(outline, -start, axis=0)[: int(covered.sum())]
        if len(arc) >= 3:
            head.append(("polygon", arc, look.hair))
    behind: list[Shape] = []
    centre_z = fig.depth["head_centre"]
    rz = fig.body.head_radius
    for name in ("left_ear", "right_ear"):
        ear = ("circle", (fig.points[name], 0.25 * r), look.skin)
        (head if fig.depth[name] > centre_z + 0.2 * rz else behind).append(ear)

    def on_face(name: str) -> bool:
        q = fig.points[name] - centre
        local = np.array([q @ right / max(a, 1e-6), q @ up / r])
        return fig.depth[name] > centre_z + 0.3 * rz and local @ hair_dir < threshold

    dark = (30, 25, 25)
    for name in ("left_eye", "right_eye"):
        if on_face(name):
            head.append(("circle", (fig.points[name], max(0.7, 0.12 * r)), dark))
    if on_face("nose"):
        nose = _clip_color(np.array(look.skin, float) * 0.8)
        head.append(("circle", (fig.points["nose"], max(0.7, 0.12 * r)), nose))
    return behind, head


def figure_parts(fig: Figure) -> list[tuple[float, list[Shape]]]:
    """The figure's drawable parts as ``(depth, shapes)``; draw in increasing depth."""
    look, d = fig.look, fig.depth
    parts: list[tuple[float, list[Shape]]] = []
    torso_names = [f"torso_{i}" for i in range(8)]
    pelvis_names = [f"pelvis_{i}" for i in range(8)]
    torso_z = float(np.mean([d[n] for n in torso_names])) - 0.07
    parts.append(
        (torso_z, [("polygon", _convex_hull(np.array([fig.points[n] for n in torso_names])), look.shirt)])
    )
    pelvis = _convex_hull(np.array([fig.points[n] for n in pelvis_names]))
    parts.append((torso_z + 0.001, [("polygon", pelvis, look.trousers)]))
    parts.append(
        ((d["neck"] + d["head_centre"]) / 2 - 0.02, [_capsule(fig, "neck", "head_centre", 0.045, look.skin)])
    )
    shirt, skin, trousers = look.shirt, look.skin, look.trousers
    for side in ("left", "right"):
        sh, el, wr, hand = (f"{side}_{j}" for j in ("shoulder", "elbow", "wrist", "hand"))
        parts.append(((d[sh] + d[el]) / 2, [_capsule(fig, sh, el, 0.05, shirt)]))
        forearm = [
            _capsule(fig, el, wr, 0.042, shirt if look.long_sleeves else skin),
            (
                "circle",
                ((fig.points[wr] + fig.points[hand]) / 2, 0.026 * fig.body.build * fig.height_px),
                skin,
            ),
        ]
        if look.has_watch and side == look.watch_side:
            wrist, elbow = fig.points[wr], fig.points[el]
            band = (wrist + 0.12 * (elbow - wrist), wrist + 0.22 * (elbow - wrist))
            forearm.append(("capsule", (band[0], band[1], 0.05 * fig.body.build * fig.height_px), look.watch))
        parts.append(((d[el] + d[wr]) / 2 + 0.001, forearm))
        hip, knee, ankle = (f"{side}_{j}" for j in ("hip", "knee", "ankle"))
        parts.append(((d[hip] + d[knee]) / 2 - 0.02, [_capsule(fig, hip, knee, 0.075, trousers)]))
        shin = _capsule(fig, knee, ankle, 0.058, trousers if look.long_trousers else skin)
        shoe = _capsule(fig, f"{side}_heel", f"{side}_toe", 0.038, look.shoes)
        parts.append(((d[knee] + d[ankle]) / 2 - 0.019, [shin, shoe]))
    behind, head = _head_shapes(fig)
    head_z = d["head_centre"] + 0.01
    if behind:
        parts.append((head_z - 0.002, behind))
    parts.append((head_z, head))
    return parts


def _draw_shape(draw: ImageDraw.ImageDraw, shape: Shape, origin: np.ndarray) -> None:
    kind, geom, color = shape
    fill = (*color, 255)
    if kind == "capsule":
        p0, p1, width = geom
        a, b = p0 - origin, p1 - origin
        w = max(1.0, width)
        draw.line([(a[0], a[1]), (b[0], b[1])], fill=fill, width=max(1, int(round(w))))
        r = w / 2.0
        for c in (a, b):
            draw.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=fill)
    elif kind == "circle":
        c, r = geom[0] - origin, max(0.5, geom[1])
        draw.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=fill)
    else:
        pts = geom - origin
        if len(pts) >= 3:
            draw.polygon([(float(x), float(y)) for x, y in pts], fill=fill)


def _smooth_noise(rng: np.random.Generator, width: int, height: int, cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a small random grid, bilinearly upsampled."""
    grid = rng.uniform(-1.0, 1.0, (cells, cells)).astype(np.float32)
    img = Image.fromarray(grid, mode="F").resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float32)


def draw_figure(rng: np.random.Generator, canvas: np.ndarray, fig: Figure) -> np.ndarray:
    """Draw ``fig`` into ``canvas`` (H x W x 3 float32, in place); return its silhouette (H x W bool)."""
    height, width = canvas.shape[:2]
    x0, y0, x1, y1 = figure_extent(fig)
    pad = 0.1 * fig.height_px + 2
    cx0, cy0 = max(0, int(np.floor(x0 - pad))), max(0, int(np.floor(y0 - pad)))
    cx1, cy1 = min(width, int(np.ceil(x1 + pad))), min(height, int(np.ceil(y1 + pad)))
    mask = np.zeros((height, width), bool)
    if cx1 <= cx0 or cy1 <= cy0:
        return mask
    layer = Image.new("RGBA", (cx1 - cx0, cy1 - cy0), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    origin = np.array([cx0, cy0], float)
    for _, shapes in sorted(figure_parts(fig), key=lambda part: part[0]):
        for shape in shapes:
            _draw_shape(draw, shape, origin)
    arr = np.asarray(layer)
    alpha = arr[..., 3] > 0
    h, w = alpha.shape
    # texture: a soft light ramp across the person, cloth-like blotches and fine grain
    angle = rng.uniform(0.0, 2.0 * np.pi)
    cols, rows = np.arange(w, dtype=np.float32)[None, :], np.arange(h, dtype=np.float32)[:, None]
    ramp = (np.float32(np.cos(angle)) * cols + np.float32(np.sin(angle)) * rows) / max(h, w)
    gain = 1.0 + 0.12 * (ramp - ramp.mean()) + 0.05 * _smooth_noise(rng, w, h, 5)
    grain = 4.0 * rng.standard_normal((h, w, 1), dtype=np.float32)
    rgb = arr[..., :3].astype(np.float32) * gain[..., None].astype(np.float32) + grain
    region = canvas[cy0:cy1, cx0:cx1]
    region[alpha] = rgb[alpha]
    mask[cy0:cy1, cx0:cx1] = alpha
    return mask


# ------------------------------------------------------------------------------------- background


def _smooth_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Gradient, optional floor, stripes or blobs (H x W x 3 float32, unclipped)."""
    yy = np.arange(height, dtype=np.float32)[:, None]
    xx = np.arange(width, dtype=np.float32)[None, :]
    c0 = np.array(_random_color(rng, (0.0, 0.6), (0.2, 1.0)), np.float32)
    c1 = np.array(_random_color(rng, (0.0, 0.6), (0.2, 1.0)), np.float32)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    t = np.cos(angle) * xx / width + np.sin(angle) * yy / height
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c0 + (c1 - c0) * t[..., None]
    if rng.random() < 0.5:  # a floor below a horizon line
        horizon = rng.uniform(0.2, 0.7) * height
        floor = np.array(_random_color(rng, (0.0, 0.5), (0.15, 0.8)), np.float32)
        shade = 0.8 + 0.4 * (yy - horizon) / height
        below = (yy > horizon)[..., None]
        img = np.where(below, floor * shade[..., None], img)
    kind = rng.integers(3)
    if kind == 0:  # stripes
        f = rng.uniform(2.0, 20.0) / max(width, height)
        phi = rng.uniform(0.0, np.pi)
        wave = np.sin(2 * np.pi * f * (np.cos(phi) * xx + np.sin(phi) * yy) + rng.uniform(0, 6.3))
        img *= (1.0 + rng.uniform(0.05, 0.25) * wave)[..., None]
    elif kind == 1:  # coloured blobs
        cells = int(rng.integers(3, 10))
        blobs = np.stack([_smooth_noise(rng, width, height, cells) for _ in range(3)], -1)
        img += rng.uniform(20.0, 70.0) * blobs
    return img


def make_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A cluttered background (H x W x 3 float32): gradient, texture, floor and random shapes.

    The smooth layers are computed at half resolution and upsampled (for speed); the shapes are
    drawn at full resolution.
    """
    smooth = _smooth_background(rng, max(1, (width + 1) // 2), max(1, (height + 1) // 2))
    pil = Image.fromarray(np.clip(smooth, 0, 255).astype(np.uint8))
    pil = pil.resize((width, height), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(pil)
    size = max(width, height)
    for _ in range(int(rng.integers(0, 13))):
        color = _random_color(rng, (0.0, 0.9), (0.1, 1.0))
        x, y = rng.uniform(-0.1, 1.1) * width, rng.uniform(-0.1, 1.1) * height
        sx, sy = rng.uniform(0.02, 0.3, 2) * size
        shape = rng.integers(4)
        if shape == 0:
            draw.rectangle([x, y, x + sx, y + sy], fill=color)
        elif shape == 1:
            draw.ellipse([x, y, x + sx, y + sy], fill=color)
        elif shape == 2:
            pts = [
                (x + rng.uniform(-1, 1) * sx, y + rng.uniform(-1, 1) * sy)
                for _ in range(int(rng.integers(3, 7)))
            ]
            draw.polygon(pts, fill=color)
        else:  # limb-like bars: clutter a detector must learn to ignore
            a = rng.uniform(0.0, np.pi)
            length = rng.uniform(0.05, 0.4) * size
            draw.line(
                [x, y, x + length * np.cos(a), y + length * np.sin(a)],
                fill=color,
                width=int(rng.integers(2, 12)),
            )
    return np.asarray(pil, dtype=np.float32).copy()


# ------------------------------------------------------------------------------------------ scene


def check_height_range(height_range: tuple[float, float] | None) -> None:
    """Refuse a ``height_range`` that is not ``0 < lo <= hi`` (ValueError naming it); None passes."""
    if height_range is not None and not (len(height_range) == 2 and 0.0 < height_range[0] <= height_range[1]):
        raise ValueError(f"height_range must be 0 < lo <= hi (fractions of the image height), got {height_range}")


def sample_figures(
    rng: np.random.Generator,
    width: int,
    height: int,
    count: int,
    min_visible: int,
    height_range: tuple[float, float] | None = None,
) -> list[Figure]:
    """Pose, size and place ``count`` people; each keeps ``min_visible`` keypoints in the image.

    Standing heights are log-uniform. With ``height_range = (lo, hi)`` they lie in
    ``[lo, hi] x image height`` whatever the count; without it (the crowd level) in
    ``[min(40 px, H/2), 0.9 H x min(1, 2.5 / sqrt(count))]``, so that crowded images hold smaller people.
    """
    if height_range is None:
        min_h = min(40.0, 0.5 * height)
        max_h = 0.9 * height
        hi = max(min_h, max_h * min(1.0, 2.5 / np.sqrt(count)))
    else:
        check_height_range(height_range)
        lo_frac, hi_frac = height_range
        min_h, max_h = lo_frac * height, hi_frac * height
        hi = max_h
    crowd = count >= 3 and rng.random() < 0.6
    base = float(np.exp(rng.uniform(np.log(min_h), np.log(hi))))
    cluster = np.array([rng.uniform(0.2, 0.8) * width, rng.uniform(0.35, 0.65) * height])
    spread = rng.uniform(0.15, 0.4) * width
    figures = []
    for _ in range(count):
        body, pose, look = sample_body(rng), sample_pose(rng), sample_appearance(rng)
        if crowd:
            h = float(np.clip(base * np.exp(rng.normal(0.0, 0.18)), min_h, max_h))
        else:
            h = float(np.exp(rng.uniform(np.log(min_h), np.log(hi))))
        tilt = float(np.deg2rad(np.clip(rng.normal(0.0, 5.0), -15.0, 15.0)))
        fig = pose_figure(body, pose, look, h, tilt, np.zeros(2))
        x0, y0, x1, y1 = figure_extent(fig)
        size = np.array([x1 - x0, y1 - y0])
        centre0 = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
        for attempt in range(10):
            if attempt == 9:
                target = np.array([width / 2, height / 2])
            elif crowd:
                target = cluster + rng.normal(0.0, 1.0, 2) * np.array([spread, 0.12 * height])
            elif rng.random() < 0.75 and size[0] < width and size[1] < height:
                target = np.array(
                    [
                        rng.uniform(size[0] / 2, width - size[0] / 2),
                        rng.uniform(size[1] / 2, height - size[1] / 2),
                    ]
                )
            else:
                target = np.array([rng.uniform(-0.1, 1.1) * width, rng.uniform(0.0, 1.0) * height])
            shift = target - centre0
            pts = np.array([fig.points[n] for n in BODY_POINTS]) + shift
            inside = (
                (pts[:, 0] >= 0) & (pts[:, 0] <= width - 1) & (pts[:, 1] >= 0) & (pts[:, 1] <= height - 1)
            )
            if inside.sum() >= min_visible:
                break
        fig.points = {name: p + shift for name, p in fig.points.items()}
        figures.append(fig)
    return figures


def visibility_flags(keypoints: np.ndarray, masks: list[np.ndarray], width: int, height: int) -> np.ndarray:
    """COCO flags for people drawn in list order (N x K x 2 coordinates -> N x K x 3).

    ``v = 0`` (and coordinates 0) outside the image, ``v = 1`` where a later person's silhouette
    covers the keypoint's pixel, ``v = 2`` otherwise.
    """
    n, k = keypoints.shape[:2]
    out = np.zeros((n, k, 3), np.float64)
    front = np.zeros((height, width), bool)
    for i in range(n - 1, -1, -1):
        xy = keypoints[i, :, :2]
        inside = (xy[:, 0] >= 0) & (xy[:, 0] <= width - 1) & (xy[:, 1] >= 0) & (xy[:, 1] <= height - 1)
        for j in np.flatnonzero(inside):
            col, row = int(round(xy[j, 0])), int(round(xy[j, 1]))
            out[i, j] = (xy[j, 0], xy[j, 1], 1.0 if front[row, col] else 2.0)
        front |= masks[i]
    return out


def render_scene(
    rng: np.random.Generator,
    spec: KeypointSpec,
    width: int,
    height: int,
    max_people: int,
    height_range: tuple[float, float] | None = None,
) -> tuple[Image.Image, list[RenderedPerson]]:
    """Render one image with 1..``max_people`` people; people are returned in drawing order.

    ``height_range``: people's standing heights as fractions of the image height (see
    :func:`sample_figures`; ``None`` is the crowd level).
    """
    names = spec_body_points(spec)
    canvas = make_background(rng, width, height)
    count = int(rng.integers(1, max_people + 1))
    min_visible = max(1, len(names) // 3)
    figures = sample_figures(rng, width, height, count, min_visible, height_range)
    # farther people (feet higher in the image) are drawn first
    bottoms = [figure_extent(f)[3] + rng.normal(0.0, 0.03 * height) for f in figures]
    figures = [figures[i] for i in np.argsort(bottoms, kind="stable")]
    masks = [draw_figure(rng, canvas, fig) for fig in figures]
    coords = np.array([[fig.points[n] for n in names] for fig in figures], np.float64)
    keypoints = visibility_flags(coords, masks, width, height)
    canvas += np.float32(rng.uniform(1.0, 6.0)) * rng.standard_normal(canvas.shape, dtype=np.float32)
    canvas *= rng.uniform(0.85, 1.15)
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 0.9))))
    people = [RenderedPerson(keypoints=kp, mask=m) for kp, m in zip(keypoints, masks)]
    return image, people
