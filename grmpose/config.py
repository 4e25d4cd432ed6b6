"""Model configurations and the named presets.

Configs are frozen dataclasses read at the edges (CLI, builders). The only string-to-object
lookup in grmpose is the explicit ``PRESETS`` dict below.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# Block tables of eq. (1): blocks per branch for stages 1..4.
LIGHT_BLOCKS: tuple[tuple[int, ...], ...] = ((4,), (0, 4), (0, 0, 4), (0, 0, 0, 4))
FULL_BLOCKS: tuple[tuple[int, ...], ...] = ((4,), (4, 4), (4, 4, 4), (4, 4, 4, 4))
# Heatmap head outputs: raw (DEKR, trained with the MSE) or through a sigmoid (the focal loss).
HEATMAP_ACTIVATIONS = ("none", "sigmoid")


@dataclass(frozen=True)
class ModelConfig:
    """Everything that shapes the network (the keypoint count comes from the spec).

    Attributes:
        width: C, channels of the highest-resolution branch (branches have C, 2C, 4C, 8C).
        input_size: square training crop and the short side at test time.
        blocks: eq. (1) block table, one tuple per stage (stage 1 = bottleneck stem stage).
        modules: number of HRNet modules in stages 1..4.
        stem_channels: channels of the two stride-2 stem convolutions.
        use_grm: Global Relation Modeling on (p1, p2, p3) before the heads (paper §III-B).
        use_mfa: the 4th block of the newest stage-4 branch is an MFA block (paper §III-C).
        head_channels: heatmap branch width (DEKR: C).
        offset_channels_per_kpt: channels of each keypoint's offset sub-branch (DEKR: 15).
        offset_blocks: adaptive-conv blocks per keypoint (DEKR: 2).
        offset_unit: the offset head's last conv predicts offsets in units of this many map pixels
            (DEKR: 1); a larger unit is a larger step for that layer (``grmpose.model.heads``).
        heatmap_activation: ``"none"`` (DEKR: raw maps, trained with the MSE) or ``"sigmoid"`` (maps in
            (0, 1), trained with the focal loss: ``grmpose train --heatmap-loss focal``).
    """

    width: int = 32
    input_size: int = 512
    blocks: tuple[tuple[int, ...], ...] = LIGHT_BLOCKS
    modules: tuple[int, int, int, int] = (1, 1, 4, 3)
    stem_channels: int = 64
    use_grm: bool = True
    use_mfa: bool = True
    head_channels: int = 32
    offset_channels_per_kpt: int = 15
    offset_blocks: int = 2
    offset_unit: float = 1.0
    heatmap_activation: str = "none"

    def __post_init__(self) -> None:
        if self.heatmap_activation not in HEATMAP_ACTIVATIONS:
            raise ValueError(
                f"heatmap_activation must be one of {', '.join(HEATMAP_ACTIVATIONS)}, got {self.heatmap_activation!r}"
            )
        if len(self.blocks) != 4 or any(len(b) != i + 1 for i, b in enumerate(self.blocks)):
            raise ValueError(f"blocks must list 1, 2, 3, 4 branch counts for stages 1-4, got {self.blocks}")
        if len(self.modules) != 4 or any(m < 1 for m in self.modules):
            raise ValueError(f"modules must be four positive counts, got {self.modules}")
        if self.use_mfa and self.blocks[3][3] < 4:
            raise ValueError("MFA replaces the 4th block of the newest stage-4 branch: it needs >= 4 blocks")
        if self.input_size % 32:
            raise ValueError(f"input_size must be a multiple of 32, got {self.input_size}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(unknown)}")
        d = dict(d)
        if "blocks" in d:
            d["blocks"] = tuple(tuple(int(x) for x in b) for b in d["blocks"])
        if "modules" in d:
            d["modules"] = tuple(int(x) for x in d["modules"])
        return cls(**d)


PRESETS: dict[str, ModelConfig] = {
    "grmpose-w32": ModelConfig(width=32, input_size=512, head_channels=32),
    "grmpose-w48": ModelConfig(width=48, input_size=640, head_channels=48),
    # The four rows of the paper's Table I (W32, light backbone): baseline, +GRM, +MFA, both (= grmpose-w32).
    "grmpose-w32-base": ModelConfig(width=32, input_size=512, use_grm=False, use_mfa=False),
    "grmpose-w32-nomfa": ModelConfig(width=32, input_size=512, use_grm=True, use_mfa=False),
    "grmpose-w32-nogrm": ModelConfig(width=32, input_size=512, use_grm=False, use_mfa=True),
    # DEKR: full HRNet (A_ori), DEKR heads, no GRM/MFA -- the predecessor and our speed reference.
    "dekr-w32": ModelConfig(width=32, input_size=512, blocks=FULL_BLOCKS, use_grm=False, use_mfa=False),
    "dekr-w48": ModelConfig(
        width=48, input_size=640, blocks=FULL_BLOCKS, use_grm=False, use_mfa=False, head_channels=48
    ),
    # Small enough to train on a 2-core CPU in minutes.
    "tiny": ModelConfig(
        width=16,
        input_size=256,
        modules=(1, 1, 1, 1),
        stem_channels=32,
        head_channels=16,
        offset_channels_per_kpt=8,
        offset_blocks=1,
        blocks=((2,), (0, 2), (0, 0, 2), (0, 0, 0, 4)),
    ),
}


def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
