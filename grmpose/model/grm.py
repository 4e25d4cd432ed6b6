"""Global Relation Modeling (paper §III-B, eq. 2, 4-7).

    F_SE(p)  = conv1x1(p * s + p),  s = Sigmoid(FC(ReLU(GAP(p))))         (SE block, as the paper lists it)
    F_all    = Concat(W_a(F_SE(p1)) + W_b(F_SE(p2)), p3)                   (eq. 4; W_a, W_b: 3x3 convs)
    A_ch(X)  = Sigmoid(W_c(r1(W_d(X)) x Softmax_HW(r2(W_e(X)))))          (eq. 5, channel-only branch)
    A_sp(X)  = Sigmoid(r3(Softmax_C(r1(GAP(W_e(X)))) x r2(W_d(X))))        (eq. 6, spatial-only branch)
    F_GRM    = A_ch(X) * X + A_sp(X) * X                                   (eq. 7, parallel layout)

p1, p2 are the stride-4 outputs of stages 2 and 3 (C channels). p3 is the stage-4 representation
DEKR feeds its heads: the four stage-4 branches upsampled to stride 4 and concatenated (15C), so
X = F_all has D = 16C channels and the internal width of the attention is D/2.

Three exact rewrites keep the big 1x1 convs off the full-resolution map (same parameters, same
function, about 4 GMAC less for grmpose-w32 at 512):

* spatial branch, query: GAP is taken before W_e (global average pooling commutes with a 1x1 conv);
* channel branch, value: the softmax weights sum to 1, so ``W_d(X) x q = W_d(X x q)`` -- the
  attention pools X first and W_d is applied to one D-vector per image;
* spatial branch, value: ``q x W_d(X) = (q W_d) x X + q . b_d`` -- the D/2-vector q is pushed
  through W_d's weight once and the product with X is a single D-channel weighted sum per pixel.

Each saves D*D/2 multiply-adds per pixel.
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
        """A_ch(X): B x D x 1 x 1 (W_d applied after the softmax pooling; see the module notes)."""
        b, d = x.shape[:2]
        flat = x.flatten(2)  # B x D x HW
        q = torch.softmax(self.ch_query(x).flatten(2), dim=2)  # B x 1 x HW
        pooled = torch.matmul(flat, q.transpose(1, 2)).reshape(b, d, 1, 1)  # X x softmax
        z = self.ch_value(pooled)  # = W_d(X) x softmax, since the softmax sums to 1
        return torch.sigmoid(self.ch_up(z))

    def spatial_weights(self, x: torch.Tensor) -> torch.Tensor:
        """A_sp(X): B x 1 x H x W (the softmax query pushed through W_d; see the module notes)."""
        b, d, h, w = x.shape
        q = self.sp_query(x.mean(dim=(2, 3), keepdim=True)).flatten(1)  # B x D/2
        q = torch.softmax(q, dim=1)
        weight = self.sp_value.weight.reshape(-1, d)  # D/2 x D
        q_x = torch.matmul(q, weight).unsqueeze(1)  # B x 1 x D
        q_b = torch.matmul(q, self.sp_value.bias).reshape(b, 1, 1)  # B x 1 x 1
        return torch.sigmoid(torch.matmul(q_x, x.flatten(2)) + q_b).reshape(b, 1, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.channel_weights(x) + self.spatial_weights(x)) * x


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
