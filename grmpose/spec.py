"""Keypoint specifications: every dataset fact the rest of grmpose needs.

A `KeypointSpec` is the single place where the number of keypoints, their names, left/right
flip pairs, the skeleton used for drawing and the OKS sigmas live. Nothing else in the package
hard-codes a keypoint count or a dataset name.

Coordinate convention used across grmpose (stated once, here):
    * points are ``(x, y)`` -- x before y -- in pixels of the image they refer to;
    * pixel ``i`` has its centre at coordinate ``i`` (integer coordinates are pixel centres);
    * network maps have output stride 4: map cell ``j`` is centred on input pixel ``4 * j``,
      so an input coordinate ``x`` is ``x / 4`` in map units.
    * keypoint arrays are ``N x K x 3`` (x, y, v) with COCO visibility flags
      v = 0 (not labelled), 1 (labelled, occluded), 2 (labelled, visible).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml


@dataclass(frozen=True)
class KeypointSpec:
    """Dataset facts about one keypoint layout.

    Attributes:
        name: short identifier (``"coco"``, ``"crowdpose"`` or a user's name).
        keypoints: the K keypoint names, in annotation order.
        flip_pairs: pairs ``(i, j)`` of indices swapped by a horizontal flip.
        skeleton: limbs as 0-based index pairs, for drawing and rescoring features.
        sigmas: the K per-keypoint OKS constants ``k_i`` (eq. 11 of the paper).
        crowd_eval: evaluate the CrowdPose way (``keypoints_crowd``: OKS scale from the box,
            easy/medium/hard from the image ``crowdIndex``) instead of the COCO way.
        nms_joints: two poses are duplicates when more than this many joints coincide.
        multiscale_factor: score factor for candidates from test scales other than 1.
        min_person_area: training rule: a person whose annotated ``area`` (image pixels²) is
            below this gets no centre and no offsets (its joints keep their heatmaps). COCO:
            32² (DEKR's ``COCOKeypoints.py``); 0 = off (CrowdPose, DEKR's ``CrowdPoseKeypoints.py``).
        center_sigma: training default of the person-centre Gaussian σ (map pixels): COCO 4,
            CrowdPose 2 (what DEKR's code trains with: its ``idx < 17`` test gives a 14-joint
            spec's centre the joint σ); ``TrainConfig.center_sigma`` overrides it.
    """

    name: str
    keypoints: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    skeleton: tuple[tuple[int, int], ...]
    sigmas: tuple[float, ...]
    crowd_eval: bool = False
    nms_joints: int | None = None
    multiscale_factor: float = 0.9
    min_person_area: float = 0.0
    center_sigma: float = 4.0
    limb_colors: tuple[tuple[int, int, int], ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        k = len(self.keypoints)
        if k == 0:
            raise ValueError(f"keypoint spec {self.name!r}: no keypoints")
        if len(self.sigmas) != k:
            raise ValueError(f"keypoint spec {self.name!r}: {len(self.sigmas)} sigmas for {k} keypoints")
        for pair_list, what in ((self.flip_pairs, "flip_pairs"), (self.skeleton, "skeleton")):
            for a, b in pair_list:
                if not (0 <= a < k and 0 <= b < k):
                    raise ValueError(
                        f"keypoint spec {self.name!r}: {what} entry ({a}, {b}) out of range 0..{k - 1}"
                    )
        flat = [i for pair in self.flip_pairs for i in pair]
        if len(flat) != len(set(flat)):
            raise ValueError(f"keypoint spec {self.name!r}: an index appears in two flip pairs")
        if not self.min_person_area >= 0:
            raise ValueError(f"keypoint spec {self.name!r}: min_person_area must be >= 0")
        if not self.center_sigma > 0:
            raise ValueError(f"keypoint spec {self.name!r}: center_sigma must be > 0")

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoints)

    @property
    def flip_index(self) -> np.ndarray:
        """Permutation ``perm`` such that ``flipped[..., i, :] = original[..., perm[i], :]``."""
        perm = np.arange(self.num_keypoints)
        for a, b in self.flip_pairs:
            perm[a], perm[b] = b, a
        return perm

    @property
    def nms_threshold_joints(self) -> int:
        """Joint count for pose NMS; by default about half of the keypoints (8 of 17, 7 of 14)."""
        return self.nms_joints if self.nms_joints is not None else self.num_keypoints // 2

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "keypoints": list(self.keypoints),
            "flip_pairs": [list(p) for p in self.flip_pairs],
            "skeleton": [list(p) for p in self.skeleton],
            "sigmas": list(self.sigmas),
            "crowd_eval": self.crowd_eval,
            "nms_joints": self.nms_joints,
            "multiscale_factor": self.multiscale_factor,
            "min_person_area": self.min_person_area,
            "center_sigma": self.center_sigma,
        }

    @classmethod
    def from_dict(cls, d: dict, source: str = "<dict>") -> KeypointSpec:
        required = ("keypoints", "sigmas")
        missing = [key for key in required if key not in d]
        if missing:
            raise ValueError(f"{source}: keypoint spec misses {', '.join(missing)}")
        names = {n: i for i, n in enumerate(d["keypoints"])}

        def index(v: int | str) -> int:
            if isinstance(v, str):
                if v not in names:
                    raise ValueError(f"{source}: unknown keypoint name {v!r}")
                return names[v]
            return int(v)

        try:
            return cls(
                name=str(d.get("name", Path(source).stem)),
                keypoints=tuple(str(n) for n in d["keypoints"]),
                flip_pairs=tuple((index(a), index(b)) for a, b in d.get("flip_pairs", [])),
                skeleton=tuple((index(a), index(b)) for a, b in d.get("skeleton", [])),
                sigmas=tuple(float(s) for s in d["sigmas"]),
                crowd_eval=bool(d.get("crowd_eval", False)),
                nms_joints=d.get("nms_joints"),
                multiscale_factor=float(d.get("multiscale_factor", 0.9)),
                min_person_area=float(d.get("min_person_area", 0.0)),
                center_sigma=float(d.get("center_sigma", 4.0)),
            )
        except (TypeError, ValueError) as err:
            if isinstance(err, ValueError) and source in str(err):
                raise
            raise ValueError(f"{source}: invalid keypoint spec: {err}") from err

    @classmethod
    def from_yaml(cls, path: str | Path) -> KeypointSpec:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"keypoint spec file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML: {err}") from err
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping with keypoints, sigmas, flip_pairs, skeleton")
        return cls.from_dict(data, source=str(path))


_COCO_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip

COCO = KeypointSpec(
    name="coco",
    keypoints=_COCO_NAMES,
    flip_pairs=((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)),
    skeleton=(
        (15, 13),
        (13, 11),
        (16, 14),
        (14, 12),
        (11, 12),
        (5, 11),
        (6, 12),
        (5, 6),
        (5, 7),
        (6, 8),
        (7, 9),
        (8, 10),
        (1, 2),
        (0, 1),
        (0, 2),
        (1, 3),
        (2, 4),
        (3, 5),
        (4, 6),
    ),  # fmt: skip
    sigmas=(
        0.026,
        0.025,
        0.025,
        0.035,
        0.035,
        0.079,
        0.079,
        0.072,
        0.072,
        0.062,
        0.062,
        0.107,
        0.107,
        0.087,
        0.087,
        0.089,
        0.089,
    ),  # fmt: skip
    crowd_eval=False,
    nms_joints=8,
    multiscale_factor=0.9,
    min_person_area=32.0**2,
    center_sigma=4.0,
)

_CROWDPOSE_NAMES = (
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "head", "neck",
)  # fmt: skip

CROWDPOSE = KeypointSpec(
    name="crowdpose",
    keypoints=_CROWDPOSE_NAMES,
    flip_pairs=((0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11)),
    skeleton=(
        (12, 13),
        (13, 0),
        (13, 1),
        (0, 2),
        (2, 4),
        (1, 3),
        (3, 5),
        (0, 6),
        (1, 7),
        (6, 7),
        (6, 8),
        (8, 10),
        (7, 9),
        (9, 11),
    ),  # fmt: skip
    sigmas=(0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089, 0.079, 0.079),
    crowd_eval=True,
    nms_joints=7,
    multiscale_factor=0.8,
    min_person_area=0.0,
    center_sigma=2.0,
)

SPECS: dict[str, KeypointSpec] = {"coco": COCO, "crowdpose": CROWDPOSE}


def get_spec(spec: str | KeypointSpec | Path) -> KeypointSpec:
    """Return a spec by name (``coco``, ``crowdpose``), from a YAML file path, or as given."""
    if isinstance(spec, KeypointSpec):
        return spec
    key = str(spec)
    if key in SPECS:
        return SPECS[key]
    if key.endswith((".yaml", ".yml")) or Path(key).is_file():
        return KeypointSpec.from_yaml(key)
    raise ValueError(f"unknown keypoint spec {key!r}: choose one of {', '.join(SPECS)} or give a YAML file")
