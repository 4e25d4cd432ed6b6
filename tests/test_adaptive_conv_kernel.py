"""The fused CPU kernel of the adaptive convolution against the naive loop, the grid_sample path and
finite differences."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from grmpose.model import adaptive_conv_kernel
from grmpose.model.adaptive_conv import AdaptiveConv, grouped_linear, sample_taps
from grmpose.runtime import standard_operators
from tests.test_model import naive_adaptive_conv


@pytest.fixture(autouse=True)
def _kernel_loaded():
    """Tests that call the kernel's functions directly need it loaded (the module loads it on first use)."""
    adaptive_conv_kernel.load()


def test_kernel_builds_here():
    # CI and this machine have a compiler and ninja: a failed build would silently cost the speed
    assert adaptive_conv_kernel.load()


def grid_sample_path(x, transform, weight, groups):
    """The reference implementation: grid_sample taps, then the per-group weight as a matmul."""
    b, gc, h, w = x.shape
    c = gc // groups
    taps = sample_taps(x, transform, groups).reshape(b, groups, c * 9, h * w)
    return grouped_linear(weight.reshape(groups, c, c * 9), taps).reshape(b, gc, h, w)


def random_case(channels, groups, h=6, w=7, batch=2, seed=0, dtype=torch.float64, spread=2.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, groups * channels, h, w, generator=g, dtype=dtype)
    transform = torch.randn(batch, groups, 6, h, w, generator=g, dtype=dtype) * spread
    transform[:, :, 4:] *= 2  # translations reaching past the border
    transform[0, 0, 4, 0, 0] = 1e6  # a tap far outside the map (reads zeros)
    transform[0, 0, 5, 0, 1] = float("-inf")
    weight = torch.randn(groups * channels, channels, 3, 3, generator=g, dtype=dtype)
    return x, transform, weight


@pytest.mark.parametrize("channels", [3, 8, 15])  # 8 and 15 take the kernel's specialised code
def test_forward_matches_naive_loop(channels):
    torch.manual_seed(channels)
    conv = AdaptiveConv(channels=channels, groups=2).double()
    with torch.no_grad():
        conv.affine.weight.normal_(0, 0.3)
        conv.affine.bias.normal_(0, 0.8)
        conv.translation.weight.normal_(0, 0.5)
        conv.translation.bias.normal_(0, 1.5)
    x = torch.randn(1, 2 * channels, 4, 5, dtype=torch.float64)
    transform = conv.transform(x)
    out = adaptive_conv_kernel.adaptive_conv(x, transform, conv.weight, 2)
    torch.testing.assert_close(out, naive_adaptive_conv(conv, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("channels", [3, 8, 15])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("h,w", [(6, 7), (3, 37)])
def test_values_and_gradients_match_grid_sample_path(channels, dtype, h, w):
    x, transform, weight = random_case(channels, groups=3, h=h, w=w, dtype=dtype, seed=channels)
    transform[0, 0, 5, 0, 1] = 40.0  # grid_sample's gradient is undefined at -inf
    # float32: the transform's gradient sums 9 taps x c channels of products; grid_sample rounds otherwise
    tol = {"rtol": 1e-9, "atol": 1e-9} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 5e-4}
    inputs = [t.clone().requires_grad_() for t in (x, transform, weight)]
    ref = grid_sample_path(*inputs, 3)
    grad_out = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, inputs, grad_out)
    inputs = [t.clone().requires_grad_() for t in (x, transform, weight)]
    out = adaptive_conv_kernel.adaptive_conv(*inputs, 3)
    grads = torch.autograd.grad(out, inputs, grad_out)
    torch.testing.assert_close(out, ref, **tol)
    for name, got, want in zip(("input", "transform", "weight"), grads, ref_grads):
        torch.testing.assert_close(got, want, **tol, msg=lambda m, n=name: f"{n}: {m}")


def test_gradients_match_finite_differences():
    x, transform, weight = random_case(4, groups=2, h=4, w=5, batch=1, seed=3, spread=0.7)
    transform[0, 0, 5, 0, 1] = 30.0  # finite differences need finite inputs
    inputs = tuple(t.requires_grad_() for t in (x, transform, weight))
    assert torch.autograd.gradcheck(lambda *t: adaptive_conv_kernel.adaptive_conv(*t, 2), inputs, eps=1e-6, atol=1e-6)


def test_far_taps_read_zero():
    """Every tap far outside the map (or at -inf): the output is exactly zero, gradients too."""
    x = torch.randn(1, 4, 5, 5, requires_grad=True)
    transform = torch.zeros(1, 1, 6, 5, 5)
    transform[:, :, 4] = -1e9
    out = adaptive_conv_kernel.adaptive_conv(x, transform, torch.randn(4, 4, 3, 3), 1)
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_adaptive_conv_module_takes_kernel_on_cpu(monkeypatch):
    conv = AdaptiveConv(channels=8, groups=2)
    with torch.no_grad():
        conv.affine.bias.normal_(0, 0.5)
        conv.translation.bias.normal_(0, 1.0)
    x = torch.randn(2, 16, 8, 8)
    expected = conv(x)  # the kernel
    with adaptive_conv_kernel.disabled():
        torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)  # grid_sample path
    monkeypatch.setenv(adaptive_conv_kernel.ENV_SWITCH, "0")
    assert not adaptive_conv_kernel.usable(x)
    monkeypatch.delenv(adaptive_conv_kernel.ENV_SWITCH)

    def no_grid_sample(*args, **kwargs):
        raise AssertionError("grid_sample called on the kernel's path")

    monkeypatch.setattr(F, "grid_sample", no_grid_sample)
    torch.testing.assert_close(conv(x), expected)
    with torch.no_grad():
        conv.bias = torch.nn.Parameter(torch.randn(16))  # as grmpose.fuse sets it
    torch.testing.assert_close(conv(x), expected + conv.bias[:, None, None])


def test_kernel_not_used_for_other_dtypes_or_when_disabled():
    x = torch.randn(1, 4, 3, 3)
    assert adaptive_conv_kernel.usable(x)
    assert not adaptive_conv_kernel.usable(x.bfloat16())
    assert not adaptive_conv_kernel.usable(x, x.double())
    with adaptive_conv_kernel.disabled():
        assert not adaptive_conv_kernel.usable(x)
    with standard_operators():  # FLOP counting: the grid_sample path's standard operators
        assert not adaptive_conv_kernel.usable(x)
    assert adaptive_conv_kernel.usable(x)


@pytest.mark.parametrize("channels", [3, 8, 15])
@pytest.mark.parametrize("h,w", [(5, 6), (2, 37)])
def test_transform_matches_grouped_conv2d(channels, h, w):
    """The kernel's A/t predictor against torch's grouped 3x3 convolution, values and gradients."""
    g = torch.Generator().manual_seed(channels)
    groups = 3
    x = torch.randn(2, groups * channels, h, w, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(groups * 6, channels, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(groups * 6, generator=g, dtype=torch.float64, requires_grad=True)
    ref = F.conv2d(x, weight, bias, padding=1, groups=groups).reshape(2, groups, 6, h, w)
    grad_out = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, (x, weight, bias), grad_out)
    out = adaptive_conv_kernel.transform(adaptive_conv_kernel.group_channels_last(x, groups), weight, bias)
    grads = torch.autograd.grad(out, (x, weight, bias), grad_out)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_module_gradients_match_grid_sample_path():
    """AdaptiveConv as training sees it: the kernel path's parameter gradients equal the reference path's."""
    torch.manual_seed(5)
    conv = AdaptiveConv(channels=8, groups=3).double()
    with torch.no_grad():
        for p in (conv.affine.weight, conv.translation.weight):
            p.normal_(0, 0.2)
        conv.affine.bias.normal_(0, 0.5)
        conv.translation.bias.normal_(0, 1.0)
    x = torch.randn(2, 24, 7, 6, dtype=torch.float64, requires_grad=True)
    params = [x, *conv.parameters()]
    grads = torch.autograd.grad(conv(x).square().sum(), params)
    with adaptive_conv_kernel.disabled():
        ref = torch.autograd.grad(conv(x).square().sum(), params)
    for got, want in zip(grads, ref):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_ninja_of_the_environment_is_found_without_activating_it(monkeypatch):
    """``.venv/bin/grmpose`` run without activating the venv: its ninja (pip's) goes on PATH."""
    import sysconfig
    from pathlib import Path

    scripts = sysconfig.get_path("scripts")
    assert Path(scripts, "ninja").exists(), "ninja is a dependency: pip puts it beside python"
    monkeypatch.setenv("PATH", "/nonexistent")
    adaptive_conv_kernel._put_ninja_on_path()
    assert os.environ["PATH"].split(os.pathsep)[0] == scripts


def test_build_names_the_vector_level_it_uses(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert adaptive_conv_kernel.vector_flags() == ("avx2", ["-mavx2", "-mfma"])
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    assert adaptive_conv_kernel.vector_flags() == ("default", [])
