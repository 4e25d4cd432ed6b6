"""Where the time goes, by kind of operation: a training step of ``tiny`` and a forward of the w32 models.

``torch.profiler`` records the self CPU time of every operator (time spent in it, not in the operators
it calls), which this benchmark sums into a few kinds (``CATEGORIES``: convolutions forward and
backward, the fused adaptive convolution, BatchNorm, matrix products, upsampling, copies and
concatenations, the optimiser, everything else). Two parts:

* **training**: ``tiny``, batch 8, at each ``--train-sizes`` size: one fixed crowd-level batch (no data
  loading), the demo's loss factors, ``grmpose train``'s optimiser (``build_optimizer``: AdamW, fused);
  ``--steps`` steps profiled after two untimed ones. Milliseconds per step.
* **inference**: ``--infer-presets`` at each ``--infer-sizes`` size, batch 1, BatchNorm folded, in
  ``inference_mode`` as ``PoseEstimator`` runs them: one forward profiled after one untimed one.

The profiler's own overhead is inside the figures (a few percent for these large operators); the
unprofiled wall time of the same step or forward is recorded beside them.

    python -m benchmarks.op_profile [--train-sizes 192 256] [--infer-sizes 512 1024]

Writes ``benchmarks/results/op_profile.{json,md}``. Issue "A main job whose model visibly works" (goal 3,
what is left of a training step) and issue "Inference at the speed of the hardware" (what grows with the
input size).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.provenance import write_results_json

RESULTS = Path(__file__).resolve().parent / "results"

#: kind of operation -> the operators it sums (self CPU time); any other operator counts as "everything else"
CATEGORIES: dict[str, tuple[str, ...]] = {
    "convolutions, forward": (
        "aten::mkldnn_convolution",
        "aten::_convolution",
        "aten::convolution",
        "aten::conv2d",
    ),
    "convolutions, backward": ("aten::convolution_backward",),
    "adaptive convolution (fused kernel), forward": (
        "grmpose::adaptive_conv_forward",
        "grmpose::adaptive_transform_forward",
    ),
    "adaptive convolution (fused kernel), backward": (
        "grmpose::adaptive_conv_backward",
        "grmpose::adaptive_transform_backward",
    ),
    "grid_sample (the adaptive convolution without the kernel)": (
        "aten::grid_sampler_2d",
        "aten::grid_sampler_2d_backward",
    ),
    "BatchNorm": ("aten::native_batch_norm", "aten::native_batch_norm_backward"),
    "matrix products": ("aten::bmm", "aten::mm", "aten::addmm", "aten::matmul"),
    "upsampling": (
        "aten::upsample_bilinear2d",
        "aten::upsample_bilinear2d_backward",
        "aten::upsample_nearest2d",
        "aten::upsample_nearest2d_backward",
    ),
    "copies and concatenations": ("aten::copy_", "aten::cat", "aten::clone", "aten::_to_copy"),
    "optimiser": ("aten::_fused_adamw_", "aten::_fused_adam_"),
}
OTHER = "everything else (element-wise, reductions, losses, dispatch)"


def categorise(self_ms: dict[str, float]) -> dict[str, float]:
    """Sum operators' self times (ms) into ``CATEGORIES`` and ``OTHER``; the sums add up to the total."""
    kind_of = {op: kind for kind, ops in CATEGORIES.items() for op in ops}
    out: dict[str, float] = defaultdict(float)
    for op, ms in self_ms.items():
        out[kind_of.get(op, OTHER)] += ms
    return {kind: out.get(kind, 0.0) for kind in (*CATEGORIES, OTHER)}


def profile_self_ms(fn, runs: int) -> dict[str, float]:
    """Self CPU milliseconds per operator, per run of ``fn``, over ``runs`` profiled runs."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            fn()
    return {e.key: e.self_cpu_time_total / 1000 / runs for e in prof.key_averages()}


def training_case(size: int, steps: int, data: Path) -> dict:
    """One fixed batch of tiny at ``size``: unprofiled step time, then the per-step profile. The model and
    the step are ``benchmarks.train_step_layouts``'s (the code as it is), with ``grmpose train``'s optimiser."""
    from benchmarks.train_step_layouts import build, fixed_batch, setup, train_step
    from grmpose.train import TrainConfig, build_optimizer

    setup()
    batch = fixed_batch(data, size, 8)
    model, _, channels_last = build("as_is")
    optimizer = build_optimizer(model, TrainConfig(data="-", out="-", optimizer="adamw", lr=1e-4))

    def step() -> float:
        return train_step(model, optimizer, channels_last, batch)

    for _ in range(2):
        step()
    walls = sorted(step() * 1e3 for _ in range(steps))
    self_ms = profile_self_ms(step, steps)
    return {"part": "training", "model": "tiny", "input": size, "batch": 8,
            "wall_ms": walls[len(walls) // 2], "profiled_ms": sum(self_ms.values()),
            "by_kind_ms": categorise(self_ms)}  # fmt: skip


def inference_case(preset: str, size: int) -> dict:
    """One folded forward of ``preset`` at ``size`` x ``size``, batch 1."""
    from benchmarks.train_step_layouts import setup
    from grmpose.fuse import fuse_model
    from grmpose.model.net import build_model

    setup()
    torch.manual_seed(0)
    model = fuse_model(build_model(preset).eval())
    x = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        model(x)
        t0 = time.perf_counter()
        model(x)
        wall = (time.perf_counter() - t0) * 1e3
        self_ms = profile_self_ms(lambda: model(x), 1)
    return {"part": "inference", "model": preset, "input": size, "batch": 1, "wall_ms": wall,
            "profiled_ms": sum(self_ms.values()), "by_kind_ms": categorise(self_ms)}  # fmt: skip


def markdown(record: dict) -> str:
    """One column per case, one row per kind of operation (those that took any time)."""
    rows = record["rows"]
    kinds = [k for k in (*CATEGORIES, OTHER) if any(r["by_kind_ms"][k] > 0 for r in rows)]
    heads = [f"{r['part']}: {r['model']} at {r['input']}" for r in rows]
    lines = [
        f"# Where the time goes, by kind of operation (`python -m benchmarks.op_profile`), {record['measured']}",
        "",
        f"{record['what']} {record['cpu_capability']}, {record['threads']} threads. Milliseconds of self CPU time "
        "per training step or per forward; in brackets the share of the profiled total.",
        "",
        "| kind | " + " | ".join(heads) + " |",
        "|---|" + "---|" * len(rows),
        "| wall ms, unprofiled | " + " | ".join(f"{r['wall_ms']:.0f}" for r in rows) + " |",
        "| profiled ms, all kinds | " + " | ".join(f"{r['profiled_ms']:.0f}" for r in rows) + " |",
    ]
    for k in kinds:
        cells = [f"{r['by_kind_ms'][k]:.0f} ({r['by_kind_ms'][k] / r['profiled_ms']:.0%})" for r in rows]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train-sizes", type=int, nargs="*", default=[192, 256])
    parser.add_argument("--steps", type=int, default=3, help="profiled training steps per size")
    parser.add_argument("--infer-presets", nargs="*", default=["grmpose-w32", "dekr-w32"])
    parser.add_argument("--infer-sizes", type=int, nargs="*", default=[512, 1024])
    parser.add_argument("--data", default="runs/throughput_data")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    rows = [training_case(s, args.steps, Path(args.data)) for s in args.train_sizes]
    rows += [inference_case(p, s) for p in args.infer_presets for s in args.infer_sizes]
    record = {
        "what": "torch.profiler, self CPU time by operator summed by kind; training: tiny, batch 8, one fixed "
        f"crowd-level batch, {args.steps} profiled steps after 2 untimed, grmpose train's fused AdamW; inference: "
        "batch 1, BatchNorm folded, inference_mode, one profiled forward after one untimed.",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "measured": time.strftime("%Y-%m-%d %H:%M"),
        "categories": {k: list(v) for k, v in CATEGORIES.items()},
        "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_results_json(out / "op_profile.json", record, "benchmarks.op_profile", argv)
    text = markdown(record)
    (out / "op_profile.md").write_text(text)
    print(text)
    return record


if __name__ == "__main__":
    main()
