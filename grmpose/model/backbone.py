"""HRNet-style multi-stage, multi-resolution backbone with a configurable block table (eq. 1).

Stage 1 is the stem stage (Bottleneck blocks at stride 4). Stage n (n = 2, 3, 4) has n parallel
branches at strides 4, 8, 16, 32 with widths C, 2C, 4C, 8C. Each stage repeats ``modules[n-1]``
HRNet modules; a module runs every branch through its blocks (``blocks[n-1][i]`` BasicBlocks in
branch i -- 0 blocks means the branch passes through) and then exchanges information between all
branches (the fusion unit). The paper's light table ``{[4],[0,4],[0,0,4],[0,0,0,4]}`` keeps the
blocks only in the newest branch of each stage; HRNet's full table is every branch with 4 blocks.

``forward`` returns ``(p1, p2, stage4)``: the stride-4 outputs of stages 2 and 3 (C channels each)
and the list of the four stage-4 outputs.
"""

from __future__ import annotations

import torch
from torch import nn

from grmpose.model.blocks import BasicBlock, Bottleneck, conv_bn
from grmpose.model.mfa import MFABlock
from grmpose.model.upsample import upsample


class FuseLayer(nn.Module):
    """Exchange unit: output i = ReLU(sum_j f_ij(x_j)).

    f_ii is the identity; a lower-resolution input j > i goes through conv1x1-BN and nearest
    upsampling by 2^(j-i); a higher-resolution input j < i goes through i-j stride-2 conv3x3-BN
    layers (ReLU between them).
    """

    def __init__(self, widths: list[int]) -> None:
        super().__init__()
        n = len(widths)
        self.paths = nn.ModuleList()
        for i in range(n):
            row = nn.ModuleList()
            for j in range(n):
                if j == i:
                    row.append(nn.Identity())
                elif j > i:
                    row.append(nn.Sequential(conv_bn(widths[j], widths[i], kernel=1, relu=False)))
                else:
                    steps = [conv_bn(widths[j], widths[j], stride=2) for _ in range(i - j - 1)]
                    steps.append(conv_bn(widths[j], widths[i], stride=2, relu=False))
                    row.append(nn.Sequential(*steps))
            self.paths.append(row)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        outs = []
        for i, row in enumerate(self.paths):
            total = xs[i]
            for j, path in enumerate(row):
                if j == i:
                    continue
                y = path(xs[j])
                if j > i:
                    y = upsample(y, 2 ** (j - i), "nearest")
                total = total + y
            outs.append(self.relu(total))
        return outs


class HRModule(nn.Module):
    """One HRNet module: per-branch BasicBlocks (MFA for the newest branch's 4th block), then fusion."""

    def __init__(self, widths: list[int], blocks: tuple[int, ...], use_mfa: bool = False) -> None:
        super().__init__()
        self.branches = nn.ModuleList()
        newest = len(widths) - 1
        for i, (c, nb) in enumerate(zip(widths, blocks)):
            layers = [
                MFABlock(c) if (use_mfa and i == newest and b == 3) else BasicBlock(c) for b in range(nb)
            ]
            self.branches.append(nn.Sequential(*layers))
        self.fuse = FuseLayer(widths)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.fuse([branch(x) for branch, x in zip(self.branches, xs)])


class HRBackbone(nn.Module):
    def __init__(
        self,
        width: int,
        blocks: tuple[tuple[int, ...], ...],
        modules: tuple[int, int, int, int],
        stem_channels: int = 64,
        use_mfa: bool = False,
    ) -> None:
        super().__init__()
        self.widths = [width * 2**i for i in range(4)]
        self.stem = nn.Sequential(
            conv_bn(3, stem_channels, stride=2), conv_bn(stem_channels, stem_channels, stride=2)
        )
        layer1: list[nn.Module] = []
        cin = stem_channels
        for _ in range(blocks[0][0] * modules[0]):
            layer1.append(Bottleneck(cin, stem_channels))
            cin = stem_channels * Bottleneck.expansion
        self.layer1 = nn.Sequential(*layer1)

        # transition into stage 2: the stride-4 branch and a new stride-8 branch.
        self.transitions = nn.ModuleList(
            [nn.ModuleList([conv_bn(cin, self.widths[0]), conv_bn(cin, self.widths[1], stride=2)])]
        )
        # transitions into stages 3 and 4: existing branches pass through, a new branch is made
        # from the previous newest one by a stride-2 conv.
        for n in (3, 4):
            self.transitions.append(
                nn.ModuleList([conv_bn(self.widths[n - 2], self.widths[n - 1], stride=2)])
            )
        self.stages = nn.ModuleList()
        for n in (2, 3, 4):
            widths = self.widths[:n]
            mods = [
                HRModule(widths, blocks[n - 1], use_mfa=use_mfa and n == 4) for _ in range(modules[n - 1])
            ]
            self.stages.append(nn.ModuleList(mods))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        x = self.layer1(self.stem(x))
        xs = [t(x) for t in self.transitions[0]]
        stride4: list[torch.Tensor] = []
        for s, stage in enumerate(self.stages):
            if s > 0:
                xs = xs + [self.transitions[s][0](xs[-1])]
            for module in stage:
                xs = module(xs)
            stride4.append(xs[0])
        return stride4[0], stride4[1], xs
