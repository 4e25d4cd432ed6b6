"""Integer-factor upsampling by matrix products against PyTorch's interpolation kernels and a naive loop."""

import pytest
import torch
import torch.nn.functional as F

from grmpose.model.upsample import interpolation_matrix, upsample


def _bilinear_loop(x: torch.Tensor, f: int) -> torch.Tensor:
    """align_corners=False bilinear upsampling written out pixel by pixel (float64)."""
    b, c, h, w = x.shape
    out = torch.zeros(b, c, h * f, w * f, dtype=torch.float64)

    def taps(i: int, n: int) -> tuple[int, int, float]:
        s = max((i + 0.5) / f - 0.5, 0.0)
        lo = min(int(s), n - 1)
        return lo, min(lo + 1, n - 1), s - lo

    for i in range(h * f):
        y0, y1, ly = taps(i, h)
        for j in range(w * f):
            x0, x1, lx = taps(j, w)
            out[:, :, i, j] = (
                (1 - ly) * (1 - lx) * x[:, :, y0, x0] + (1 - ly) * lx * x[:, :, y0, x1]
                + ly * (1 - lx) * x[:, :, y1, x0] + ly * lx * x[:, :, y1, x1]
            )  # fmt: skip
    return out


@pytest.mark.parametrize(
    "shape,factor", [((2, 3, 4, 5), 2), ((1, 2, 3, 3), 8), ((2, 1, 5, 2), 4), ((1, 1, 2, 3), 3)]
)
def test_bilinear_equals_the_loop_and_interpolate(shape, factor):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64)
    got = upsample(x, factor, "bilinear")
    assert torch.allclose(got, _bilinear_loop(x, factor), atol=1e-12)
    ref = F.interpolate(x, scale_factor=float(factor), mode="bilinear", align_corners=False)
    assert torch.allclose(got, ref, atol=1e-12)


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("factor", [2, 4, 8])
def test_values_and_gradients_equal_interpolate(mode, factor):
    torch.manual_seed(1)
    x = torch.randn(3, 4, 6, 5, requires_grad=True)
    grad = torch.randn(3, 4, 6 * factor, 5 * factor)
    corners = {"align_corners": False} if mode == "bilinear" else {}
    ref = F.interpolate(x, scale_factor=float(factor), mode=mode, **corners)
    (ref_grad,) = torch.autograd.grad(ref, x, grad)
    got = upsample(x, factor, mode)
    (got_grad,) = torch.autograd.grad(got, x, grad)
    assert torch.allclose(got, ref, atol=1e-6)
    assert torch.allclose(got_grad, ref_grad, atol=1e-5)


def test_nearest_copies_each_value_over_its_block():
    x = torch.arange(6.0).reshape(1, 1, 2, 3)
    got = upsample(x, 2, "nearest")[0, 0]
    assert got.tolist() == [[0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2], [3, 3, 4, 4, 5, 5], [3, 3, 4, 4, 5, 5]]


def test_matrix_rows_are_convex_weights_and_bad_mode_is_refused():
    for mode in ("nearest", "bilinear"):
        m = interpolation_matrix(7, 4, mode, torch.float64, torch.device("cpu"))
        assert m.shape == (28, 7) and bool((m >= 0).all())
        assert torch.allclose(m.sum(1), torch.ones(28, dtype=torch.float64))
    with pytest.raises(ValueError, match="mode must be one of"):
        interpolation_matrix(4, 2, "bicubic", torch.float32, torch.device("cpu"))


def test_factor_one_is_the_input():
    x = torch.randn(1, 2, 3, 4)
    assert upsample(x, 1, "bilinear") is x


def test_standard_operators_take_interpolate(monkeypatch):
    import grmpose.model.upsample as module
    from grmpose.runtime import standard_operators

    calls = []
    original = module.F.interpolate
    monkeypatch.setattr(module.F, "interpolate", lambda *a, **k: calls.append(k["mode"]) or original(*a, **k))
    x = torch.randn(1, 2, 3, 4)
    upsample(x, 2, "bilinear")
    assert calls == []
    with standard_operators():
        upsample(x, 2, "bilinear")
        upsample(x, 4, "nearest")
    assert calls == ["bilinear", "nearest"]
