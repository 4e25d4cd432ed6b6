"""Stick-figure bodies for the synthetic crowd generator: proportions, poses and 3-D kinematics.

A body is a kinematic tree rooted at the mid-hip ("pelvis") in a person-centred 3-D frame, in
units of standing body height: X points to the person's left, Y up, Z forward (the way the
person faces). A global yaw turns the person about Y; the camera looks along -Z from the front,
so orthographic projection maps a point to image ``(x, y) = (X, -Y)`` with depth ``Z`` (larger is
closer). With yaw 0 the person faces the camera and their left side appears on the image's right;
with yaw pi they face away and their left appears on the image's left, as in real photographs.

The figure knows keypoints by *name* (``BODY_POINTS``): the COCO face points (nose, eyes, ears),
CrowdPose's ``head`` (top of the head) and ``neck`` (base of the neck), and the shoulders, elbows,
wrists, hips, knees and ankles shared by both. Any keypoint spec whose names are among these can
be rendered; nothing here depends on a dataset's keypoint count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BODY_POINTS: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "head", "neck",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
"""Keypoint names the synthetic figures provide."""

# Joint ranges in degrees: flexion moves a limb forward (knee/elbow: bend), abduction sideways.
JOINT_RANGES: dict[str, tuple[float, float]] = {
    "lean": (-15.0, 80.0),
    "side_bend": (-15.0, 15.0),
    "head_turn": (-60.0, 60.0),
    "head_nod": (-25.0, 35.0),
    "shoulder_flex": (-50.0, 180.0),
    "shoulder_abd": (0.0, 175.0),
    "elbow": (0.0, 150.0),
    "elbow_plane": (0.0, 90.0),
    "hip_flex": (-30.0, 110.0),
    "hip_abd": (-10.0, 45.0),
    "knee": (0.0, 140.0),
}

POSE_KINDS: tuple[str, ...] = ("stand", "walk", "arms_up", "sit", "bend", "free")
_POSE_PROBS = (0.25, 0.25, 0.15, 0.1, 0.1, 0.15)

# Head-frame positions of face points, in head radii: (X left, Y up, Z forward).
_FACE_POINTS = {
    "nose": (0.0, -0.15, 1.0),
    "left_eye": (0.32, 0.12, 0.82),
    "right_eye": (-0.32, 0.12, 0.82),
    "left_ear": (0.82, 0.0, -0.05),
    "right_ear": (-0.82, 0.0, -0.05),
    "head": (0.0, 0.9, 0.0),
}


@dataclass(frozen=True)
class Body:
    """Segment lengths and thicknesses of one person, as fractions of standing height."""

    torso: float  # mid-hip to neck base
    neck: float  # neck base to head centre
    head_radius: float  # half the head's height
    shoulder_width: float  # between the shoulder joints
    hip_width: float  # between the hip joints
    upper_arm: float
    forearm: float
    hand: float
    thigh: float
    shin: float
    foot: float
    chest_depth: float
    build: float  # multiplier on limb thickness


@dataclass(frozen=True)
class Pose:
    """Joint angles in radians; paired entries are ``(left, right)``."""

    yaw: float  # 0 faces the camera, pi faces away
    lean: float
    side_bend: float
    head_turn: float
    head_nod: float
    shoulder_flex: tuple[float, float]
    shoulder_abd: tuple[float, float]
    elbow: tuple[float, float]
    elbow_plane: tuple[float, float]  # 0: forearm bends forward, pi/2: bends up
    hip_flex: tuple[float, float]
    hip_abd: tuple[float, float]
    knee: tuple[float, float]


def sample_body(rng: np.random.Generator) -> Body:
    """Average adult proportions with per-person variation (left and right kept equal)."""

    def vary(value: float, rel: float) -> float:
        return float(value * np.exp(rng.normal(0.0, rel)))

    return Body(
        torso=vary(0.30, 0.04),
        neck=vary(0.105, 0.06),
        head_radius=vary(0.065, 0.06),
        shoulder_width=vary(0.22, 0.07),
        hip_width=vary(0.17, 0.07),
        upper_arm=vary(0.17, 0.04),
        forearm=vary(0.15, 0.04),
        hand=vary(0.09, 0.05),
        thigh=vary(0.245, 0.04),
        shin=vary(0.245, 0.04),
        foot=vary(0.13, 0.05),
        chest_depth=vary(0.12, 0.1),
        build=float(rng.uniform(0.8, 1.3)),
    )


def _preset_angles(rng: np.random.Generator, kind: str) -> dict[str, list[float]]:
    """Joint angles in degrees for one pose family, before noise and range clipping."""
    u = rng.uniform
    a: dict[str, list[float]] = {
        "lean": [u(-5, 8)],
        "side_bend": [u(-5, 5)],
        "head_turn": [u(-30, 30)],
        "head_nod": [u(-10, 15)],
        "shoulder_flex": [u(-10, 15), u(-10, 15)],
        "shoulder_abd": [u(5, 20), u(5, 20)],
        "elbow": [u(0, 35), u(0, 35)],
        "elbow_plane": [u(0, 30), u(0, 30)],
        "hip_flex": [u(-5, 8), u(-5, 8)],
        "hip_abd": [u(0, 10), u(0, 10)],
        "knee": [u(0, 10), u(0, 10)],
    }
    if kind == "walk":
        s = u(15, 35)
        front = int(rng.integers(2))  # which leg swings forward
        a["hip_flex"] = [s, -0.7 * s] if front == 0 else [-0.7 * s, s]
        a["knee"] = [u(5, 20), u(20, 45)] if front == 0 else [u(20, 45), u(5, 20)]
        a["shoulder_flex"] = [-0.8 * a["hip_flex"][0], -0.8 * a["hip_flex"][1]]
        a["elbow"] = [u(10, 50), u(10, 50)]
    elif kind == "arms_up":
        for side in range(2):
            if rng.random() < 0.75:
                if rng.random() < 0.5:
                    a["shoulder_abd"][side] = u(80, 170)
                    a["shoulder_flex"][side] = u(-10, 30)
                else:
                    a["shoulder_flex"][side] = u(70, 175)
                    a["shoulder_abd"][side] = u(5, 40)
                a["elbow"][side] = u(0, 110)
                a["elbow_plane"][side] = u(20, 90)
    elif kind == "sit":
        a["hip_flex"] = [u(65, 100), u(65, 100)]
        a["knee"] = [u(60, 110), u(60, 110)]
        a["hip_abd"] = [u(0, 20), u(0, 20)]
        a["lean"] = [u(-10, 20)]
        a["shoulder_flex"] = [u(0, 60), u(0, 60)]
        a["elbow"] = [u(20, 100), u(20, 100)]
    elif kind == "bend":
        lean = u(30, 80)
        a["lean"] = [lean]
        a["head_nod"] = [u(-25, 5)]
        a["shoulder_flex"] = [lean + u(-25, 20), lean + u(-25, 20)]
        a["elbow"] = [u(0, 60), u(0, 60)]
        a["knee"] = [u(0, 30), u(0, 30)]
    elif kind == "free":
        for name in ("shoulder_flex", "shoulder_abd", "elbow", "elbow_plane", "hip_abd"):
            lo, hi = JOINT_RANGES[name]
            a[name] = [u(lo, hi), u(lo, hi)]
        a["hip_flex"] = [u(-20, 60), u(-20, 60)]
        a["knee"] = [u(0, 70), u(0, 70)]
    return a


def sample_pose(rng: np.random.Generator, kind: str | None = None) -> Pose:
    """A random plausible pose: a pose family with jitter, clipped to ``JOINT_RANGES``.

    The facing direction favours front views, then back views, then profiles.
    """
    if kind is None:
        kind = POSE_KINDS[int(rng.choice(len(POSE_KINDS), p=_POSE_PROBS))]
    angles = _preset_angles(rng, kind)
    rad: dict[str, list[float]] = {}
    for name, values in angles.items():
        lo, hi = JOINT_RANGES[name]
        noisy = np.array(values) + 4.0 * rng.standard_normal(len(values))
        rad[name] = [math.radians(min(hi, max(lo, float(x)))) for x in noisy]
    view = rng.random()
    if view < 0.45:
        yaw = rng.normal(0.0, 0.35)
    elif view < 0.7:
        yaw = np.pi + rng.normal(0.0, 0.35)
    else:
        yaw = rng.uniform(0.0, 2.0 * np.pi)
    return Pose(
        yaw=float(yaw),
        lean=rad["lean"][0],
        side_bend=rad["side_bend"][0],
        head_turn=rad["head_turn"][0],
        head_nod=rad["head_nod"][0],
        shoulder_flex=(rad["shoulder_flex"][0], rad["shoulder_flex"][1]),
        shoulder_abd=(rad["shoulder_abd"][0], rad["shoulder_abd"][1]),
        elbow=(rad["elbow"][0], rad["elbow"][1]),
        elbow_plane=(rad["elbow_plane"][0], rad["elbow_plane"][1]),
        hip_flex=(rad["hip_flex"][0], rad["hip_flex"][1]),
        hip_abd=(rad["hip_abd"][0], rad["hip_abd"][1]),
        knee=(rad["knee"][0], rad["knee"][1]),
    )


def rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rot_y(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def limb_direction(flex: float, abd: float, side: float) -> np.ndarray:
    """Unit vector of a limb hanging straight down, then abducted sideways and flexed forward.

    ``side`` is +1 for the left limb (abduction towards +X) and -1 for the right one.
    """
    return np.array([side * np.sin(abd), -np.cos(abd) * np.cos(flex), np.cos(abd) * np.sin(flex)])


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def forward_kinematics(body: Body, pose: Pose) -> dict[str, np.ndarray]:
    """3-D positions (camera frame after the global yaw) of the keypoints and drawing helpers.

    Returns every name in ``BODY_POINTS`` plus ``pelvis``, ``head_centre``, ``head_up`` (a point
    one head radius above the centre along the head's axis), ``{left,right}_hand`` (hand tips),
    ``{left,right}_toe``, ``{left,right}_heel`` and torso outline points ``torso_0..7`` and
    ``pelvis_0..7``.
    """
    p: dict[str, np.ndarray] = {"pelvis": np.zeros(3)}
    r_torso = rot_z(pose.side_bend) @ rot_x(pose.lean)
    up_t = r_torso @ np.array([0.0, 1.0, 0.0])
    p["neck"] = r_torso @ np.array([0.0, body.torso, 0.0])
    half_depth = body.chest_depth / 2.0
    for i, (name, side) in enumerate((("left", 1.0), ("right", -1.0))):
        shoulder = r_torso @ np.array([side * body.shoulder_width / 2.0, body.torso - 0.025, 0.0])
        p[f"{name}_shoulder"] = shoulder
        upper = r_torso @ limb_direction(pose.shoulder_flex[i], pose.shoulder_abd[i], side)
        elbow = shoulder + body.upper_arm * upper
        plane = pose.elbow_plane[i]
        bend_towards = r_torso @ np.array([0.0, np.sin(plane), np.cos(plane)])
        normal = bend_towards - np.dot(bend_towards, upper) * upper
        if np.linalg.norm(normal) < 1e-3:
            normal = up_t - np.dot(up_t, upper) * upper
        normal = _unit(normal)
        fore = np.cos(pose.elbow[i]) * upper + np.sin(pose.elbow[i]) * normal
        p[f"{name}_elbow"] = elbow
        p[f"{name}_wrist"] = elbow + body.forearm * fore
        p[f"{name}_hand"] = p[f"{name}_wrist"] + body.hand * fore

        hip = np.array([side * body.hip_width / 2.0, 0.0, 0.0])
        thigh = limb_direction(pose.hip_flex[i], pose.hip_abd[i], side)
        shin = limb_direction(pose.hip_flex[i] - pose.knee[i], pose.hip_abd[i], side)
        p[f"{name}_hip"] = hip
        p[f"{name}_knee"] = hip + body.thigh * thigh
        ankle = p[f"{name}_knee"] + body.shin * shin
        p[f"{name}_ankle"] = ankle
        foot_dir = _unit(np.array([side * 0.1, -0.12, 1.0]))
        p[f"{name}_toe"] = ankle + 0.75 * body.foot * foot_dir
        p[f"{name}_heel"] = ankle - 0.2 * body.foot * foot_dir

        # torso outline: shoulders, waist and hip corners at the front and back of the chest
        for j, depth in enumerate((-half_depth, half_depth)):
            out = side * 0.02
            p[f"torso_{2 * i + j}"] = r_torso @ np.array(
                [side * body.shoulder_width / 2.0 + out, body.torso - 0.01, depth]
            )
            p[f"torso_{4 + 2 * i + j}"] = r_torso @ np.array(
                [side * body.hip_width / 2.0 + 1.5 * out, 0.09, depth * 0.9]
            )
            p[f"pelvis_{2 * i + j}"] = np.array([side * body.hip_width / 2.0 + 1.8 * out, -0.04, depth])
            p[f"pelvis_{4 + 2 * i + j}"] = r_torso @ np.array(
                [side * body.hip_width / 2.0 + 1.5 * out, 0.1, depth * 0.9]
            )

    r_head = r_torso @ rot_y(pose.head_turn) @ rot_x(pose.head_nod)
    centre = p["neck"] + r_torso @ np.array([0.0, body.neck, 0.0])
    p["head_centre"] = centre
    p["head_up"] = centre + r_head @ np.array([0.0, body.head_radius, 0.0])
    for name, offset in _FACE_POINTS.items():
        p[name] = centre + r_head @ (body.head_radius * np.array(offset))

    rotated = np.stack(list(p.values())) @ rot_y(pose.yaw).T
    return dict(zip(p, rotated))


def head_yaw(pose: Pose) -> float:
    """Yaw of the head about the vertical (global yaw plus head turn), for drawing the face."""
    return pose.yaw + pose.head_turn
