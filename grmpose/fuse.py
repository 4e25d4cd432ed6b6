"""Inference-time optimisations: fold BatchNorm into the convolution before it.

In eval mode a BatchNorm is the per-channel affine map ``y = g * (x - mean) / sqrt(var + eps) + b``.
When it follows a convolution (nothing in between), it folds into that convolution's weights and
bias: ``W' = W * s``, ``b' = (b - mean) * s + beta`` with ``s = g / sqrt(var + eps)`` per output
channel. The folded model computes the same function (up to float rounding) with one pass over
memory less per layer.

Pairs folded here:
    * ``nn.Sequential`` children ``Conv2d, BatchNorm2d`` (every ``conv_bn`` of the backbone, MFA,
      heads, BasicBlock and Bottleneck);
    * ``AdaptiveBlock``: its ``AdaptiveConv`` (weights applied by a grouped 1x1 conv) then ``bn``.

The folded BatchNorm is replaced by ``nn.Identity``. Folding is for inference only: the folded
model must not be trained (its statistics are gone).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from grmpose.model.adaptive_conv import AdaptiveBlock

__all__ = ["fold_bn_into_conv", "fuse_model"]


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(scale, shift)`` with ``bn(x) == x * scale + shift`` in eval mode."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics")
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    return scale, shift


@torch.no_grad()
def fold_bn_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new ``Conv2d`` equal to ``bn(conv(x))`` in eval mode (the inputs are not modified)."""
    scale, shift = _bn_scale_shift(bn)
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
    ).to(device=conv.weight.device, dtype=conv.weight.dtype)
    weight = conv.weight.double() * scale.reshape(-1, 1, 1, 1)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    fused.weight.copy_(weight)
    fused.bias.copy_(bias * scale + shift)
    return fused


@torch.no_grad()
def _fold_adaptive_block(block: AdaptiveBlock) -> None:
    """Fold ``block.bn`` into the adaptive conv's 3x3 weights and a new bias (in place)."""
    conv = block.conv
    scale, shift = _bn_scale_shift(block.bn)
    conv.weight.copy_(conv.weight.double() * scale.reshape(-1, 1, 1, 1))
    bias = conv.bias.double() * scale if conv.bias is not None else torch.zeros_like(scale)
    conv.bias = nn.Parameter((bias + shift).to(conv.weight.dtype))
    block.bn = nn.Identity()


def _fold_sequential(seq: nn.Sequential) -> int:
    """Fold every ``Conv2d, BatchNorm2d`` pair of a Sequential's direct children; returns the count."""
    names = list(seq._modules)
    folded = 0
    for first, second in zip(names, names[1:]):
        conv, bn = seq._modules[first], seq._modules[second]
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            seq._modules[first] = fold_bn_into_conv(conv, bn)
            seq._modules[second] = nn.Identity()
            folded += 1
    return folded


def fuse_model(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold all Conv+BatchNorm pairs of a grmpose network for inference.

    Args:
        model: a ``GRMPoseNet`` (or any module built from ``conv_bn`` Sequentials and
            ``AdaptiveBlock``s).
        inplace: modify ``model`` itself instead of a deep copy.

    Returns:
        The folded model, in eval mode; its outputs equal ``model.eval()``'s up to float rounding.
    """
    fused = model if inplace else copy.deepcopy(model)
    fused.eval()
    count = 0
    for module in list(fused.modules()):
        if isinstance(module, nn.Sequential):
            count += _fold_sequential(module)
        elif isinstance(module, AdaptiveBlock) and isinstance(module.bn, nn.BatchNorm2d):
            _fold_adaptive_block(module)
            count += 1
    fused.folded_batchnorms = count
    return fused
