"""grmpose: bottom-up multi-person pose estimation with GRM and MFA (Yin & Yin)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from grmpose.config import PRESETS, ModelConfig, get_preset
from grmpose.spec import COCO, CROWDPOSE, KeypointSpec, get_spec

if TYPE_CHECKING:
    from pathlib import Path

    from torch import nn

    from grmpose.pretrained import PretrainedReport

__version__ = "0.1.0"

__all__ = [
    "COCO",
    "CROWDPOSE",
    "PRESETS",
    "KeypointSpec",
    "ModelConfig",
    "build_model",
    "get_preset",
    "get_spec",
    "load_pretrained",
]


def build_model(preset: str | ModelConfig = "grmpose-w32", spec: str | KeypointSpec = "coco"):
    """Return the grmpose network (an ``nn.Module``) for a preset name or config and a keypoint spec."""
    from grmpose.model.net import build_model as _build

    return _build(preset, spec)


def load_pretrained(model: nn.Module, path: str | Path) -> PretrainedReport:
    """Load official ImageNet HRNet weights (``hrnet_w32-36af842e.pth``, ...) into ``model``'s backbone.

    See :func:`grmpose.pretrained.load_pretrained`; returns its ``PretrainedReport``.
    """
    from grmpose.pretrained import load_pretrained as _load

    return _load(model, path)
