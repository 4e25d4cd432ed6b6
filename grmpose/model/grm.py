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

from grmpose.runtime import standard_operators_only


class SEBlock(nn.Module):
    """GAP -> ReLU -> FC -> Sigmoid channel weights s; p * s + p; then a 1x1 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, channels)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.fc(torch.relu(p.mean(dim=(2, 3)))))
        return self.proj(p * s[:, :, None, None] + p)


def contract_pixels(flat: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_n flat[b, :, n] * weights[b, n]: B x D x N and B x N -> B x D. One matrix-vector product per
    image: a batched product with one column (``bmm``) runs ~3x slower on the CPU here."""
    return torch.stack([torch.mv(f, w) for f, w in zip(flat, weights)])


class _AttentionStats(torch.autograd.Function):
    """(pooled, mean) of X: pooled = X x Softmax_HW(W_e X + b_e) and mean = GAP(X), both B x D.

    The backward writes X's gradient in one pass (a rank-3 product: the pooling's, the query's and
    the mean's terms) instead of autograd's three full-size gradients and their sums."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w_e: torch.Tensor, b_e: torch.Tensor):
        flat = x.flatten(2)  # B x D x N
        q = torch.softmax(torch.bmm(w_e.expand(len(x), 1, -1), flat).squeeze(1) + b_e, dim=1)  # B x N
        pooled = contract_pixels(flat, q)
        ctx.save_for_backward(x, w_e, q)
        return pooled, flat.mean(dim=2)

    @staticmethod
    def backward(ctx, d_pooled: torch.Tensor, d_mean: torch.Tensor):
        x, w_e, q = ctx.saved_tensors
        flat = x.flatten(2)
        b, d, n = flat.shape
        d_q = torch.bmm(d_pooled.unsqueeze(1), flat).squeeze(1)  # B x N
        d_logit = q * (d_q - (q * d_q).sum(dim=1, keepdim=True))  # softmax backward
        left = torch.stack([d_pooled, w_e.expand(b, d), d_mean / n], dim=2)  # B x D x 3
        right = torch.stack([q, d_logit, torch.ones_like(q)], dim=1)  # B x 3 x N
        d_x = torch.bmm(left, right).reshape(x.shape)
        d_w = contract_pixels(flat, d_logit).sum(dim=0)
        return d_x, d_w, d_logit.sum().reshape(1)


class _AttentionApply(torch.autograd.Function):
    """Y = (A_ch + A_sp) * X with A_sp = Sigmoid(q_x . X + q_b) (eq. 6-7), from A_ch, q_x (B x D), q_b (B).

    The backward reads X and the incoming gradient a few times and writes X's gradient once, where
    autograd would build the full-size A_ch + A_sp and a gradient per use of X."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, a_ch: torch.Tensor, q_x: torch.Tensor, q_b: torch.Tensor):
        flat = x.flatten(2)
        a_sp = torch.sigmoid(torch.bmm(q_x.unsqueeze(1), flat).squeeze(1) + q_b.unsqueeze(1))  # B x N
        y = flat * a_ch.unsqueeze(2)
        y.addcmul_(flat, a_sp.unsqueeze(1))
        ctx.save_for_backward(x, a_ch, q_x, a_sp)
        return y.reshape(x.shape)

    @staticmethod
    def backward(ctx, d_y: torch.Tensor):
        x, a_ch, q_x, a_sp = ctx.saved_tensors
        flat, d_flat = x.flatten(2), d_y.reshape(x.shape).flatten(2)
        product = d_flat * flat
        d_a_ch = product.sum(dim=2)  # B x D
        d_t = product.sum(dim=1) * a_sp * (1.0 - a_sp)  # B x N, through the sigmoid
        d_q_x = contract_pixels(flat, d_t)
        d_x = d_flat * a_ch.unsqueeze(2)
        d_x.addcmul_(d_flat, a_sp.unsqueeze(1))
        d_x.baddbmm_(q_x.unsqueeze(2), d_t.unsqueeze(1))
        return d_x.reshape(x.shape), d_a_ch, d_q_x, d_t.sum(dim=1)


class ChannelSpatialAttention(nn.Module):
    """Parallel channel-only and spatial-only self-attention (eq. 5-7) on D channels.

    Two exact forms of the same function: ``reference``, autograd on the equations, and ``fused``,
    which runs the full-size parts through two autograd Functions with hand-written backward passes
    (eager training and inference; tiny at 256 px, batch 8: forward + backward ~40 ms against ~75).
    ``reference`` runs when a graph is captured or operators are counted
    (``grmpose.runtime.standard_operators_only``) and under autocast. Both are tested against each
    other and against the paper's equations."""

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

    def channel_mlp(self, pooled: torch.Tensor) -> torch.Tensor:
        """A_ch from X x Softmax (B x D): Sigmoid(W_c(W_d(.))), W_d after the pooling (see the module notes)."""
        z = self.ch_value(pooled[:, :, None, None])
        return torch.sigmoid(self.ch_up(z)).flatten(1)

    def spatial_query(self, mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q = Softmax_C(W_e GAP(X)) pushed through W_d: (q W_d, q . b_d), B x D and B (see the module notes)."""
        d = mean.shape[1]
        q = torch.softmax(self.sp_query(mean[:, :, None, None]).flatten(1), dim=1)  # B x D/2
        return torch.matmul(q, self.sp_value.weight.reshape(-1, d)), torch.matmul(q, self.sp_value.bias)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        b, d, h, w = x.shape
        flat = x.flatten(2)  # B x D x HW
        q = torch.softmax(self.ch_query(x).flatten(2), dim=2)  # B x 1 x HW
        a_ch = self.channel_mlp(torch.matmul(flat, q.transpose(1, 2)).reshape(b, d))
        q_x, q_b = self.spatial_query(x.mean(dim=(2, 3)))
        a_sp = torch.sigmoid(torch.matmul(q_x.unsqueeze(1), flat) + q_b.reshape(b, 1, 1)).reshape(b, 1, h, w)
        return (a_ch.reshape(b, d, 1, 1) + a_sp) * x

    def fused(self, x: torch.Tensor) -> torch.Tensor:
        pooled, mean = _AttentionStats.apply(x, self.ch_query.weight.reshape(-1), self.ch_query.bias)
        q_x, q_b = self.spatial_query(mean)
        return _AttentionApply.apply(x, self.channel_mlp(pooled), q_x, q_b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if standard_operators_only() or torch.is_autocast_enabled(x.device.type):
            return self.reference(x)  # autocast: the Functions would meet mixed dtypes in backward
        return self.fused(x)


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
