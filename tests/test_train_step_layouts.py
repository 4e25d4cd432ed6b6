"""The layout variants of ``benchmarks.train_step_layouts`` compute the same network as the code as it is."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.train_step_layouts import MatmulConv1x1, build, swap_1x1


def test_matmul_conv_equals_conv2d():
    torch.manual_seed(0)
    conv = nn.Conv2d(12, 5, 1)
    x = torch.randn(2, 12, 7, 9)
    torch.testing.assert_close(
        MatmulConv1x1(conv)(x), F.conv2d(x, conv.weight, conv.bias), atol=1e-5, rtol=1e-5
    )
    net = nn.Sequential(
        nn.Conv2d(12, 5, 1), nn.Conv2d(5, 5, 3), nn.Conv2d(5, 4, 1, bias=False), nn.Conv2d(4, 4, 1)
    )
    assert (
        swap_1x1(net, 5) == 2
    )  # the 1x1 convs with at least 5 inputs: 0 and 2, not the 3x3 or the 4-input one
    assert [type(m).__name__ for m in net] == ["MatmulConv1x1", "Conv2d", "MatmulConv1x1", "Conv2d"]


def test_variants_give_the_same_outputs_and_gradients():
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    results = {}
    for variant in ("as_is", "matmul_stride4", "matmul_all", "channels_last"):
        model, _, channels_last = build(variant)
        inp = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        outputs = model(inp)
        sum(o.square().mean() for o in outputs).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[variant] = ([o.detach().contiguous() for o in outputs], grads)
    ref_out, ref_grads = results["as_is"]
    for variant, (outs, grads) in results.items():
        for a, b in zip(outs, ref_out):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3, msg=variant)
        assert grads.keys() == ref_grads.keys(), variant
        for name in ref_grads:
            torch.testing.assert_close(
                grads[name], ref_grads[name], atol=1e-4, rtol=1e-2, msg=f"{variant} {name}"
            )
