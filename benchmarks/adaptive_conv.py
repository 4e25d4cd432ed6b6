"""The adaptive convolution's two CPU paths side by side: the fused kernel against grid_sample.

One ``AdaptiveConv`` layer (A/t predictor, bilinear taps, 3x3 weights) at the shapes that matter:
``tiny`` in training (batch 8, 17 groups of 8 channels, 48x48 and 64x64 maps: 192 and 256 px
inputs) and grmpose-w32 at inference (batch 1, 17 groups of 15 channels, 128x128 maps: 512 px).
Forward alone (no autograd) and forward + backward (gradients of the input and the parameters),
the two paths interleaved call by call, medians of ``--repeats``.

    python -m benchmarks.adaptive_conv [--repeats 9]

Writes ``benchmarks/results/adaptive_conv.{json,md}``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
from pathlib import Path

import torch

from benchmarks.provenance import write_results_json
from grmpose.bench import _interleaved
from grmpose.model import adaptive_conv_kernel
from grmpose.model.adaptive_conv import AdaptiveConv

RESULTS = Path(__file__).resolve().parent / "results"
#: the two paths, timed call by call in turn (grmpose.bench's interleaved timing)
PATHS = {"grid_sample": False, "kernel": True}

#: (name, batch, groups, channels per group, map side)
CASES = (
    ("tiny, training at 192 px", 8, 17, 8, 48),
    ("tiny, training at 256 px", 8, 17, 8, 64),
    ("grmpose-w32, inference at 512 px", 1, 17, 15, 128),
)


def make_layer(groups: int, channels: int, seed: int = 0) -> AdaptiveConv:
    """A layer with non-trivial A and t (the taps fall between pixels, as after training)."""
    torch.manual_seed(seed)
    conv = AdaptiveConv(channels, groups)
    with torch.no_grad():
        for p in (conv.affine.weight, conv.translation.weight):
            p.normal_(0, 0.05)
        conv.affine.bias.copy_(torch.tensor([1.0, 0.1, -0.1, 1.0] * groups))
        conv.translation.bias.normal_(0, 1.0)
    return conv


def one_call(conv: AdaptiveConv, x: torch.Tensor, backward: bool, kernel: bool) -> None:
    """One call on the chosen path (forward alone without autograd, or forward + backward)."""
    path = contextlib.nullcontext() if kernel else adaptive_conv_kernel.disabled()
    grad = contextlib.nullcontext() if backward else torch.no_grad()
    with path, grad:
        out = conv(x)
        if backward:
            out.backward(torch.ones_like(out))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args(argv)
    if not adaptive_conv_kernel.load():
        raise SystemExit("the fused kernel could not be built here (see the warning above)")
    rows = []
    for name, batch, groups, channels, side in CASES:
        conv = make_layer(groups, channels)
        x = torch.randn(batch, groups * channels, side, side, requires_grad=True)
        for backward in (False, True):
            calls = {path: functools.partial(one_call, conv, x, backward, kernel) for path, kernel in PATHS.items()}
            times = _interleaved(calls, args.repeats, warmup=2)
            ref, fused = (times[path]["median_ms"] for path in PATHS)
            rows.append({
                "case": name, "batch": batch, "groups": groups, "channels": channels, "map": side,
                "pass": "forward + backward" if backward else "forward",
                "grid_sample_ms": ref, "kernel_ms": fused, "speedup": ref / fused,
            })  # fmt: skip
            print(f"{name}, {rows[-1]['pass']}: grid_sample {ref:.1f} ms, kernel {fused:.1f} ms", flush=True)
    record = {
        "what": "one AdaptiveConv layer, the fused CPU kernel against the grid_sample path, interleaved, "
        f"medians of {args.repeats} calls after 2 warm-ups",
        "threads": torch.get_num_threads(),
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_results_json(RESULTS / "adaptive_conv.json", record, "benchmarks.adaptive_conv", argv)
    lines = [
        "# The adaptive convolution on the CPU: fused kernel against grid_sample",
        "",
        f"`python -m benchmarks.adaptive_conv`: {record['what']}; {record['threads']} threads. "
        "Forward + backward computes the gradients of the input and of every parameter.",
        "",
        "| shape | pass | grid_sample + matmul ms | fused kernel ms | speed-up |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} (batch {r['batch']}, {r['groups']} x {r['channels']} channels, {r['map']}²) | {r['pass']} "
            f"| {r['grid_sample_ms']:.1f} | {r['kernel_ms']:.1f} | {r['speedup']:.2f}x |"
        )
    (RESULTS / "adaptive_conv.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return record


if __name__ == "__main__":
    main()
