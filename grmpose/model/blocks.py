"""Residual blocks shared by the backbone and the heads (HRNet's BasicBlock and Bottleneck)."""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, relu: bool = True) -> nn.Sequential:
    """Conv (no bias) + BatchNorm (+ ReLU)."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection (channels in = out)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = conv_bn(channels, channels)
        self.conv2 = conv_bn(channels, channels, relu=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + x)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4 expansion) with a projected residual when widths differ."""

    expansion = 4

    def __init__(self, cin: int, planes: int) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = conv_bn(cin, planes, kernel=1)
        self.conv2 = conv_bn(planes, planes, kernel=3)
        self.conv3 = conv_bn(planes, cout, kernel=1, relu=False)
        self.downsample = conv_bn(cin, cout, kernel=1, relu=False) if cin != cout else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv3(self.conv2(self.conv1(x))) + self.downsample(x))
