"""DEKR's weight initialisation (HRNet/DEKR ``lib/models/hrnet_dekr.py``, ``init_weights``).

The rule, applied to every module of the network:

* every ``nn.Conv2d``: weight ~ N(0, 0.001^2), bias 0;
* every ``nn.BatchNorm2d``: weight 1, bias 0 (running statistics untouched: mean 0, var 1);
* then every module that defines ``special_init()`` re-initialises its own parameters. The adaptive
  convolutions use it to zero their A/t predictors (DEKR zeroes ``transform_matrix_conv`` and
  ``translation_conv`` after the generic pass), so that at the start every tap samples the centre.

Left at PyTorch's default, as in DEKR:

* the adaptive convolution's 3x3 kernel (``AdaptiveConv.weight``, a bare parameter). In DEKR it is
  the weight of torchvision's ``DeformConv2d``, which is not an ``nn.Conv2d``, so DEKR's pass skips it
  and it keeps ``kaiming_uniform_(a=sqrt(5))``, the default ``AdaptiveConv`` also uses;
* ``nn.Linear`` layers (only GRM's squeeze-excitation FC has one; DEKR has none).

With a pretrained backbone (``grmpose.load_pretrained``) the backbone's tensors are overwritten
afterwards and everything else keeps this initialisation, as in DEKR.

From scratch (``grmpose train --init kaiming``). DEKR always starts its backbone from ImageNet
weights, so its N(0, 0.001) rule only ever meets a trained backbone. Without one, ``kaiming_init``
re-draws the hidden convolutions with He's normal rule for ReLU networks, N(0, 2 / fan_out) with
``fan_out = out_channels x kernel area`` (the usual rule for convolutional networks trained from
scratch), so the GRM's convolutions, which have no BatchNorm after them, pass their input on at its
scale instead of shrinking it 1000-fold. The layers that predict the outputs (heatmaps, tags,
offsets) keep the small DEKR draw and the A/t predictors stay zero: the network still starts from
near-zero maps and centre-sampling adaptive convolutions. Measured in
``benchmarks/results/demo_levers.md``.
"""

from __future__ import annotations

import torch
from torch import nn

CONV_STD = 0.001


def init_weights(model: nn.Module) -> nn.Module:
    """Initialise ``model`` in place by DEKR's rule (see the module notes); returns ``model``."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, mean=0.0, std=CONV_STD)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in model.modules():
        special_init = getattr(m, "special_init", None)
        if callable(special_init):
            special_init()
    return model


@torch.no_grad()
def kaiming_init(model: nn.Module, keep: set[nn.Module]) -> nn.Module:
    """Re-draw the weights of every ``nn.Conv2d`` in ``model`` except those in ``keep`` and those that
    are all zero (the adaptive convolutions' A/t predictors) from N(0, 2 / fan_out); biases stay 0.
    Returns ``model``.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m not in keep and bool(m.weight.any()):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model
