"""Global Relation Modeling (paper §III-B, eq. 2, 4-7).

    F_SE(p)  = conv1x1(p * s + p),  s = Sigmoid(FC(ReLU(GAP(p))))         (SE block, as the paper lists it)
    F_all    = Concat(W_a(F_SE(p1)) + W_b(F_SE(p2)), p3)                   (eq. 4; W_a, W_b: 3x3 convs)
    A_ch(X)  = Sigmoid(W_c(r1(W_d(X)) x Softmax_HW(r2(W_e(X)))))          (eq. 5, channel-only branch)
    A_sp(X)  = Sigmoid(r3(Softmax_C(r1(GAP(W_e(X)))) x r2(W_d(X))))        (eq. 6, spatial-only branch)
    F_GRM    = A_ch(X) * X + A_sp(X) * X                                   (eq. 7, parallel layout)

p1, p2 are the stride-4 outputs of stages 2 and 3 (C channels). p3 is the stage-4 representation
DEKR feeds its heads: the four stage-4 branches upsampled to stride 4 and concatenated (15C), so
X = F_all has D = 16C channels and the internal width of the attention is D/2.

In the spatial branch GAP is taken before W_e: global average pooling commutes with a 1x1 conv,
which saves D*D/2 multiply-adds per pixel and gives the same result.
"""

from __future__ import annotations

import torch
from torch import nn


class SEBlock(nn.Module):
    """GAP -> ReLU -> FC -> Sigmoid channel weights s; p * s + p; then a 1x1 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, channels)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.fc(torch.relu(p.mean(dim=(2, 3)))))
        return self.proj(p * s[:, :, None, None] + p)


class ChannelSpatialAttention(nn.Module):
    """Parallel channel-only and spatial-only self-attention (eq. 5-7) on D channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        # channel-only branch
        self.ch_value = nn.Conv2d(channels, half, 1)  # W_d
        self.ch_query = nn.Conv2d(channels, 1, 1)  # W_e
        self.ch_up = nn.Conv2d(half, channels, 1)  # W_c
        # spatial-only branch
        self.sp_query = nn.Conv2d(channels, half, 1)  # W_e (applied after pooling)
        self.sp_value = nn.Conv2d(channels, half, 1)  # W_d

    def channel_weights(self, x: torch.Tensor) -> torch.Tensor:
        """A_ch(X): B x D x 1 x 1."""
        b = x.shape[0]
        v = self.ch_value(x).flatten(2)  # B x D/2 x HW
        q = torch.softmax(self.ch_query(x).flatten(2), dim=2)  # B x 1 x HW
        z = torch.matmul(v, q.transpose(1, 2))  # B x D/2 x 1
        return torch.sigmoid(self.ch_up(z.reshape(b, -1, 1, 1)))

    def spatial_weights(self, x: torch.Tensor) -> torch.Tensor:
        """A_sp(X): B x 1 x H x W."""
        b, _, h, w = x.shape
        q = self.sp_query(x.mean(dim=(2, 3), keepdim=True)).flatten(1)  # B x D/2
        q = torch.softmax(q, dim=1).unsqueeze(1)  # B x 1 x D/2
        v = self.sp_value(x).flatten(2)  # B x D/2 x HW
        return torch.sigmoid(torch.matmul(q, v)).reshape(b, 1, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channel_weights(x) * x + self.spatial_weights(x) * x


class GRM(nn.Module):
    """F_GRM = GRM(p1, p2, p3): C, C and 15C channels in, 16C channels out."""

    def __init__(self, width: int, p3_channels: int) -> None:
        super().__init__()
        self.se1 = SEBlock(width)
        self.se2 = SEBlock(width)
        self.w_a = nn.Conv2d(width, width, 3, padding=1)
        self.w_b = nn.Conv2d(width, width, 3, padding=1)
        self.out_channels = width + p3_channels
        self.attention = ChannelSpatialAttention(self.out_channels)

    def forward(self, p1: torch.Tensor, p2: torch.Tensor, p3: torch.Tensor) -> torch.Tensor:
        prior = self.w_a(self.se1(p1)) + self.w_b(self.se2(p2))
        return self.attention(torch.cat([prior, p3], dim=1))
