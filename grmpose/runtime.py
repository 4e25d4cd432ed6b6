"""Process-level plumbing of a training run: torchrun / DDP set-up, stop signals, RNG state.

Kept apart from the loop in ``grmpose/train.py``; nothing here knows about models or data.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_name: str) -> tuple[DistInfo, torch.device]:
    """Initialise the process group when launched by torchrun; choose the device honestly."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    if device_name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' asked for, but CUDA is not available on this machine")
        device = torch.device("cuda", local_rank if world > 1 else (torch.device(device_name).index or 0))
        torch.cuda.set_device(device)
    else:
        device = torch.device(device_name)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world, local_rank), device


# ---------------------------------------------------------------------------- stop signals
class StopSignals:
    """SIGTERM / SIGINT set ``received`` (the loop stops after the current step); a second one
    raises KeyboardInterrupt at once. Installed only in the main thread; restored on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopped without a checkpoint")
        self.received = signum

    def __exit__(self, *exc) -> bool:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers leave SIGTERM/SIGINT to the main process, which ends them after its checkpoint.

    (torchrun signals each rank's whole process group, and a terminal's Ctrl-C reaches every
    process: a worker killed mid-batch would make the main process fail instead of stopping cleanly.)
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# ---------------------------------------------------------------------------- RNG state
def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


#: set to 0 to keep glibc's default (freed memory returned to the system) in ``PoseEstimator``
INFERENCE_MEMORY_SWITCH = "GRMPOSE_KEEP_FREED_MEMORY"


def keep_freed_memory_for_inference() -> bool:
    """``keep_freed_memory()`` unless ``GRMPOSE_KEEP_FREED_MEMORY`` is 0/false/no/off: what a CPU
    ``PoseEstimator`` (torch backend) does when it is built. Inference pays the same toll as training:
    grmpose-w32 at 512 px, BatchNorm folded, 2 threads, one process each way: 500 against 770-850 ms
    per image at batch 8, 570 against 600-730 at batch 1 (one-off runs here, 2026-12-08)."""
    if os.environ.get(INFERENCE_MEMORY_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return keep_freed_memory()


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of returning it to the kernel.

    By default glibc serves every allocation above a threshold (at most 32 MiB) with its own
    ``mmap`` and unmaps it on ``free``; a CPU training step allocates and frees the same
    tens-to-hundreds-of-MiB activation tensors every step, so every step pays the kernel again to
    map and zero fresh pages. Measured with ``grmpose train``, ``tiny`` at 256 px, batch 8, 30 steps
    (``benchmarks/results/train_throughput.md`` as committed in 4e2a65c, whose run still had a
    malloc-off case): 23.8 s of system time without this setting, 2.4 s with it, and 4.64 -> 6.29
    images/s (1.36x); a bare forward/backward loop went twice as fast. With ``mmap`` off for the
    heap and trimming off, freed blocks stay in the process and the next step reuses them; the price is that the
    process's memory stays at its peak until it exits. PyTorch's CPU tuning guide reaches the same
    end with jemalloc or tcmalloc preloaded; this needs no extra library.

    Returns True when the setting was applied (Linux with glibc), False elsewhere (nothing changes).
    """
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)) and bool(libc.mallopt(_M_MMAP_MAX, 0))


def capturing_graph() -> bool:
    """Whether torch is capturing a graph instead of running eagerly: the ONNX export, ``torch.compile`` or
    ``torch.export`` (code that must only see standard operators, or concrete shapes, checks this)."""
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)()
    return torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling() or exporting


_standard = {"forced": False}


@contextlib.contextmanager
def standard_operators() -> Iterator[None]:
    """Inside this block the network runs the standard operators its equations name (``grid_sample`` for
    the adaptive convolution, ``F.interpolate``, the GRM's attention through autograd) instead of its
    eager fast paths: for tools that count operators (``grmpose.flops``)."""
    before = _standard["forced"]
    _standard["forced"] = True
    try:
        yield
    finally:
        _standard["forced"] = before


def standard_operators_only() -> bool:
    """Whether the fast paths must step aside: inside ``standard_operators()``, or while a graph is
    captured or traced (ONNX export, ``torch.compile``, ``torch.jit.trace``)."""
    return _standard["forced"] or capturing_graph() or torch.jit.is_tracing()
