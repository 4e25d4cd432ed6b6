"""grmpose: bottom-up multi-person pose estimation with GRM and MFA (Yin & Yin)."""

from grmpose.config import PRESETS, ModelConfig, get_preset
from grmpose.spec import COCO, CROWDPOSE, KeypointSpec, get_spec

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
]


def build_model(preset: str | ModelConfig = "grmpose-w32", spec: str | KeypointSpec = "coco"):
    """Return the grmpose network (an ``nn.Module``) for a preset name or config and a keypoint spec."""
    from grmpose.model.net import build_model as _build

    return _build(preset, spec)
