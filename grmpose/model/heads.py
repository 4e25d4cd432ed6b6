"""DEKR's heads plus the paper's 1x1 tag-map branch.

* heatmap branch: 1x1 conv-BN-ReLU to ``head_channels``, one BasicBlock, 1x1 conv to K+1 maps
  (the last is the person centre); the tag branch is a 1x1 conv from the same features to K maps.
* offset branch: 1x1 conv-BN-ReLU to K x c; each keypoint's c-channel slice goes through
  ``offset_blocks`` adaptive blocks and a 1x1 conv to its 2 offset maps (x, y). All keypoints run
  as one grouped operation (groups never mix), which is DEKR's per-keypoint branch, batched.
"""

from __future__ import annotations

import torch
from torch import nn

from grmpose.model.adaptive_conv import AdaptiveBlock, grouped_linear
from grmpose.model.blocks import BasicBlock, conv_bn


class HeatmapTagHead(nn.Module):
    def __init__(self, in_channels: int, head_channels: int, num_keypoints: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(in_channels, head_channels, kernel=1), BasicBlock(head_channels)
        )
        self.heatmap = nn.Conv2d(head_channels, num_keypoints + 1, 1)
        self.tag = nn.Conv2d(head_channels, num_keypoints, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return self.heatmap(f), self.tag(f)


class OffsetHead(nn.Module):
    def __init__(self, in_channels: int, channels_per_kpt: int, num_blocks: int, num_keypoints: int) -> None:
        super().__init__()
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
        return out.reshape(b, 2 * k, h, w)
