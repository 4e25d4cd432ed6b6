"""How cost grows: latency and peak memory against input size and batch size, grmpose-w32 next to dekr-w32.

    python -m benchmarks.scaling            # sizes 256-1024 at batch 1, batches 1-16 at 512 (~6 min, 2 cores)
    python -m benchmarks.scaling --grid     # every size x batch pair (much longer)
    python -m benchmarks.scaling --quick    # smoke test: tiny at 64/128, batch 1/2

Each point runs in a fresh process (``grmpose.bench.run_child``), so its peak resident memory
(``VmHWM``) is that one model, size and batch: eager PyTorch, ``inference_mode``, BatchNorm folded,
the median of ``repeats`` calls after ``warmup``. Writes ``scaling.json``, ``scaling.md`` and, when
matplotlib is installed, ``scaling.png`` (latency per image and peak memory, against size and
against batch) into the results folder.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
from pathlib import Path

import torch

from benchmarks.provenance import write_results_json
from grmpose.bench import peak_rss_mib, rss_mib, run_child, time_calls

RESULTS = Path(__file__).resolve().parent / "results"
PRESETS = ("grmpose-w32", "dekr-w32")
SIZES = (256, 512, 768, 1024)
BATCHES = (1, 2, 4, 8, 16)

log = logging.getLogger("benchmarks.scaling")


def measure_point(
    preset: str, size: int, batch: int, repeats: int = 2, warmup: int = 1, threads: int = 2
) -> dict:
    """Latency and peak memory of one eager forward of ``batch`` images of ``size`` × ``size``, in this process.

    Returns:
        ``{"preset", "size", "batch", "median_ms", "min_ms", "ms_per_image", "peak_rss_mib",
        "base_rss_mib"}``.
    """
    from grmpose.fuse import fuse_model
    from grmpose.model.net import build_model
    from grmpose.runtime import keep_freed_memory_for_inference

    torch.set_num_threads(threads)
    keep_freed_memory_for_inference()  # as a CPU PoseEstimator does
    base = rss_mib()
    torch.manual_seed(0)
    model = fuse_model(build_model(preset, "coco").eval())
    x = torch.randn(batch, 3, size, size)
    with torch.inference_mode():
        times = time_calls(lambda: model(x), repeats, warmup)
    return {"preset": preset, "size": size, "batch": batch, "median_ms": times["median_ms"],
            "min_ms": times["min_ms"], "ms_per_image": times["median_ms"] / batch,
            "peak_rss_mib": peak_rss_mib(), "base_rss_mib": base}  # fmt: skip


def points(presets, sizes, batches, grid: bool, reference_size: int) -> list[tuple[str, int, int]]:
    """(preset, size, batch) to measure: the size sweep at batch 1 and the batch sweep at
    ``reference_size`` (or every pair with ``grid``), without repeats."""
    pairs = (
        [(s, b) for s in sizes for b in batches]
        if grid
        else [(s, 1) for s in sizes] + [(reference_size, b) for b in batches]
    )
    seen: list[tuple[str, int, int]] = []
    for preset in presets:
        for size, batch in pairs:
            if (preset, size, batch) not in seen:
                seen.append((preset, size, batch))
    return seen  # fmt: skip


def run(presets=PRESETS, sizes=SIZES, batches=BATCHES, reference_size: int = 512, grid: bool = False,
        repeats: int = 2, warmup: int = 1, threads: int = 2, out_dir: Path = RESULTS, command: str | None = None) -> dict:  # fmt: skip
    """Measure every point (one child process each) and write JSON, Markdown and the PNG."""
    rows = []
    for preset, size, batch in points(presets, sizes, batches, grid, reference_size):
        log.info("%s at %d, batch %d", preset, size, batch)
        kwargs = {"preset": preset, "size": size, "batch": batch, "repeats": repeats, "warmup": warmup,
                  "threads": threads}  # fmt: skip
        row = run_child("benchmarks.scaling", "measure_point", kwargs, threads, timeout=1800)
        rows.append({"preset": preset, "size": size, "batch": batch, **row})
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "threads": threads, "repeats": repeats, "warmup": warmup, "torch": torch.__version__,
        "load_average": [round(x, 2) for x in os.getloadavg()], "reference_size": reference_size, "rows": rows,
    }  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    write_results_json(out_dir / "scaling.json", result, "benchmarks.scaling", indent=1, default=None,
                       command=command)  # command: the run this is part of (run_all)
    result["plot"] = plot(result, out_dir / "scaling.png")
    (out_dir / "scaling.md").write_text(markdown(result))
    return result


def _ok(row: dict) -> bool:
    return "median_ms" in row


def markdown(result: dict) -> str:
    """One table: per preset, size and batch, the latency per call and per image, and peak memory."""
    lines = [f"# Cost against input size and batch ({result['date']})", "",
             f"Eager PyTorch, BatchNorm folded, {result['threads']} threads, median of {result['repeats']} calls "
             f"after {result['warmup']} warm-up; peak RSS = the child process's VmHWM (import + model + run). "
             f"Load average at the end {result['load_average']}.", "",
             "| preset | input | batch | latency ms | ms / image | peak RSS MiB |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in result["rows"]:
        if _ok(r):
            lines.append(f"| {r['preset']} | {r['size']} | {r['batch']} | {r['median_ms']:.0f} | "
                         f"{r['ms_per_image']:.0f} | {r['peak_rss_mib']:.0f} |")  # fmt: skip
        else:
            lines.append(
                f"| {r['preset']} | {r['size']} | {r['batch']} | n/a | n/a | {r.get('reason', '')} |"
            )
    lines += [
        "",
        f"Plot: {result['plot']}" if result.get("plot") else "No plot: matplotlib is not installed.",
    ]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> str | None:
    """Four panels (latency per image and peak memory, against size at batch 1 and against batch at the
    reference size) as a PNG; ``None`` when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in result["rows"] if _ok(r)]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for preset in dict.fromkeys(r["preset"] for r in rows):
        by_size = sorted(
            (r for r in rows if r["preset"] == preset and r["batch"] == 1), key=lambda r: r["size"]
        )
        by_batch = sorted((r for r in rows if r["preset"] == preset and r["size"] == result["reference_size"]),
                          key=lambda r: r["batch"])  # fmt: skip
        for ax, series, x, y in ((axes[0, 0], by_size, "size", "ms_per_image"), (axes[1, 0], by_size, "size", "peak_rss_mib"),
                                 (axes[0, 1], by_batch, "batch", "ms_per_image"), (axes[1, 1], by_batch, "batch", "peak_rss_mib")):  # fmt: skip
            ax.plot([r[x] for r in series], [r[y] for r in series], marker="o", label=preset)
    axes[0, 0].set(title="latency per image, batch 1", xlabel="input size (px)", ylabel="ms / image")
    axes[1, 0].set(title="peak memory, batch 1", xlabel="input size (px)", ylabel="peak RSS (MiB)")
    axes[0, 1].set(
        title=f"latency per image at {result['reference_size']}", xlabel="batch", ylabel="ms / image"
    )
    axes[1, 1].set(
        title=f"peak memory at {result['reference_size']}", xlabel="batch", ylabel="peak RSS (MiB)"
    )
    for ax in axes.ravel():
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"eager PyTorch on {result['threads']} CPU threads ({result['date'][:10]})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path.name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny at 64/128, batch 1/2")
    parser.add_argument("--grid", action="store_true", help="every size x batch pair")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.quick:
        result = run(("tiny",), (64, 128), (1, 2), reference_size=128, repeats=1, warmup=0, threads=args.threads,
                     out_dir=args.out)  # fmt: skip
    else:
        result = run(tuple(args.presets), tuple(args.sizes), tuple(args.batches), grid=args.grid,
                     repeats=args.repeats, threads=args.threads, out_dir=args.out)  # fmt: skip
    print(markdown(result))


if __name__ == "__main__":
    main()
