"""The fused CPU kernel of the adaptive convolution (``adaptive_conv_cpu.cpp``), compiled on first use.

``grid_sample`` followed by a batched matmul writes the 9 taps of every channel as a
B x (G*c*9) x H x W tensor and reads it back, forward and backward; on the CPU those two ops were
about 44 % of a ``tiny`` training step. The kernel computes each pixel's 9c samples in a local
buffer and applies the group's weight at once, and its backward pass returns the gradients of the
input, of the A/t maps and of the weight in one sweep. It is exact (the same bilinear rule, zero
outside the map; tests/test_adaptive_conv_kernel.py checks it against the naive loop and against
the ``grid_sample`` path, values and gradients).

``AdaptiveConv`` uses it when every condition holds: CPU float32/float64 tensors, no graph being
captured or operators counted (``grmpose.runtime.standard_operators_only``: ONNX export,
``torch.compile``, tracing, ``grmpose.flops``), ``GRMPOSE_ADAPTIVE_KERNEL`` not set to 0, and the
kernel compiled. The first use compiles it with the machine's C++ compiler through
``torch.utils.cpp_extension`` (needs ``ninja``, a dependency; about 20 s, then cached in
torch's extension folder, ``TORCH_EXTENSIONS_DIR``). If the build fails, a warning says why once and
the ``grid_sample`` path runs instead: same results, slower. CUDA always takes the
``grid_sample`` path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import torch

from grmpose.runtime import standard_operators_only

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("adaptive_conv_cpu.cpp")
#: set to 0 to always take the grid_sample path
ENV_SWITCH = "GRMPOSE_ADAPTIVE_KERNEL"

_state: dict[str, bool] = {"disabled": False}


def enabled() -> bool:
    """The switch: ``GRMPOSE_ADAPTIVE_KERNEL`` unset or anything but 0/false/no/off, and not inside
    ``disabled()``."""
    if _state["disabled"]:
        return False
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Take the ``grid_sample`` path inside this block (ONNX export, FLOP counting: tools that must
    see standard operators)."""
    before = _state["disabled"]
    _state["disabled"] = True
    try:
        yield
    finally:
        _state["disabled"] = before


def load() -> bool:
    """Compile (or load the cached build of) the kernel once per process; ``True`` when it can run."""
    if "loaded" not in _state:
        try:
            from torch.utils import cpp_extension

            _put_ninja_on_path()

            capability, flags = vector_flags()
            cpp_extension.load(
                name=f"grmpose_adaptive_conv_{capability}",
                sources=[str(SOURCE)],
                extra_cflags=["-O3", *flags, "-fopenmp"],
                extra_ldflags=["-fopenmp"],
                is_python_module=False,
                verbose=False,
            )
            _state["loaded"] = hasattr(torch.ops.grmpose, "adaptive_conv_forward")
        except Exception as exc:  # no compiler, no ninja, a failed build: the grid_sample path still works
            log.warning(
                "the fused adaptive-convolution kernel could not be built (%s); using grid_sample", exc
            )
            _state["loaded"] = False
    return _state["loaded"]


#: compiler flags per vector-instruction level that torch reports for this CPU
VECTOR_FLAGS = {
    "avx2": ["-mavx2", "-mfma"],
    "avx512": ["-mavx2", "-mfma", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq"],
}


def vector_flags() -> tuple[str, list[str]]:
    """This CPU's vector level (torch's ``get_cpu_capability``) and the flags to build for it.

    Not ``-march=native``: the build is cached in the user's home folder, which machines of a cluster
    may share, so it names the level it was built for and uses only that level's instructions."""
    capability = torch.backends.cpu.get_cpu_capability().lower()
    flags = VECTOR_FLAGS.get(capability)
    return (capability, flags) if flags is not None else ("default", [])


def _put_ninja_on_path() -> None:
    """torch runs ``ninja`` from PATH; the pip package installs it beside this Python's scripts,
    which is not on PATH when a virtual environment's programs are run without activating it."""
    scripts = sysconfig.get_path("scripts")
    if shutil.which("ninja") is None and scripts and Path(scripts, "ninja").exists():
        os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", "")


def usable(*tensors: torch.Tensor) -> bool:
    """Whether ``adaptive_conv`` can run on these tensors here and now (see the module's docstring)."""
    if not enabled() or standard_operators_only():
        return False
    dtype = tensors[0].dtype
    if dtype not in (torch.float32, torch.float64):
        return False
    if any(t.device.type != "cpu" or t.dtype != dtype for t in tensors):
        return False
    return load()


class _AdaptiveConvFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, transform: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, transform, weight)
        return torch.ops.grmpose.adaptive_conv_forward(x, transform, weight)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, transform, weight = ctx.saved_tensors
        grad_x, grad_t, grad_w = torch.ops.grmpose.adaptive_conv_backward(grad_out, x, transform, weight)
        return grad_x, grad_t, grad_w


class _TransformFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return torch.ops.grmpose.adaptive_transform_forward(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        return torch.ops.grmpose.adaptive_transform_backward(grad_out, x, weight)


def group_channels_last(x: torch.Tensor, groups: int) -> torch.Tensor:
    """B x (G*c) x H x W -> B x G x H x W x c, the kernel's input layout."""
    b, gc, h, w = x.shape
    return x.reshape(b, groups, gc // groups, h, w).permute(0, 1, 3, 4, 2).contiguous()


def taps_last(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """A grouped 3x3 conv weight (G*O) x c x 3 x 3 -> G x O x 9c, (tap k, input channel i) at k * c + i."""
    go, c = weight.shape[:2]
    return weight.reshape(groups, go // groups, c, 9).permute(0, 1, 3, 2).reshape(groups, go // groups, 9 * c)


def transform(x5: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The A/t predictor (a grouped 3x3 conv, padding 1) by the kernel.

    Args:
        x5: B x G x H x W x c (``group_channels_last``).
        weight: (G*6) x c x 3 x 3, per group the rows a11, a12, a21, a22, tx, ty.  bias: G*6.
    Returns:
        B x G x 6 x H x W.
    """
    g = x5.shape[1]
    return _TransformFunction.apply(x5, taps_last(weight, g).contiguous(), bias.reshape(g, 6).contiguous())


def adaptive_conv_x5(x5: torch.Tensor, transform: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``adaptive_conv`` on an input already in the kernel's layout; B x (G*c) x H x W out."""
    b, g, h, w, c = x5.shape
    out = _AdaptiveConvFunction.apply(x5, transform.contiguous(), taps_last(weight, g).contiguous())
    return out.reshape(b, g * c, h, w)


def adaptive_conv(
    x: torch.Tensor, transform: torch.Tensor, weight: torch.Tensor, groups: int
) -> torch.Tensor:
    """The grouped adaptive convolution by the fused kernel (call ``usable`` first).

    Args:
        x: B x (G*c) x H x W input.
        transform: B x G x 6 x H x W, per group (a11, a12, a21, a22, tx, ty) in pixels.
        weight: (G*c) x c x 3 x 3, a grouped 3x3 convolution's weight (tap k = 3 * ky + kx).
        groups: G.
    Returns:
        B x (G*c) x H x W.
    """
    return adaptive_conv_x5(group_channels_last(x, groups), transform, weight)
