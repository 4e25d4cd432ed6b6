"""Issue-5 side-by-side: grmpose-w32 and dekr-w32 next to YOLO11n/s/m-pose, in one run.

    pip install ultralytics torch==2.13.0     # optional; the torch pin keeps the CPU build
    python -m benchmarks.yolo

Batch 1, eager and ONNX Runtime, each model in a fresh process (``grmpose.bench``). The YOLO
networks are built from Ultralytics' own YAML files with random weights: speed only. Writes
``benchmarks/results/yolo.json`` and ``benchmarks/results/yolo.md``.
"""

from __future__ import annotations

import datetime
import os

from benchmarks.provenance import write_results_json
from benchmarks.run_all import RESULTS, _f, yolo_rows
from grmpose.bench import bench_models, cpu_gflops


def main(threads: int = 2, repeats: int = 5, warmup: int = 2) -> dict:
    start = [round(x, 2) for x in os.getloadavg()]
    cpu = cpu_gflops(threads)
    models = bench_models(["grmpose-w32", "dekr-w32"], threads=threads, repeats=repeats, warmup=warmup,
                          backends=("eager", "onnxruntime"), matmul_gflops=cpu["matmul_gflops"])  # fmt: skip
    yolo = yolo_rows(models, threads, repeats, warmup)
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "threads": threads,
        "load_average": {"start": start, "end": [round(x, 2) for x in os.getloadavg()]},
        "cpu": cpu,
        "models": models,
        "yolo": yolo,
    }
    lines = [
        f"# grmpose next to YOLO11-pose ({result['date']})",
        "",
        f"{threads} threads, batch 1, median of {repeats} calls after {warmup} warm-ups (min in brackets); "
        f"load average {start} at start, {result['load_average']['end']} at end; sgemm "
        f"{cpu['matmul_gflops']:.0f} GFLOP/s. YOLO networks: Ultralytics' YAML, random weights, Conv+BN fused.",
        "",
        "| model | backend | input | params (M) | latency ms | vs dekr-w32 |",
        "|---|---|---|---|---|---|",
    ]
    for r in models + yolo:
        ok = r.get("status") == "ok"
        lat = f"{r['median_ms']:.0f} ({r['min_ms']:.0f})" if ok else f"n/a: {r.get('reason', '')}"
        params = _f(r["params"] / 1e6) if ok and r.get("params") else "n/a"
        lines.append(f"| {r['preset']} | {r['backend']} | {r.get('input_size', '-')} | {params} | {lat} | "
                     f"{_f(r.get('median_ms_vs_dekr-w32'), 2)} |")  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_results_json(RESULTS / "yolo.json", result, "benchmarks.yolo", indent=1, default=float)
    (RESULTS / "yolo.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
