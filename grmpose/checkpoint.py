"""Checkpoints: safe to load, atomic to write.

Two formats:
* ``*.safetensors`` -- weights for sharing: the tensors plus the resolved model config and keypoint
  spec as JSON in the file's metadata (and nothing executable).
* ``*.pt`` -- training checkpoints (weights, optimiser, AMP scaler, EMA weights, RNG states,
  progress, training time so far). They hold only tensors, numbers, strings, lists and dicts, so
  they load with ``torch.load(weights_only=True)``, which never unpickles arbitrary objects.

Every write goes to a temporary file in the same folder and is renamed into place, so a crash
never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from grmpose.config import ModelConfig
from grmpose.fileio import atomic_path
from grmpose.spec import KeypointSpec


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit."""


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temp file, fsync, then rename over ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    return path


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def save_weights(path: str | Path, model: nn.Module, config: ModelConfig, spec: KeypointSpec) -> Path:
    """Write shareable weights: safetensors with the config and spec in its metadata."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}
    meta = {"format": "grmpose", "config": json.dumps(config.to_dict()), "spec": json.dumps(spec.to_dict())}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path


def save_training_checkpoint(
    path: str | Path, model: nn.Module, config: ModelConfig, spec: KeypointSpec, **state: Any
) -> Path:
    """Write a training checkpoint (weights + whatever resumable state the trainer passes)."""
    payload = {
        "format": "grmpose",
        "model": {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()},
        "config": config.to_dict(),
        "spec": spec.to_dict(),
        **state,
    }
    return atomic_save(payload, path)


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], ModelConfig, KeypointSpec, dict]:
    """Return ``(state_dict, config, spec, extra)`` from a ``.safetensors`` or ``.pt`` file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        try:
            state = load_file(str(path))
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err
        if "config" not in meta or "spec" not in meta:
            raise CheckpointError(f"{path}: safetensors file has no grmpose config/spec metadata")
        raw_config, raw_spec, extra = json.loads(meta["config"]), json.loads(meta["spec"]), {}
    else:
        try:
            payload = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many types for corrupt or unsafe files
            raise CheckpointError(
                f"{path}: cannot load checkpoint safely ({type(err).__name__}: {err})"
            ) from err
        if not isinstance(payload, dict) or "model" not in payload:
            raise CheckpointError(f"{path}: not a grmpose checkpoint (no 'model' entry)")
        state = payload["model"]
        raw_config, raw_spec = payload.get("config"), payload.get("spec")
        if raw_config is None or raw_spec is None:
            raise CheckpointError(f"{path}: checkpoint has no config/spec")
        extra = {k: v for k, v in payload.items() if k not in ("model", "config", "spec")}
    try:
        config = ModelConfig.from_dict(raw_config)
        spec = KeypointSpec.from_dict(raw_spec, source=str(path))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: invalid config or spec ({err})") from err
    return state, config, spec, extra


def load_model(
    path: str | Path, spec: KeypointSpec | None = None, device: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelConfig, KeypointSpec]:
    """Build the network stored in ``path`` and load its weights.

    If ``spec`` is given it must match the checkpoint's number of keypoints.
    """
    from grmpose.model.net import GRMPoseNet

    state, config, ckpt_spec, _ = read_checkpoint(path)
    if spec is not None and spec.num_keypoints != ckpt_spec.num_keypoints:
        raise CheckpointError(
            f"{path}: checkpoint was trained for spec {ckpt_spec.name!r} ({ckpt_spec.num_keypoints} keypoints), "
            f"not {spec.name!r} ({spec.num_keypoints} keypoints)"
        )
    model = GRMPoseNet(config, ckpt_spec.num_keypoints)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(
            f"{path}: weights do not fit the stored config ({str(err).splitlines()[0]})"
        ) from err
    return model.to(device).eval(), config, ckpt_spec
