"""Adaptive convolution (DEKR) in plain PyTorch, batched over groups.

For every pixel p, a 3x3 conv predicts a 2x2 matrix A(p) (4 channels: a11, a12, a21, a22) and
another predicts a translation t(p) (2 channels: tx, ty). The 9 taps of a 3x3 kernel sample the
input at

    q_k = p + A(p) @ r_k + t(p),   r_k = (kx - 1, ky - 1),  k = 3 * ky + kx,

with bilinear interpolation (zero outside the map), and the 3x3 weights are applied to the 9
samples. With A = I and t = 0 this is an ordinary 3x3 convolution (padding 1). Both predictors
are zero-initialised, so at initialisation every tap samples the centre pixel.

All keypoints' adaptive convolutions run as one grouped operation: the input holds G groups
(one per keypoint) of c channels each, ``B x (G*c) x H x W``; groups never mix.

Sampling uses ``grid_sample`` on a grid built with ``torch.arange`` (not ``linspace``), which keeps
H and W dynamic in the ONNX export. On the CPU, a fused kernel (``adaptive_conv_kernel``, compiled
on first use) computes the same thing 2-3x faster, forward and backward; the ``grid_sample`` path
is what CUDA, ONNX export and ``torch.compile`` see, and what runs if the kernel cannot be built.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from grmpose.model import adaptive_conv_kernel


def regular_grid(device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The 9 kernel offsets r_k as a 2 x 9 tensor (row 0: x, row 1: y), k = 3 * ky + kx."""
    k = torch.arange(9, device=device)
    return torch.stack([k % 3 - 1, k // 3 - 1]).to(dtype)


def tap_matrix(device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """18 x 6 matrix taking (a11, a12, a21, a22, tx, ty) to the 9 taps' displacements ``A r_k + t``.

    Rows are ordered (tap k, x/y): row 2k is dx_k = a11 rx + a12 ry + tx, row 2k+1 is
    dy_k = a21 rx + a22 ry + ty, with r_k = (rx, ry) from ``regular_grid``.
    """
    rx, ry = regular_grid(device, dtype)
    zero, one = torch.zeros_like(rx), torch.ones_like(rx)
    row_x = torch.stack([rx, ry, zero, zero, one, zero], dim=1)  # 9 x 6
    row_y = torch.stack([zero, zero, rx, ry, zero, one], dim=1)
    return torch.stack([row_x, row_y], dim=1).reshape(18, 6)


def sample_taps(x: torch.Tensor, transform: torch.Tensor, groups: int) -> torch.Tensor:
    """Bilinearly sample the 9 taps of every pixel.

    Args:
        x: B x (G*c) x H x W input.
        transform: B x G x 6 x H x W, per group (a11, a12, a21, a22, tx, ty).
        groups: G.
    Returns:
        B x (G*c*9) x H x W samples, ordered (group, channel, tap).
    """
    b, gc, h, w = x.shape
    c = gc // groups
    # grid_sample with align_corners=False: pixel i has normalised coordinate (2i + 1) / size - 1,
    # so a displacement of d pixels moves the normalised coordinate by 2 d / size.
    m = tap_matrix(x.device, x.dtype).reshape(9, 2, 6)
    m = torch.stack([m[:, 0] * (2.0 / w), m[:, 1] * (2.0 / h)], dim=1).reshape(18, 6)
    disp = torch.matmul(m, transform.reshape(b * groups, 6, h * w)).reshape(b * groups, 9, 2, h, w)
    xs = torch.arange(w, device=x.device, dtype=x.dtype)
    ys = torch.arange(h, device=x.device, dtype=x.dtype).reshape(h, 1)
    gx = disp[:, :, 0] + ((2.0 * xs + 1.0) / w - 1.0)  # (B*G) x 9 x H x W
    gy = disp[:, :, 1] + ((2.0 * ys + 1.0) / h - 1.0)
    grid = torch.stack([gx, gy], dim=-1).reshape(b * groups, 9 * h, w, 2)
    samples = F.grid_sample(
        x.reshape(b * groups, c, h, w), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )  # (B*G) x c x (9*H) x W
    return samples.reshape(b, groups * c * 9, h, w)


def grouped_linear(weight: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Per-group linear map over channels: ``out[b, g] = weight[g] @ x[b, g] (+ bias[g])``.

    A batched matmul instead of a grouped convolution: with a handful of channels per group the
    CPU kernels for grouped convolutions (and especially their backward) are many times slower.

    Args:
        weight: G x O x I.  x: B x G x I x N.  bias: G x O or None.
    Returns:
        B x G x O x N.
    """
    out = torch.matmul(weight, x)
    return out if bias is None else out + bias[:, :, None]


class AdaptiveConv(nn.Module):
    """Grouped adaptive 3x3 convolution: G groups of ``channels`` in and out, no bias.

    The parameters have the shapes of the grouped ``nn.Conv2d`` layers they stand for
    (``affine``, ``translation``: 3x3 convs with G groups; ``weight``: (G*c) x c x 3 x 3). The A/t
    predictor runs as one grouped ``conv2d`` (see ``transform``); the product of the sampled taps
    with ``weight`` as one batched matmul (see ``grouped_linear``).
    """

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.groups = groups
        self.channels = channels
        self.affine = nn.Conv2d(groups * channels, groups * 4, 3, padding=1, groups=groups)
        self.translation = nn.Conv2d(groups * channels, groups * 2, 3, padding=1, groups=groups)
        self.special_init()
        self.weight = nn.Parameter(torch.empty(groups * channels, channels, 3, 3))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        # no bias in training; ``grmpose.fuse`` sets one when it folds the following BatchNorm
        self.register_parameter("bias", None)

    def special_init(self) -> None:
        """Zero the A/t predictors (DEKR): at initialisation every tap samples the centre pixel.

        ``grmpose.model.init_weights`` calls it after its generic N(0, 0.001) pass over all convs.
        """
        for conv in (self.affine, self.translation):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """A and t of every pixel, B x G x 6 x H x W (a11, a12, a21, a22, tx, ty): both predictor
        convs as one grouped ``conv2d``.

        In training too: with torch 2.13 on the CPU, the grouped convolution's forward + backward at
        tiny's shape (17 groups of 8 channels, 64 x 64, batch 8) took 160 ms against 310 ms for a
        batched matmul over the explicit 3 x 3 neighbourhood (9 shifted copies of the input), which
        earlier versions used because the grouped backward was slower then. (At grmpose-w32's shape,
        15 channels per group at 128 x 128, batch 2, the two measured about even: 801 vs 660 ms
        on a loaded machine.)
        """
        b, _, h, w = x.shape
        weight, bias = self.transform_parameters()
        pred = F.conv2d(x, weight, bias, padding=1, groups=self.groups)
        return pred.reshape(b, self.groups, 6, h, w)

    def transform_parameters(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Both predictors as one grouped conv: weight (G*6) x c x 3 x 3 and bias G*6, per group the
        rows a11, a12, a21, a22, tx, ty."""
        g, c = self.groups, self.channels
        weight = torch.cat(
            [self.affine.weight.reshape(g, 4, c, 3, 3), self.translation.weight.reshape(g, 2, c, 3, 3)], dim=1
        )
        bias = torch.cat([self.affine.bias.reshape(g, 4), self.translation.bias.reshape(g, 2)], dim=1)
        return weight.reshape(g * 6, c, 3, 3), bias.reshape(g * 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        g, c = self.groups, self.channels
        # on the CPU, the fused kernel: the same function, 2-3x faster (see adaptive_conv_kernel)
        if adaptive_conv_kernel.usable(x, self.weight, self.affine.weight):
            x5 = adaptive_conv_kernel.group_channels_last(x, g)
            transform = adaptive_conv_kernel.transform(x5, *self.transform_parameters())
            out = adaptive_conv_kernel.adaptive_conv_x5(x5, transform, self.weight)
            return out if self.bias is None else out + self.bias[:, None, None]
        taps = sample_taps(x, self.transform(x), g).reshape(b, g, c * 9, h * w)
        bias = None if self.bias is None else self.bias.reshape(g, c)
        out = grouped_linear(self.weight.reshape(g, c, c * 9), taps, bias)
        return out.reshape(b, g * c, h, w)


class AdaptiveBlock(nn.Module):
    """DEKR's adaptive block: adaptive conv -> BN -> + input -> ReLU."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.conv = AdaptiveConv(channels, groups)
        self.bn = nn.BatchNorm2d(groups * channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)) + x)
