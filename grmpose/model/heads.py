"""DEKR's heads plus the paper's 1x1 tag-map branch.

* heatmap branch: 1x1 conv-BN-ReLU to ``head_channels``, one BasicBlock, 1x1 conv to K+1 maps
  (the last is the person centre); the tag branch is a 1x1 conv from the same features to K maps.
* offset branch: 1x1 conv-BN-ReLU to K x c; each keypoint's c-channel slice goes through
  ``offset_blocks`` adaptive blocks and a 1x1 conv to its 2 offset maps (x, y). All keypoints run
  as one grouped operation (groups never mix), which is DEKR's per-keypoint branch, batched.

Offset unit. The offsets are regressed in map pixels (DEKR), but the last 1x1 conv predicts them in
units of ``unit`` map pixels: ``offsets = unit * conv(y)``. It is a reparametrisation, the same
function class, that multiplies the last layer's effective step by ``unit`` (under Adam every weight
moves by about the learning rate per step). Measured in ``benchmarks/results/learning_levers.md``: with
DEKR's loss factor it changes little, with a large offset factor unit 8 learns faster than unit 1.
``unit = 1`` is DEKR's head and every preset's.
``set_offset_bias`` starts the bias at a given mean pose (in map pixels) instead of 0.

Heatmap activation. DEKR's heatmaps are the last conv's raw output, trained by the MSE to Gaussian
targets. With ``activation="sigmoid"`` (``grmpose train --heatmap-loss focal``, ``grmpose.losses``)
the maps pass through a sigmoid, and the last conv's bias starts at the logit of ``HEATMAP_PRIOR``
(0.1, CornerNet/CenterNet's start) so that the focal loss's background term does not swamp the
first steps.
"""

from __future__ import annotations

import torch
from torch import nn

from grmpose.config import HEATMAP_ACTIVATIONS
from grmpose.model.adaptive_conv import AdaptiveBlock, grouped_linear
from grmpose.model.blocks import BasicBlock, conv_bn

#: the sigmoid heatmaps' value at the start (their last conv's bias is its logit)
HEATMAP_PRIOR = 0.1


class HeatmapTagHead(nn.Module):
    def __init__(self, in_channels: int, head_channels: int, num_keypoints: int, activation: str = "none") -> None:
        super().__init__()
        if activation not in HEATMAP_ACTIVATIONS:
            raise ValueError(f"heatmap activation must be one of {', '.join(HEATMAP_ACTIVATIONS)}, got {activation!r}")
        self.features = nn.Sequential(
            conv_bn(in_channels, head_channels, kernel=1), BasicBlock(head_channels)
        )
        self.heatmap = nn.Conv2d(head_channels, num_keypoints + 1, 1)
        self.tag = nn.Conv2d(head_channels, num_keypoints, 1)
        self.sigmoid = activation == "sigmoid"

    @torch.no_grad()
    def special_init(self) -> None:
        """Sigmoid maps start at ``HEATMAP_PRIOR`` (run after the generic initialisation)."""
        if self.sigmoid:
            self.heatmap.bias.fill_(float(torch.logit(torch.tensor(HEATMAP_PRIOR))))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        heatmaps = self.heatmap(f)
        return (heatmaps.sigmoid() if self.sigmoid else heatmaps), self.tag(f)


class OffsetHead(nn.Module):
    def __init__(
        self, in_channels: int, channels_per_kpt: int, num_blocks: int, num_keypoints: int, unit: float = 1.0
    ) -> None:
        super().__init__()
        self.unit = float(unit)
        k, c = num_keypoints, channels_per_kpt
        self.transition = conv_bn(in_channels, k * c, kernel=1)
        self.blocks = nn.Sequential(*[AdaptiveBlock(c, groups=k) for _ in range(num_blocks)])
        self.num_keypoints, self.channels = k, c
        # per keypoint a 1x1 conv from its c channels to its 2 offsets (a grouped conv's weights,
        # applied as one batched matmul: grouped CPU convolutions with few channels are slow)
        self.offset = nn.Conv2d(k * c, 2 * k, 1, groups=k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.blocks(self.transition(x))
        b, _, h, w = y.shape
        k, c = self.num_keypoints, self.channels
        out = grouped_linear(
            self.offset.weight.reshape(k, 2, c), y.reshape(b, k, c, h * w), self.offset.bias.reshape(k, 2)
        )
        out = out.reshape(b, 2 * k, h, w)
        return out * self.unit if self.unit != 1.0 else out

    @torch.no_grad()
    def set_offset_bias(self, mean_offsets: torch.Tensor) -> None:
        """Start from a mean pose: the bias is set so that all-zero features give ``mean_offsets``.

        Args:
            mean_offsets: 2K, ``cell - keypoint`` in map pixels (x, y per keypoint).
        """
        self.offset.bias.copy_(torch.as_tensor(mean_offsets, dtype=self.offset.bias.dtype) / self.unit)
