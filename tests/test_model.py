"""The network: adaptive convolution, MFA and GRM against independent references; shapes; gradients."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from grmpose import build_model
from grmpose.cli import main as cli_main
from grmpose.config import PRESETS, ModelConfig
from grmpose.flops import count_parameters, summarize
from grmpose.model.adaptive_conv import AdaptiveBlock, AdaptiveConv
from grmpose.model.grm import GRM, ChannelSpatialAttention
from grmpose.model.mfa import MFABlock
from grmpose.runtime import standard_operators
from grmpose.spec import COCO, CROWDPOSE


def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter and BN statistic a non-trivial random value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return module.eval()


# ------------------------------------------------------------------ adaptive convolution
def bilinear(img: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """Value of a C x H x W map at (x, y), zero outside, by the textbook formula."""
    c, h, w = img.shape
    x0, y0 = math.floor(x), math.floor(y)
    out = torch.zeros(c, dtype=img.dtype)
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= xx < w and 0 <= yy < h:
                out += wx * wy * img[:, yy, xx]
    return out


def naive_adaptive_conv(conv: AdaptiveConv, x: torch.Tensor) -> torch.Tensor:
    """Per-pixel loop: q_k = p + A(p) r_k + t(p), bilinear samples, 3x3 weights."""
    b, gc, h, w = x.shape
    g, c = conv.groups, conv.channels
    a = conv.affine(x)
    t = conv.translation(x)
    out = torch.zeros(b, g * c, h, w, dtype=x.dtype)
    weight = conv.weight.reshape(g, c, c, 3, 3)
    for n in range(b):
        for gi in range(g):
            img = x[n, gi * c : (gi + 1) * c]
            for i in range(h):
                for j in range(w):
                    a11, a12, a21, a22 = (a[n, gi * 4 + m, i, j].item() for m in range(4))
                    tx, ty = t[n, gi * 2, i, j].item(), t[n, gi * 2 + 1, i, j].item()
                    acc = torch.zeros(c, dtype=x.dtype)
                    for ky in range(3):
                        for kx in range(3):
                            rx, ry = kx - 1, ky - 1
                            sx = j + a11 * rx + a12 * ry + tx
                            sy = i + a21 * rx + a22 * ry + ty
                            acc += weight[gi, :, :, ky, kx] @ bilinear(img, sx, sy)
                    out[n, gi * c : (gi + 1) * c, i, j] = acc
    return out


def test_adaptive_conv_matches_naive_loop():
    torch.manual_seed(0)
    conv = AdaptiveConv(channels=3, groups=2).double()
    with torch.no_grad():
        conv.affine.weight.normal_(0, 0.3)
        conv.affine.bias.copy_(torch.tensor([1.0, 0.2, -0.3, 0.8] * 2, dtype=torch.float64))
        conv.translation.weight.normal_(0, 0.5)
        conv.translation.bias.normal_(0, 0.7)
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    expected = naive_adaptive_conv(conv, x)
    torch.testing.assert_close(conv(x), expected, rtol=1e-9, atol=1e-9)  # training path (matmul)
    torch.testing.assert_close(conv.eval()(x), expected, rtol=1e-9, atol=1e-9)  # inference (grouped conv)


def test_adaptive_conv_identity_transform_is_plain_conv():
    torch.manual_seed(1)
    groups, c = 3, 4
    conv = AdaptiveConv(channels=c, groups=groups)
    with torch.no_grad():
        conv.affine.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 1.0] * groups))  # A = I, t = 0
    ref = nn.Conv2d(groups * c, groups * c, 3, padding=1, groups=groups, bias=False)
    with torch.no_grad():
        ref.weight.copy_(conv.weight)
    x = torch.randn(2, groups * c, 9, 11)
    torch.testing.assert_close(conv(x), ref(x), rtol=1e-5, atol=1e-5)


def test_adaptive_conv_at_init_samples_centre_only():
    """Zero-initialised predictors: every tap reads the centre, so it is a 1x1 conv with summed weights."""
    conv = AdaptiveConv(channels=2, groups=1)
    x = torch.randn(1, 2, 6, 6)
    expected = F.conv2d(x, conv.weight.sum(dim=(2, 3), keepdim=True))
    torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)


def test_adaptive_block_residual():
    block = AdaptiveBlock(channels=2, groups=2).eval()
    with torch.no_grad():
        block.conv.weight.zero_()
    x = torch.randn(1, 4, 5, 5)
    torch.testing.assert_close(block(x), torch.relu(x + block.bn.bias[None, :, None, None]))


# ------------------------------------------------------------------ MFA (eq. 8-10)
def conv_bn_relu_ref(seq: nn.Sequential, x: torch.Tensor, relu: bool = True) -> torch.Tensor:
    conv, bn = seq[0], seq[1]
    y = F.conv2d(x, conv.weight, padding=conv.padding)
    y = (y - bn.running_mean[None, :, None, None]) / torch.sqrt(bn.running_var[None, :, None, None] + bn.eps)
    y = y * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]
    return torch.relu(y) if relu else y


def test_mfa_matches_paper_equations():
    block = randomize_(MFABlock(16), seed=3)
    x = torch.randn(2, 16, 6, 5)
    x0 = conv_bn_relu_ref(block.fuse_in, x)
    g = 4
    outputs = []
    o_prev = torch.zeros(2, g, 6, 5)
    for b in range(4):
        xb1 = x0[:, b * g : (b + 1) * g] + o_prev  # eq. 8
        produced = [xb1]
        for layer in range(b + 1):  # branch b has b+1 layers (1-based: n layers on branch n)
            produced.append(conv_bn_relu_ref(block.branches[b][layer], torch.cat(produced, 1)))  # eq. 9
        o_prev = produced[-1]
        outputs.append(o_prev)
    f_mfa = conv_bn_relu_ref(block.fuse_out, torch.cat(outputs, 1), relu=False)  # eq. 10
    expected = torch.relu(f_mfa + x)
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)
    assert [len(branch) for branch in block.branches] == [1, 2, 3, 4]


# ------------------------------------------------------------------ GRM (eq. 4-7)
def test_grm_matches_paper_equations():
    c, p3c = 4, 12
    grm = randomize_(GRM(c, p3c), seed=5)
    p1, p2, p3 = (torch.randn(2, ch, 6, 7, requires_grad=True) for ch in (c, c, p3c))

    def se(block, p):  # GAP -> ReLU -> FC -> Sigmoid -> p*s + p -> conv1x1
        s = torch.sigmoid(torch.relu(p.mean((2, 3))) @ block.fc.weight.T + block.fc.bias)
        return F.conv2d(p * s[..., None, None] + p, block.proj.weight, block.proj.bias)

    def conv(m, x):
        return F.conv2d(x, m.weight, m.bias, padding=m.padding)

    X = torch.cat([conv(grm.w_a, se(grm.se1, p1)) + conv(grm.w_b, se(grm.se2, p2)), p3], 1)  # eq. 4
    att = grm.attention
    b, d, h, w = X.shape
    # eq. 5: W_c(r1(W_d X) x softmax(r2(W_e X)))
    v = conv(att.ch_value, X).reshape(b, d // 2, h * w)
    q = torch.softmax(conv(att.ch_query, X).reshape(b, h * w), dim=1)
    z = torch.einsum("bcn,bn->bc", v, q)
    a_ch = torch.sigmoid(z @ att.ch_up.weight[:, :, 0, 0].T + att.ch_up.bias)[..., None, None]
    # eq. 6: pooling after the 1x1 conv W_e (the module pools first; the two must agree)
    q_sp = torch.softmax(conv(att.sp_query, X).mean((2, 3)), dim=1)
    v_sp = conv(att.sp_value, X).reshape(b, d // 2, h * w)
    a_sp = torch.sigmoid(torch.einsum("bc,bcn->bn", q_sp, v_sp)).reshape(b, 1, h, w)
    expected = a_ch * X + a_sp * X  # eq. 7
    out = grm(p1, p2, p3)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert grm.out_channels == c + p3c
    # the rewrites are exact for the gradients too (inputs and every parameter)
    weights = torch.randn_like(expected)
    inputs = (p1, p2, p3, *grm.parameters())
    got = torch.autograd.grad((out * weights).sum(), inputs)
    want = torch.autograd.grad((expected * weights).sum(), inputs)
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


def test_grm_attention_fast_path_equals_autograd_on_the_equations():
    """The eager form (two autograd Functions with hand-written backward passes) against the
    reference form (autograd on the equations): values, and gradients of X and of every parameter,
    in float64; gradcheck (finite differences) on X; standard_operators() selects the reference."""
    att = randomize_(ChannelSpatialAttention(6), seed=3).double()
    x = torch.randn(3, 6, 5, 7, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(3, 6, 5, 7, dtype=torch.float64)
    inputs = (x, *att.parameters())
    fast, ref = att.fused(x), att.reference(x)
    torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)
    got = torch.autograd.grad((fast * weights).sum(), inputs)
    want = torch.autograd.grad((ref * weights).sum(), inputs)
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(att.fused, (x,))
    calls = []
    original = ChannelSpatialAttention.reference
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ChannelSpatialAttention, "reference", lambda self, t: calls.append(1) or original(self, t))
        att(x)
        assert calls == []
        with standard_operators():
            att(x)
        assert calls == [1]


# ------------------------------------------------------------------ whole network
@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("spec", [COCO, CROWDPOSE], ids=["coco", "crowdpose"])
def test_output_shapes(preset, spec):
    model = build_model(preset, spec).eval()
    with torch.no_grad():
        heat, off, tags = model(torch.randn(2, 3, 64, 96))
    k = spec.num_keypoints
    assert heat.shape == (2, k + 1, 16, 24)
    assert off.shape == (2, 2 * k, 16, 24)
    assert tags.shape == (2, k, 16, 24)
    assert torch.isfinite(heat).all() and torch.isfinite(off).all() and torch.isfinite(tags).all()


def test_same_outputs_in_train_and_eval_mode_types():
    model = build_model("tiny")
    outs_train = model.train()(torch.randn(2, 3, 64, 64))
    with torch.no_grad():
        outs_eval = model.eval()(torch.randn(2, 3, 64, 64))
    assert isinstance(outs_train, tuple) and len(outs_train) == 3
    assert [o.shape for o in outs_train] == [o.shape for o in outs_eval]


@pytest.mark.parametrize("preset", ["tiny", "grmpose-w32"])
def test_every_parameter_gets_a_gradient(preset):
    torch.manual_seed(0)
    model = build_model(preset, "crowdpose").train()
    heat, off, tags = model(torch.randn(2, 3, 64, 64))
    (heat.square().mean() + off.square().mean() + tags.square().mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"parameters without gradient: {missing}"


def test_light_and_full_block_tables():
    light = build_model("grmpose-w32-base")
    full = build_model("dekr-w32")
    # eq. 1: the light table keeps blocks only in the newest branch of each stage
    for stage in light.backbone.stages:
        for module in stage:
            counts = [len(branch) for branch in module.branches]
            assert counts[:-1] == [0] * (len(counts) - 1) and counts[-1] == 4
    for stage in full.backbone.stages:
        for module in stage:
            assert all(len(branch) == 4 for branch in module.branches)
    assert [len(s) for s in full.backbone.stages] == [1, 4, 3]


def test_table_one_rows_are_four_configs():
    names = {(PRESETS[n].use_grm, PRESETS[n].use_mfa) for n in PRESETS if n.startswith("grmpose-w32")}
    assert names == {(False, False), (True, False), (False, True), (True, True)}
    model = build_model("grmpose-w32")
    assert model.grm is not None
    mfa_blocks = [m for m in model.modules() if isinstance(m, MFABlock)]
    assert len(mfa_blocks) == PRESETS["grmpose-w32"].modules[3]  # one per stage-4 module
    assert not any(isinstance(m, MFABlock) for m in build_model("grmpose-w32-nomfa").modules())


def test_dekr_baseline_is_the_real_one():
    """Official DEKR code measured here: W32 29.56 M params / 45.7 GMAC @512, W48 65.68 M / 142.1 GMAC @640."""
    w32 = summarize("dekr-w32")
    assert abs(w32["params"] - 29.56e6) / 29.56e6 < 0.02
    assert abs(w32["gmacs"] - 45.7) / 45.7 < 0.02
    w48 = build_model("dekr-w48")
    assert abs(count_parameters(w48) - 65.68e6) / 65.68e6 < 0.02


def test_summary_json(capsys):
    assert cli_main(["summary", "tiny", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"preset", "input_size", "params", "gmacs", "gflops"}
    assert out["params"] == count_parameters(build_model("tiny"))
    assert out["gflops"] == pytest.approx(2 * out["gmacs"])


def test_config_validation():
    with pytest.raises(ValueError, match="MFA"):
        ModelConfig(blocks=((4,), (0, 4), (0, 0, 4), (0, 0, 0, 2)), use_mfa=True)
    with pytest.raises(ValueError, match="preset"):
        build_model("no-such-preset")


# ------------------------------------------------------------------ initialisation (DEKR)
def test_dekr_initialisation():
    """DEKR's init_weights (lib/models/hrnet_dekr.py), restated: every nn.Conv2d ~ N(0, 0.001), bias 0;
    every BatchNorm2d weight 1, bias 0; then the adaptive convs' transform_matrix_conv and
    translation_conv (our ``affine``/``translation``) are zero. The deformable conv's own kernel is not
    an nn.Conv2d in DEKR (torchvision DeformConv2d) and keeps its default kaiming_uniform(a=sqrt(5)):
    U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    torch.manual_seed(0)
    model = build_model("tiny", "crowdpose")  # backbone, GRM, MFA, heads, adaptive convs
    own_init = {
        id(c) for m in model.modules() if hasattr(m, "special_init") for c in m.modules() if c is not m
    }
    generic = [m for m in model.modules() if isinstance(m, nn.Conv2d) and id(m) not in own_init]
    weights = torch.cat([m.weight.detach().flatten() for m in generic])
    assert weights.numel() > 1e6
    assert abs(weights.std().item() - 0.001) < 0.00001  # pooled over ~2e6 samples
    assert abs(weights.mean().item()) < 1e-6
    assert weights.abs().max().item() < 0.001 * 7  # Gaussian tail: no kaiming-scale weight anywhere
    for m in generic:
        if m.weight.numel() >= 2000:  # each conv, not only the pool (sample std within ~5%)
            assert abs(m.weight.std().item() - 0.001) < 0.0002, m
        assert m.bias is None or not m.bias.any()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(bool((m.weight == 1).all()) and not m.bias.any() for m in bns)
    adaptive = [m for m in model.modules() if isinstance(m, AdaptiveConv)]
    assert len(adaptive) == PRESETS["tiny"].offset_blocks
    for m in adaptive:
        for conv in (m.affine, m.translation):
            assert not conv.weight.any() and not conv.bias.any()
        bound = 1 / math.sqrt(m.channels * 9)
        assert m.weight.abs().max().item() <= bound
        assert abs(m.weight.std().item() - bound / math.sqrt(3)) < 0.1 * bound


def test_init_keeps_special_init_of_modules():
    """Modules that define special_init() are re-initialised by it after the generic pass."""
    from grmpose.model.init_weights import init_weights

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(64, 64, 1)

        def special_init(self) -> None:
            nn.init.constant_(self.conv.bias, 5.0)  # e.g. a mean-pose bias

    model = nn.Sequential(nn.Conv2d(3, 64, 3), Scaled())
    init_weights(model)
    assert torch.equal(model[1].conv.bias, torch.full((64,), 5.0))
    assert abs(model[1].conv.weight.std().item() - 0.001) < 0.0001  # the generic pass ran first
    assert abs(model[0].weight.std().item() - 0.001) < 0.0001
