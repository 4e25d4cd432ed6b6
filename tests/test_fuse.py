"""BatchNorm folding: the folded network computes what the unfolded one does in eval mode."""

from __future__ import annotations

import torch
from torch import nn

from grmpose.fuse import fold_bn_into_conv, fuse_model
from grmpose.model.adaptive_conv import AdaptiveBlock
from grmpose.model.net import build_model


def _randomise_bn(model: nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial statistics and affine parameters (fresh ones are identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)


def _randomise_adaptive(model: nn.Module, seed: int = 1) -> None:
    """Non-zero affine/translation predictors, so the sampling is not the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, AdaptiveBlock):
                for conv in (m.conv.affine, m.conv.translation):
                    conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.02)
                    conv.bias.copy_(torch.randn(conv.bias.shape, generator=g) * 0.2)


def test_fold_bn_into_conv_matches_conv_then_bn() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=2, bias=True)
    bn = nn.BatchNorm2d(6)
    seq = nn.Sequential(conv, bn)
    _randomise_bn(seq)
    seq.eval()
    x = torch.randn(2, 4, 9, 7)
    torch.testing.assert_close(fold_bn_into_conv(conv, bn)(x), seq(x), atol=1e-5, rtol=1e-5)


def test_fuse_tiny_equals_unfused_in_eval_mode() -> None:
    torch.manual_seed(0)
    model = build_model("tiny")
    _randomise_bn(model)
    _randomise_adaptive(model)
    model.eval()
    fused = fuse_model(model)
    assert fused.folded_batchnorms > 0
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()), "the original must be untouched"
    x = torch.randn(1, 3, 128, 96)
    with torch.inference_mode():
        ref, out = model(x), fused(x)
    for a, b in zip(ref, out):
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


def test_fuse_counts_every_batchnorm() -> None:
    model = build_model("tiny").eval()
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert fuse_model(model).folded_batchnorms == n_bn


def test_fused_state_dict_of_original_still_loads() -> None:
    """Adding the (unused) adaptive-conv bias slot must not change checkpoints."""
    model = build_model("tiny")
    assert not any(k.endswith("conv.bias") and ".blocks." in k for k in model.state_dict())
    build_model("tiny").load_state_dict(model.state_dict())
