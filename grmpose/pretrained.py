"""Load the official ImageNet-pretrained HRNet weights into the backbone (DEKR's starting point).

DEKR starts from the HRNet ImageNet checkpoints (``hrnet_w32-36af842e.pth``,
``hrnetv2_w48_imagenet_pretrained.pth``), whose tensor names are those of
HRNet-Image-Classification's ``lib/models/cls_hrnet.py`` (DEKR's own backbone uses the same names):

    conv1, bn1, conv2, bn2                     the two stride-2 stem convs
    layer1.{i}.conv{1,2,3} / bn{1,2,3} / downsample.{0,1}      stage 1 (Bottlenecks)
    transition1.{0,1}, transition2.2, transition3.3             convs into stages 2-4
    stage{n}.{m}.branches.{b}.{k}.conv{1,2} / bn{1,2}          BasicBlocks
    stage{n}.{m}.fuse_layers.{i}.{j}...                         the exchange units
    incre_modules, downsamp_modules, final_layer, classifier   ImageNet head (no counterpart here)

``official_module_names`` maps each official conv/BN module to ours (``grmpose.model.backbone``)
by walking our backbone, so a module that the light block table or MFA removes simply has no
entry: its tensors are skipped, and our modules that the checkpoint does not provide (MFA blocks)
keep their initialisation. ``load_pretrained`` never unpickles code: ``.pth``/``.pt`` files are read
with ``torch.load(weights_only=True)``, ``.safetensors`` files with safetensors.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from grmpose.checkpoint import CheckpointError, unwrap
from grmpose.model.backbone import HRBackbone
from grmpose.model.blocks import BasicBlock

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainedReport:
    """What ``load_pretrained`` did.

    Attributes:
        loaded: checkpoint keys copied into the model (official names, "module." stripped).
        skipped: checkpoint keys with no counterpart in the model (ImageNet head, blocks that the
            light table removes).
        kept: the model's backbone tensors that the checkpoint did not provide; they keep their
            initialisation (MFA blocks; BN ``num_batches_tracked`` counters are not listed).
    """

    loaded: tuple[str, ...]
    skipped: tuple[str, ...]
    kept: tuple[str, ...]


def _add_conv_bn(pairs: dict[str, str], conv: str, bn: str, ours: str) -> None:
    """A ``conv_bn`` Sequential ``ours``: its conv is index 0, its BN index 1."""
    pairs[conv] = f"{ours}.0"
    pairs[bn] = f"{ours}.1"


def official_module_names(backbone: HRBackbone) -> dict[str, str]:
    """Official HRNet module name -> our module name (relative to the backbone), every conv and BN.

    Only modules that exist in ``backbone`` are listed.
    """
    pairs: dict[str, str] = {}
    _add_conv_bn(pairs, "conv1", "bn1", "stem.0")
    _add_conv_bn(pairs, "conv2", "bn2", "stem.1")
    for i, block in enumerate(backbone.layer1):
        for k in (1, 2, 3):
            _add_conv_bn(pairs, f"layer1.{i}.conv{k}", f"layer1.{i}.bn{k}", f"layer1.{i}.conv{k}")
        if not isinstance(block.downsample, nn.Identity):
            _add_conv_bn(
                pairs, f"layer1.{i}.downsample.0", f"layer1.{i}.downsample.1", f"layer1.{i}.downsample"
            )
    # transition1 makes both stage-2 branches from layer1's output: branch 0 is a plain
    # conv-BN-ReLU Sequential, the new branch 1 a Sequential of one. transition2/3 only make the
    # new branch (index 2 / 3) from the previous newest one.
    pairs.update({"transition1.0.0": "transitions.0.0.0", "transition1.0.1": "transitions.0.0.1"})
    _add_conv_bn(pairs, "transition1.1.0.0", "transition1.1.0.1", "transitions.0.1")
    for t in (2, 3):  # transition t makes branch t
        _add_conv_bn(pairs, f"transition{t}.{t}.0.0", f"transition{t}.{t}.0.1", f"transitions.{t - 1}.0")
    for s, stage in enumerate(backbone.stages):
        for m, module in enumerate(stage):
            official, ours = f"stage{s + 2}.{m}", f"stages.{s}.{m}"
            for b, branch in enumerate(module.branches):
                for k, block in enumerate(branch):
                    if not isinstance(block, BasicBlock):  # an MFA block: no ImageNet counterpart
                        continue
                    for c in (1, 2):
                        _add_conv_bn(
                            pairs,
                            f"{official}.branches.{b}.{k}.conv{c}",
                            f"{official}.branches.{b}.{k}.bn{c}",
                            f"{ours}.branches.{b}.{k}.conv{c}",
                        )
            for i, row in enumerate(module.fuse.paths):
                for j, path in enumerate(row):
                    fuse, mine = f"{official}.fuse_layers.{i}.{j}", f"{ours}.fuse.paths.{i}.{j}"
                    if j > i:  # official: Sequential(conv1x1, BN, Upsample); ours: (conv_bn,)
                        _add_conv_bn(pairs, f"{fuse}.0", f"{fuse}.1", f"{mine}.0")
                    elif j < i:  # i - j stride-2 conv-BN(-ReLU) steps, indexed alike
                        for step in range(len(path)):
                            _add_conv_bn(pairs, f"{fuse}.{step}.0", f"{fuse}.{step}.1", f"{mine}.{step}")
    return pairs


def official_tensor_names(model: nn.Module) -> dict[str, str]:
    """Official HRNet tensor name -> the model's state-dict key, for every backbone tensor it maps."""
    backbone = unwrap(model).backbone
    modules = dict(backbone.named_modules())
    names: dict[str, str] = {}
    for official, ours in official_module_names(backbone).items():
        for tensor in modules[ours].state_dict():
            names[f"{official}.{tensor}"] = f"backbone.{ours}.{tensor}"
    return names


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.pth``/``.pt`` (weights only, never code) or ``.safetensors`` file.

    A ``{"state_dict": ...}`` wrapper is opened and a leading ``module.`` (DataParallel) is stripped.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"pretrained weights not found: {path}")
    if path.suffix == ".safetensors":
        try:
            payload: object = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err
    else:
        try:
            payload = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many types for corrupt or unsafe files
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            blocked = next((line for line in lines if "GLOBAL" in line), None)
            if blocked:  # weights_only refused to import a Python object: never run it
                raise CheckpointError(
                    f"{path}: refusing to load: the file holds pickled Python objects, not only tensors ({blocked})"
                ) from err
            detail = "invalid pickle data" if isinstance(err, pickle.UnpicklingError) else (lines or [""])[0]
            raise CheckpointError(
                f"{path}: not a readable PyTorch weights file ({type(err).__name__}: {detail})"
            ) from err
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        payload = payload["state_dict"]
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise CheckpointError(f"{path}: not a state dict (a mapping of tensor names to tensors)")
    return {k.removeprefix("module."): v for k, v in payload.items()}


def load_pretrained(model: nn.Module, path: str | Path) -> PretrainedReport:
    """Copy the official HRNet tensors of ``path`` into ``model``'s backbone, in place.

    Every checkpoint tensor whose module exists in the backbone is loaded (all of them for
    ``dekr-w32``/``dekr-w48``; the subset the light backbone has for ``grmpose-*``); the rest are
    skipped. Nothing is copied if any tensor's shape differs from the model's.

    Raises:
        CheckpointError: file missing or unreadable, pickled objects other than tensors, a shape
            mismatch (naming the key and both shapes), or no backbone tensor found at all.
    """
    state = read_state_dict(path)
    names = official_tensor_names(model)
    target = unwrap(model).state_dict()
    loaded, skipped = [], []
    for key, tensor in state.items():
        ours = names.get(key)
        if ours is None:
            skipped.append(key)
            continue
        if tensor.shape != target[ours].shape:
            raise CheckpointError(
                f"{path}: {key} has shape {tuple(tensor.shape)} but the model's {ours} has shape "
                f"{tuple(target[ours].shape)} (weights for another width?)"
            )
        loaded.append(key)
    if not loaded:
        raise CheckpointError(
            f"{path}: no tensor with the official HRNet backbone names (conv1, layer1, stage2, ...)"
        )
    with torch.no_grad():
        for key in loaded:
            target[names[key]].copy_(state[key])
    provided = {names[k] for k in loaded}
    kept = tuple(
        k
        for k in target
        if k.startswith("backbone.") and k not in provided and not k.endswith("num_batches_tracked")
    )
    log.info(
        "%s: loaded %d backbone tensors; skipped %d without a counterpart (%s); %d backbone tensors keep "
        "their initialisation",
        path, len(loaded), len(skipped), ", ".join(sorted({k.split(".")[0] for k in skipped})) or "-", len(kept),
    )  # fmt: skip
    for key in skipped:
        log.debug("skipped %s", key)
    for key in kept:
        log.debug("not in checkpoint: %s", key)
    return PretrainedReport(tuple(loaded), tuple(skipped), kept)
