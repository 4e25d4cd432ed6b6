"""Multi-branch Feature Align (paper §III-C, eq. 3, 8-10).

Reading of the paper used here (see DESIGN §1): MFA replaces the 4th BasicBlock of the newest
(lowest-resolution) stage-4 branch in every stage-4 module; its input is already the fused
multi-resolution feature of the module (``x_4^4``).

Structure, for an input ``x`` of D channels:
    x0 = ReLU(BN(conv1x1(x)))                    -- fuse pixel-level features
    split x0 into 4 groups x0_1..x0_4 of D/4 channels
    branch b (b = 1..4) has b conv3x3-BN-ReLU layers:
        layer 1 input:  x0_b + o_{b-1}           (eq. 8; o_0 = 0)
        layer l input:  [x_b^1, y_1, ..., y_{l-1}] concatenated (eq. 9, dense connection)
        o_b = output of the last layer
    F_MFA = BN(conv1x1(concat(o_1..o_4)))         (eq. 10)
    out = ReLU(F_MFA + x)                        -- the replaced block's residual connection
"""

from __future__ import annotations

import torch
from torch import nn

from grmpose.model.blocks import conv_bn

NUM_BRANCHES = 4


class MFABlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels % NUM_BRANCHES:
            raise ValueError(f"MFA needs channels divisible by {NUM_BRANCHES}, got {channels}")
        g = channels // NUM_BRANCHES
        self.group = g
        self.fuse_in = conv_bn(channels, channels, kernel=1)
        # branch b (0-based) has b + 1 layers; layer l (0-based) reads (l + 1) * g channels.
        self.branches = nn.ModuleList(
            nn.ModuleList(conv_bn((layer + 1) * g, g, kernel=3) for layer in range(b + 1))
            for b in range(NUM_BRANCHES)
        )
        self.fuse_out = conv_bn(channels, channels, kernel=1, relu=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = self.fuse_in(x)
        groups = torch.split(x0, self.group, dim=1)
        outs: list[torch.Tensor] = []
        prev = None
        for b, layers in enumerate(self.branches):
            first = groups[b] if prev is None else groups[b] + prev
            feats = [first]
            y = first
            for layer in layers:
                y = layer(torch.cat(feats, dim=1) if len(feats) > 1 else feats[0])
                feats.append(y)
            outs.append(y)
            prev = y
        return self.relu(self.fuse_out(torch.cat(outs, dim=1)) + x)
