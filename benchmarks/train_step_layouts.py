"""Where a CPU training step of ``tiny`` loses time to memory layouts, and two ways around it, side by side.

PyTorch keeps feature maps in the plain NCHW layout; oneDNN, which runs the convolutions on the CPU,
computes in a blocked layout (8 channels innermost on AVX2) and converts ("reorders") the inputs and
outputs of every convolution. This benchmark measures:

* the share of the convolutions' time that goes to those reorders, from oneDNN's own log
  (``ONEDNN_VERBOSE=1``: every primitive's kind, shape and milliseconds) over a few training steps of
  the code as it is, in a child process;
* one training step (forward, loss, backward, AdamW step; one fixed batch of the crowd level, no data
  loading) of four variants, interleaved and repeated, medians: the code as it is; the 1x1 convolutions
  that read the 16C-channel stride-4 maps (GRM's and the heads' inputs) as plain matrix products (no
  reorder); every 1x1 convolution as a matrix product; the whole network and its input channels-last
  (oneDNN reads NHWC directly).

    python -m benchmarks.train_step_layouts [--input-size 256] [--batch-size 8] [--rounds 4]

Writes ``benchmarks/results/train_step_layouts.{json,md}``. Issue "A main job whose model visibly works",
goal 3 (training throughput) and its channels-last lever.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

from benchmarks.provenance import write_results_json

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent

VARIANTS = {
    "as_is": "the code as it is (oneDNN convolutions, NCHW)",
    "matmul_stride4": "the 1x1 convolutions on the 16C-channel stride-4 maps (GRM, heads) as matrix products",
    "matmul_all": "every 1x1 convolution as a matrix product",
    "channels_last": "the network and its input channels-last",
}


class MatmulConv1x1(nn.Module):
    """A 1x1 ``nn.Conv2d`` (groups 1) computed as ``weight @ x`` on the B x C x HW view (same parameters)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = torch.matmul(self.weight.reshape(-1, c), x.reshape(b, c, h * w))
        if self.bias is not None:
            y = y + self.bias[:, None]
        return y.reshape(b, -1, h, w)


def swap_1x1(model: nn.Module, min_in_channels: int) -> int:
    """Replace every 1x1, groups-1 ``nn.Conv2d`` with at least ``min_in_channels`` inputs; returns how many."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if (
                isinstance(child, nn.Conv2d) and child.kernel_size == (1, 1) and child.groups == 1
                and child.in_channels >= min_in_channels
            ):  # fmt: skip
                setattr(parent, name, MatmulConv1x1(child))
                count += 1
    return count


def fixed_batch(data: Path, input_size: int, batch_size: int) -> dict:
    """One training batch with its targets, as ``grmpose train`` builds it (no augmentation)."""
    from grmpose.data.coco import load_split
    from grmpose.data.dataset import PoseDataset
    from grmpose.data.synthetic import generate
    from grmpose.train import OUTPUT_STRIDE, TargetCollate

    if not (data / "train.json").is_file():
        generate(data, "coco", max(16, batch_size), 2, 0, 512, 15)
    records, spec = load_split(data, "train")
    dataset = PoseDataset(records, spec, input_size, augment=False)
    return TargetCollate(input_size // OUTPUT_STRIDE)([dataset[i] for i in range(batch_size)])


def build(variant: str) -> tuple[nn.Module, torch.optim.Optimizer, bool]:
    from grmpose.config import get_preset
    from grmpose.model.init_weights import kaiming_init
    from grmpose.model.net import GRMPoseNet

    torch.manual_seed(0)
    config = get_preset("tiny")
    model = GRMPoseNet(config, 17)
    kaiming_init(model, keep=model.prediction_layers())
    if variant == "matmul_stride4":
        swap_1x1(model, 16 * config.width)
    elif variant == "matmul_all":
        swap_1x1(model, 1)
    channels_last = variant == "channels_last"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4), channels_last


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, channels_last: bool, batch: dict) -> float:
    """Seconds of one step: forward, the training loss (the demo's factors), backward, optimiser."""
    from grmpose.losses import LossWeights, total_loss

    images = batch["image"]
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    outputs = model(images)
    loss, _ = total_loss(tuple(o.float() for o in outputs), batch["targets"], LossWeights(offset=30.0))
    loss.backward()
    optimizer.step()
    return time.perf_counter() - t0


def setup() -> None:
    """What ``grmpose train`` does on the CPU before its loop: keep freed memory, load the kernel."""
    from grmpose.model import adaptive_conv_kernel
    from grmpose.runtime import keep_freed_memory

    keep_freed_memory()
    adaptive_conv_kernel.load()


def child_verbose(args: argparse.Namespace) -> None:
    """Run ``args.verbose_steps`` steps of the code as it is (after 2 untimed ones) with oneDNN's log on."""
    setup()
    batch = fixed_batch(Path(args.data), args.input_size, args.batch_size)
    model, optimizer, cl = build("as_is")
    for _ in range(2):
        train_step(model, optimizer, cl, batch)
    print("=== timed steps ===", flush=True)
    for _ in range(args.verbose_steps):
        train_step(model, optimizer, cl, batch)
    print("=== end ===", flush=True)


def onednn_times(args: argparse.Namespace) -> dict:
    """Milliseconds per step by oneDNN primitive kind, and the reorders' largest shapes, from a child's log."""
    cmd = [sys.executable, "-m", "benchmarks.train_step_layouts", "--child-verbose", "--data", args.data,
           "--input-size", str(args.input_size), "--batch-size", str(args.batch_size),
           "--verbose-steps", str(args.verbose_steps)]  # fmt: skip
    env = {**os.environ, "ONEDNN_VERBOSE": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    timed = out.split("=== timed steps ===", 1)[1].split("=== end ===", 1)[0]
    by_kind: dict[str, float] = defaultdict(float)
    reorder_shapes: dict[str, float] = defaultdict(float)
    for line in timed.splitlines():
        fields = line.split(",")
        if len(fields) < 6 or fields[0] != "onednn_verbose" or "exec" not in fields[:4]:
            continue
        at = fields.index("exec")
        kind, ms = fields[at + 2], float(fields[-1])
        by_kind[kind] += ms / args.verbose_steps
        if kind == "reorder":
            reorder_shapes[fields[-2]] += ms / args.verbose_steps
    top = sorted(reorder_shapes.items(), key=lambda kv: -kv[1])[:4]
    return {
        "ms_per_step": dict(by_kind),
        "reorder_ms_per_step_by_shape": dict(top),
        "steps": args.verbose_steps,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--input-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant and round")
    parser.add_argument("--verbose-steps", type=int, default=3, help="steps logged by oneDNN")
    parser.add_argument("--data", default="runs/throughput_data")
    parser.add_argument("--child-verbose", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_verbose:
        child_verbose(args)
        return {}

    setup()
    batch = fixed_batch(Path(args.data), args.input_size, args.batch_size)
    models = {v: build(v) for v in VARIANTS}
    for v in VARIANTS:  # untimed: first-call allocations and oneDNN primitive creation
        for _ in range(2):
            train_step(*models[v], batch)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        for v in VARIANTS:
            times[v] += [train_step(*models[v], batch) for _ in range(args.steps)]
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{v} {statistics.median(t) * 1e3:.0f} ms"
                                                          for v, t in times.items()), flush=True)  # fmt: skip
    base = statistics.median(times["as_is"])
    rows = [
        {"variant": v, "change": VARIANTS[v], "median_ms": statistics.median(t) * 1e3,
         "images_per_s": args.batch_size / statistics.median(t), "vs_as_is": base / statistics.median(t),
         "step_ms": [x * 1e3 for x in t]}
        for v, t in times.items()
    ]  # fmt: skip
    del models
    onednn = onednn_times(args)
    record = {
        "what": f"one training step of tiny at {args.input_size} px, batch {args.batch_size}, a fixed crowd-level "
        f"batch, {args.rounds} interleaved rounds of {args.steps} steps per variant; oneDNN's log of the code as it is",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "measured": time.strftime("%Y-%m-%d %H:%M"),
        "rows": rows,
        "onednn": onednn,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_results_json(RESULTS / "train_step_layouts.json", record, "benchmarks.train_step_layouts", argv)
    ms = onednn["ms_per_step"]
    conv, reorder = ms.get("convolution", 0.0), ms.get("reorder", 0.0)
    lines = [
        f"# Memory layouts in a CPU training step (`python -m benchmarks.train_step_layouts`), {record['measured']}",
        "",
        f"{record['what']}; {record['cpu_capability']}, {record['threads']} threads. Step time: forward, loss, "
        "backward and AdamW, no data loading.",
        "",
        "| variant | median ms per step | images/s | vs as is |",
        "|---|---|---|---|",
        *[
            f"| {r['change']} | {r['median_ms']:.0f} | {r['images_per_s']:.1f} | {r['vs_as_is']:.2f}x |"
            for r in rows
        ],
        "",
        f"oneDNN's own log of the code as it is ({onednn['steps']} steps): convolution primitives {conv:.0f} ms "
        f"per step, reorders between PyTorch's plain layout and oneDNN's blocked one {reorder:.0f} ms per step "
        f"({reorder / max(base * 1e3, 1e-9):.0%} of the median step). The reorders' largest shapes (ms per step): "
        + ", ".join(f"{shape} {t:.0f}" for shape, t in onednn["reorder_ms_per_step_by_shape"].items())
        + ".",
    ]
    (RESULTS / "train_step_layouts.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return record


if __name__ == "__main__":
    main()
