"""Speed and memory of the networks on this machine's CPU (the library side of ``grmpose bench``).

What is measured, per preset and backend, each in a fresh Python process (so that its peak
resident memory belongs to that one model and backend, and no backend warms another's caches):

* ``eager``: PyTorch, ``inference_mode``, BatchNorm folded (``grmpose.fuse``); contiguous and
  channels-last layouts and the unfolded model are timed interleaved, the faster folded layout is
  the row's figure;
* ``compile``: ``torch.compile`` (inductor) of the folded model; a failure or timeout is recorded
  as ``n/a`` with its reason;
* ``onnxruntime``: the folded model exported by ``grmpose.export.export_onnx`` (dynamo exporter),
  run with ``ORT_ENABLE_ALL`` graph optimisation and ``intra_op_num_threads = threads``.

Latency is per image at batch 1: the median (and the minimum) of ``repeats`` timed calls after
``warmup`` untimed ones. Peak memory is the child process's ``VmHWM`` (high-water resident set,
model build + export + all runs included) next to its resident set right after ``import torch``.
The machine's own fp32 speed is measured in the same run (``cpu_gflops``: sgemm and a 3x3
convolution) so achieved forward GFLOP/s can be stated as a share of it.

When the optional ``ultralytics`` package is installed, ``bench_yolo`` times YOLO11-pose networks
built from Ultralytics' own YAML files (random weights, speed only) the same way, eager and ONNX
Runtime, for a side-by-side figure with the grmpose rows of the same run.

Timings on a shared machine are noisy: compare rows of one run (ratios), not runs.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from grmpose.model import adaptive_conv_kernel
from grmpose.runtime import keep_freed_memory_for_inference

log = logging.getLogger(__name__)

__all__ = [
    "BACKENDS",
    "add_ratios",
    "bench_models",
    "bench_yolo",
    "cpu_gflops",
    "measure_backend",
    "measure_yolo",
    "peak_rss_mib",
    "profile_eager",
    "rss_mib",
    "run_child",
    "time_calls",
    "ultralytics_installed",
    "YOLO_MODELS",
]

BACKENDS = ("eager", "compile", "onnxruntime")
REFERENCE = "dekr-w32"
YOLO_MODELS = ("yolo11n-pose", "yolo11s-pose", "yolo11m-pose")
YOLO_MISSING = "ultralytics not installed (optional: pip install ultralytics torch==2.13.0)"
_RESULT_MARK = "@@BENCH_RESULT@@ "
REPO_ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------ measuring
def peak_rss_mib() -> float:
    """High-water resident set of this process, MiB: ``VmHWM`` of ``/proc/self/status``.

    Not ``ru_maxrss``: Linux carries a parent's high-water mark through ``fork`` + ``exec`` into the
    child's ``ru_maxrss`` (and so into ``RUSAGE_CHILDREN``), so a child started by a big parent
    would report the parent's size. ``VmHWM`` belongs to the child's own address space. Falls back
    to ``ru_maxrss`` where ``/proc`` is missing.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mib() -> float:
    """Current resident set of this process, MiB (from ``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def time_calls(fn: Callable[[], object], repeats: int, warmup: int) -> dict[str, float | list[float]]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed.

    Returns:
        ``{"median_ms", "min_ms", "times_ms"}``.
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "times_ms": times}


def _interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict[str, dict]:
    """``time_calls`` for several variants, alternating them call by call (fair under drifting load)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(max(1, repeats)):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {
        name: {"median_ms": statistics.median(t), "min_ms": min(t), "times_ms": t}
        for name, t in times.items()
    }


def cpu_gflops(threads: int = 2, size: int = 2048, repeats: int = 5) -> dict[str, float]:
    """This CPU's fp32 speed with ``threads`` threads: best of ``repeats``.

    * ``matmul_gflops``: ``size``×``size`` sgemm (2·size³ FLOPs);
    * ``conv3x3_gflops``: a 3x3 convolution, 64 -> 64 channels on a 128×128 map (a stride-4 HRNet
      layer of a 512 input; 2 FLOPs per multiply-add), oneDNN through PyTorch.
    """
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    mm = time_calls(lambda: torch.mm(a, b), repeats, 2)
    x = torch.randn(1, 64, 128, 128)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False).eval()
    conv_flops = 2.0 * 64 * 64 * 9 * 128 * 128
    with torch.inference_mode():
        cv = time_calls(lambda: conv(x), repeats * 4, 3)
    return {
        "threads": threads,
        "matmul_gflops": 2.0 * size**3 / (mm["min_ms"] / 1e3) / 1e9,
        "matmul_gflops_median": 2.0 * size**3 / (mm["median_ms"] / 1e3) / 1e9,
        "conv3x3_gflops": conv_flops / (cv["min_ms"] / 1e3) / 1e9,
        "conv3x3_gflops_median": conv_flops / (cv["median_ms"] / 1e3) / 1e9,
    }


# ------------------------------------------------------------------------------------ one backend
def _folded_model(preset: str, spec: str):
    from grmpose.fuse import fuse_model
    from grmpose.model.net import build_model

    torch.manual_seed(0)
    model = build_model(preset, spec).eval()
    return model, fuse_model(model)


def _measure_eager(preset: str, spec: str, size: int, repeats: int, warmup: int) -> dict:
    model, fused = _folded_model(preset, spec)
    x = torch.randn(1, 3, size, size)
    fused_cl = fuse_model_channels_last(fused)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        variants = {
            "folded": lambda: fused(x),
            "folded_channels_last": lambda: fused_cl(x_cl),
            "unfolded": lambda: model(x),
        }
        times = _interleaved(variants, repeats, warmup)
        ref, out = model(x), fused_cl(x_cl)
    err = max(float((a - b).abs().max()) for a, b in zip(ref, out))
    best = min(("folded", "folded_channels_last"), key=lambda v: times[v]["median_ms"])
    return {**times[best], "variant": best, "variants": times, "max_abs_diff_folded": err}


def fuse_model_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` with its weights in channels-last layout."""
    import copy

    return copy.deepcopy(model).to(memory_format=torch.channels_last)


def _measure_compile(preset: str, spec: str, size: int, repeats: int, warmup: int) -> dict:
    _, fused = _folded_model(preset, spec)
    x = torch.randn(1, 3, size, size)
    try:
        compiled = torch.compile(fused)
        t0 = time.perf_counter()
        with torch.inference_mode():
            compiled(x)
            compile_s = time.perf_counter() - t0
            times = time_calls(lambda: compiled(x), repeats, max(0, warmup - 1))
    except Exception as err:  # inductor raises many exception types; the reason is the result
        return {"status": "n/a", "reason": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
    return {**times, "compile_s": compile_s}


def _ort_session(path: Path, threads: int):
    """An ONNX Runtime CPU session with full graph optimisation and ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _measure_onnxruntime(preset: str, spec: str, size: int, threads: int, repeats: int, warmup: int) -> dict:
    try:
        import onnxruntime  # noqa: F401  (availability; the session is made by _ort_session)
    except ImportError:
        return {"status": "n/a", "reason": "onnxruntime not installed"}
    from grmpose.export import export_onnx

    _, fused = _folded_model(preset, spec)
    with tempfile.TemporaryDirectory(prefix="grmpose-bench-") as tmp:
        path = Path(tmp) / f"{preset}.onnx"
        t0 = time.perf_counter()
        try:
            export_onnx(fused, path, input_size=size)
        except Exception as err:  # the exporter raises many exception types
            return {"status": "n/a", "reason": f"export failed: {type(err).__name__}: {str(err)[:200]}"}
        export_s = time.perf_counter() - t0
        del fused
        session = _ort_session(path, threads)
        x = torch.randn(1, 3, size, size).numpy()
        name = session.get_inputs()[0].name
        times = time_calls(lambda: session.run(None, {name: x}), repeats, warmup)
    return {**times, "export_s": export_s, "opset": 18}


def measure_backend(
    preset: str,
    backend: str,
    input_size: int | None = None,
    threads: int = 2,
    repeats: int = 5,
    warmup: int = 2,
    spec: str = "coco",
) -> dict:
    """Latency and memory of one preset on one backend, in this process (see ``run_child``).

    Returns:
        ``{"preset", "backend", "input_size", "threads", "status": "ok" | "n/a", "median_ms",
        "min_ms", "times_ms", "peak_rss_mib", "base_rss_mib", ...}``; ``n/a`` rows carry ``reason``.
    """
    from grmpose.config import get_preset

    torch.set_num_threads(threads)
    size = input_size or get_preset(preset).input_size
    base = rss_mib()
    if backend in ("eager", "compile"):
        keep_freed_memory_for_inference()  # as a CPU PoseEstimator does
    if backend == "eager":
        result = _measure_eager(preset, spec, size, repeats, warmup)
    elif backend == "compile":
        result = _measure_compile(preset, spec, size, repeats, warmup)
    elif backend == "onnxruntime":
        result = _measure_onnxruntime(preset, spec, size, threads, repeats, warmup)
    else:
        raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    result.setdefault("status", "ok")
    return {
        "preset": preset,
        "backend": backend,
        "input_size": size,
        "threads": threads,
        **result,
        "base_rss_mib": base,
        "peak_rss_mib": peak_rss_mib(),
    }


def profile_eager(
    preset: str, input_size: int | None = None, threads: int = 2, top: int = 12, fold: bool = True
) -> dict:
    """``torch.profiler`` self-CPU time by operator for one eager forward (after two warm-ups).

    Returns:
        ``{"preset", "input_size", "total_ms", "ops": [{"name", "self_ms", "share", "calls"}]}``.
    """
    from torch.profiler import ProfilerActivity, profile

    from grmpose.config import get_preset

    torch.set_num_threads(threads)
    size = input_size or get_preset(preset).input_size
    model, fused = _folded_model(preset, "coco")
    net = fused if fold else model
    x = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        net(x)
        net(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            net(x)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events) / 1e3
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    ops = [
        {
            "name": e.key,
            "self_ms": e.self_cpu_time_total / 1e3,
            "share": e.self_cpu_time_total / 1e3 / total,
            "calls": e.count,
        }
        for e in events[:top]
    ]
    return {"preset": preset, "input_size": size, "folded": fold, "total_ms": total, "ops": ops}


# ------------------------------------------------------------------------------------ YOLO-pose
class _FirstOutput(torch.nn.Module):
    """Wrap a network so that it returns its first output tensor only (for timing and export)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out[0] if isinstance(out, (list, tuple)) else out


def ultralytics_installed() -> bool:
    """Whether the optional ``ultralytics`` package is importable, found without importing it: importing
    it patches ``PIL.Image.open`` for the whole process, so only the benchmark's child processes do."""
    try:
        return importlib.util.find_spec("ultralytics") is not None
    except ValueError:  # sys.modules["ultralytics"] is None: its import is blocked
        return False


def measure_yolo(
    model: str, backend: str, input_size: int = 640, threads: int = 2, repeats: int = 5, warmup: int = 2
) -> dict:
    """Latency and memory of an Ultralytics YOLO-pose network, in this process (see ``run_child``).

    The network is built from the package's own YAML (``model + ".yaml"``, random weights, nothing
    downloaded), its Conv+BN pairs fused by Ultralytics' ``fuse()``; speed only. ``eager``: PyTorch
    ``inference_mode``; ``onnxruntime``: exported with a static 1 x 3 x S x S input (dynamo exporter,
    opset 18) and run like the grmpose rows. An ``n/a`` row says why (e.g. ultralytics missing).
    """
    row = {"preset": model, "backend": backend, "input_size": input_size, "threads": threads}
    try:
        from ultralytics import YOLO
    except ImportError:
        return {**row, "status": "n/a", "reason": YOLO_MISSING}
    torch.set_num_threads(threads)
    base = rss_mib()
    torch.manual_seed(0)
    yolo = YOLO(f"{model}.yaml").model.eval()
    params = sum(p.numel() for p in yolo.parameters())
    net = _FirstOutput(yolo.fuse(verbose=False) if hasattr(yolo, "fuse") else yolo).eval()
    x = torch.randn(1, 3, input_size, input_size)
    if backend == "eager":
        with torch.inference_mode():
            result = time_calls(lambda: net(x), repeats, warmup)
    elif backend == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401  (availability; the session is made by _ort_session)
        except ImportError:
            return {**row, "status": "n/a", "reason": "onnxruntime not installed"}
        with tempfile.TemporaryDirectory(prefix="grmpose-bench-") as tmp:
            path = Path(tmp) / f"{model}.onnx"
            t0 = time.perf_counter()
            try:
                with adaptive_conv_kernel.disabled():  # ONNX sees the grid_sample path
                    torch.onnx.export(net, (x,), dynamo=True, opset_version=18, verbose=False).save(str(path))
            except Exception as err:  # the exporter raises many exception types
                return {
                    **row,
                    "status": "n/a",
                    "reason": f"export failed: {type(err).__name__}: {str(err)[:200]}",
                }
            export_s = time.perf_counter() - t0
            session = _ort_session(path, threads)
            name = session.get_inputs()[0].name
            feed = {name: x.numpy()}
            result = {**time_calls(lambda: session.run(None, feed), repeats, warmup), "export_s": export_s}
    else:
        raise ValueError(f"unknown backend {backend!r} for YOLO: choose eager or onnxruntime")
    return {**row, "status": "ok", **result, "params": params, "base_rss_mib": base,
            "peak_rss_mib": peak_rss_mib()}  # fmt: skip


def bench_yolo(
    models: Sequence[str] = YOLO_MODELS,
    input_size: int = 640,
    threads: int = 2,
    repeats: int = 5,
    warmup: int = 2,
    backends: Sequence[str] = ("eager", "onnxruntime"),
    timeout: float = 600.0,
) -> list[dict]:
    """``measure_yolo`` for each model and backend, each in a fresh process; one ``n/a`` row when
    ultralytics is not installed (it is optional)."""
    if not ultralytics_installed():
        return [{"preset": "yolo11-pose", "backend": "-", "status": "n/a", "reason": YOLO_MISSING}]
    rows = []
    for model in models:
        for backend in backends:
            log.info("bench %s on %s", model, backend)
            kwargs = dict(model=model, backend=backend, input_size=input_size, threads=threads, repeats=repeats,
                          warmup=warmup)  # fmt: skip
            row = run_child("grmpose.bench", "measure_yolo", kwargs, threads, timeout)
            row.setdefault("preset", model)
            row.setdefault("backend", backend)
            row.setdefault("input_size", input_size)
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------------ child processes
def run_child(module: str, function: str, kwargs: dict, threads: int = 2, timeout: float = 600.0) -> dict:
    """Call ``module.function(**kwargs)`` in a fresh Python process; return its JSON-able result.

    The child gets ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` = ``threads`` and the repository root on
    ``PYTHONPATH`` (so ``benchmarks.*`` imports). Tasks report their own peak (``peak_rss_mib``).

    Returns:
        the function's dict, or ``{"status": "n/a", "reason": ...}`` when the child fails or times out.
    """
    code = (
        "import json, sys\n"
        f"from {module} import {function} as task\n"
        "result = task(**json.loads(sys.argv[1]))\n"
        f"print({_RESULT_MARK!r} + json.dumps(result), flush=True)\n"
    )
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, json.dumps(kwargs)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=str(REPO_ROOT),
        )
    except subprocess.TimeoutExpired:
        return {"status": "n/a", "reason": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_RESULT_MARK):
            return json.loads(line[len(_RESULT_MARK) :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"status": "n/a", "reason": f"child exited with {proc.returncode}: {tail[0][:300]}"}


def add_ratios(rows: list[dict], reference: str = REFERENCE, keys: Sequence[str] = ("median_ms",)) -> None:
    """Add ``<key>_vs_<reference>`` ratios to each ok row, against the reference row of the same backend."""
    refs = {r["backend"]: r for r in rows if r["preset"] == reference and r.get("status") == "ok"}
    for row in rows:
        ref = refs.get(row["backend"])
        for key in (*keys, "gmacs", "params", "peak_rss_mib"):
            if ref is None or row.get("status") != "ok" or not ref.get(key) or row.get(key) is None:
                continue
            row[f"{key}_vs_{reference}"] = row[key] / ref[key]


def bench_models(
    presets: Sequence[str],
    input_size: int | None = None,
    threads: int = 2,
    repeats: int = 5,
    warmup: int = 2,
    backends: Sequence[str] = BACKENDS,
    spec: str = "coco",
    timeout: float = 600.0,
    matmul_gflops: float | None = None,
) -> list[dict]:
    """Params, GMACs, latency and peak memory of each preset on each backend (one child process each).

    Args:
        presets: preset names (``grmpose.config.PRESETS``).
        input_size: square input side; ``None`` = each preset's own (512 for W32, 640 for W48).
        threads: intra-op threads (PyTorch and ONNX Runtime).
        repeats, warmup: timed and untimed calls per measurement.
        backends: a subset of ``BACKENDS``.
        timeout: seconds per child (a ``torch.compile`` that takes longer becomes ``n/a``).
        matmul_gflops: this CPU's sgemm speed (``cpu_gflops``) for the efficiency column; measured
            here when ``None``.

    Returns:
        one dict per (preset, backend): ``measure_backend``'s fields plus ``params``, ``gmacs``,
        ``gflops``, ``achieved_gflops``, ``matmul_share`` and ``*_vs_dekr-w32`` ratios.
    """
    from grmpose.flops import summarize

    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown backends {unknown}: choose from {', '.join(BACKENDS)}")
    if matmul_gflops is None:
        matmul_gflops = cpu_gflops(threads)["matmul_gflops"]
    rows: list[dict] = []
    for preset in presets:
        counts = summarize(preset, spec, input_size)
        for backend in backends:
            log.info("bench %s on %s", preset, backend)
            kwargs = dict(preset=preset, backend=backend, input_size=counts["input_size"], threads=threads,
                          repeats=repeats, warmup=warmup, spec=spec)  # fmt: skip
            row = run_child("grmpose.bench", "measure_backend", kwargs, threads, timeout)
            row.update({"preset": preset, "backend": backend, "input_size": counts["input_size"]})
            row.update({k: counts[k] for k in ("params", "gmacs", "gflops", "sampling_gmacs")})
            if row.get("status") == "ok":
                row["achieved_gflops"] = counts["gflops"] / (row["median_ms"] / 1e3)
                row["achieved_gflops_best"] = counts["gflops"] / (row["min_ms"] / 1e3)
                row["matmul_share"] = row["achieved_gflops"] / matmul_gflops
            rows.append(row)
    add_ratios(rows, keys=("median_ms", "min_ms"))
    return rows
