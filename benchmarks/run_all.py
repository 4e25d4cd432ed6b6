"""Run every benchmark and write ``benchmarks/results/bench.json`` and ``bench.md``.

    python -m benchmarks.run_all            # the full run (62 min on 2 cores on 2026-12-03)
    python -m benchmarks.run_all --quick    # smoke test: tiny only, few repeats, small streams

All figures of one file come from one run on one machine; compare them as ratios.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import tempfile
from pathlib import Path

import torch

from benchmarks.decoding import bench_decoding
from benchmarks.provenance import provenance, write_results_json
from grmpose.bench import REFERENCE, YOLO_MODELS, add_ratios, bench_models, bench_yolo, cpu_gflops, run_child

RESULTS = Path(__file__).resolve().parent / "results"
FULL_PRESETS = ("tiny", "grmpose-w32", "grmpose-w32-nogrm", "grmpose-w32-nomfa", "grmpose-w32-base",
                "dekr-w32", "grmpose-w48")  # fmt: skip
ORT_PRESETS = ("tiny", "grmpose-w32", "grmpose-w32-base", "dekr-w32")
COMPILE_PRESETS = ("grmpose-w32", "dekr-w32")
RUN_ALL = "python -m benchmarks.run_all"


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run(
    quick: bool = False,
    out_dir: Path = RESULTS,
    threads: int = 2,
    quick_backends: tuple[str, ...] = ("eager", "onnxruntime"),
    training: bool = True,
    extras: bool = True,
) -> dict:
    """Run the suite; returns the results dict (also written to ``out_dir``).

    Args:
        quick: smoke test (tiny at 128 only, few repeats, a 300-image evaluation stream).
        quick_backends: backends of the quick model run (tests use eager only, to stay fast).
        training: include the training memory/throughput children.
        extras: include precision (int8/bf16 latency), folder throughput and the scaling sweep
            (``extras_section``).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    result: dict = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": quick,
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": threads,
            "load_average_start": load_average(),
        },  # fmt: skip
    }
    result["cpu"] = cpu_gflops(threads, repeats=3 if quick else 5)
    mm = result["cpu"]["matmul_gflops"]
    reps, warm = (2, 1) if quick else (5, 2)
    if quick:
        models = bench_models(["tiny"], input_size=128, threads=threads, repeats=reps, warmup=warm,
                              backends=quick_backends, matmul_gflops=mm)  # fmt: skip
    else:
        models = []
        for backend, presets in (("eager", FULL_PRESETS), ("onnxruntime", ORT_PRESETS),
                                 ("compile", COMPILE_PRESETS)):  # fmt: skip
            models += bench_models(presets, threads=threads, repeats=reps, warmup=warm, backends=(backend,),
                                   matmul_gflops=mm, timeout=900)  # fmt: skip
        add_ratios(models, keys=("median_ms", "min_ms"))
    result["models"] = models
    result["yolo"] = [] if quick else yolo_rows(models, threads, reps, warm)
    if not quick:
        result["profiles"] = [
            run_child("grmpose.bench", "profile_eager", {"preset": p, "threads": threads}, threads)
            for p in ("grmpose-w32", "dekr-w32")
        ]
    result["decoding"] = bench_decoding(
        people=(1, 30) if quick else (1, 5, 10, 20, 30), repeats=3 if quick else 20, threads=threads
    )
    result["memory"] = memory_section(quick, threads, training)
    if extras:
        result.update(extras_section(quick, threads, out_dir))
    result["machine"]["load_average_end"] = load_average()
    write_results_json(out_dir / "bench.json", result, "benchmarks.run_all", indent=1, default=float)
    (out_dir / "bench.md").write_text(markdown(result))
    return result


def yolo_rows(
    models: list[dict],
    threads: int,
    repeats: int,
    warmup: int,
    yolo_models: tuple[str, ...] = YOLO_MODELS,
    backends: tuple[str, ...] = ("eager", "onnxruntime"),
) -> list[dict]:
    """YOLO11-pose rows (when ultralytics is installed), each with its ratio to the dekr-w32 row of the
    same backend in ``models``."""
    rows = bench_yolo(yolo_models, threads=threads, repeats=repeats, warmup=warmup, backends=backends)
    add_ratios([*(r for r in models if r["preset"] == REFERENCE), *rows], keys=("median_ms",))
    return rows


def extras_section(quick: bool, threads: int, out_dir: Path) -> dict:
    """Issue 12's measurements, each in child processes: fp32/bf16/int8 latency (random weights; AP needs
    ``benchmarks.precision`` with a trained checkpoint), folder throughput of ``grmpose predict`` and the
    size/batch scaling sweep (which also writes ``scaling.png`` into ``out_dir``)."""
    command = RUN_ALL + (" --quick" if quick else "")  # what the throughput and scaling files record
    presets = ("tiny",) if quick else ("grmpose-w32", "dekr-w32")
    size = 128 if quick else None
    precision = [
        run_child("benchmarks.precision", "latency_only",
                  {"preset": p, "threads": threads, "repeats": 2 if quick else 5, "calibration_images": 2 if quick else 8,
                   "input_size": size}, threads, 1800)
        for p in presets
    ]  # fmt: skip
    kwargs = ({"preset": "tiny", "images": 16, "image_size": 256} if quick else {"preset": "grmpose-w32", "images": 100,
              "image_size": 512})  # fmt: skip
    throughput = run_child("benchmarks.throughput", "run", {**kwargs, "batch": 8, "workers": 2, "threads": threads,
                                                           "out_dir": str(out_dir), "command": command}, threads, 3600)  # fmt: skip
    from benchmarks import scaling

    if quick:
        sweep = scaling.run(("tiny",), (64, 128), (1, 2), reference_size=128, repeats=1, warmup=0, threads=threads,
                            out_dir=out_dir, command=command)  # fmt: skip
    else:
        sweep = scaling.run(threads=threads, out_dir=out_dir, command=command)
    return {"precision": precision, "throughput": throughput, "scaling": sweep}


def memory_section(quick: bool, threads: int, training: bool = True) -> dict:
    """Peak RSS of predict / evaluation stream / tiny training, and training images/s by workers."""
    mem: dict = {}
    if not quick:
        mem["predict"] = [
            run_child("benchmarks.memory", "predict_memory", {"flip": f}, threads, 900) for f in (False, True)
        ]
    n_eval = 300 if quick else 5000
    mem["evaluation"] = run_child(
        "benchmarks.memory", "evaluation_memory", {"num_images": n_eval, "every": n_eval // 10}, threads, 900
    )
    with tempfile.TemporaryDirectory(prefix="grmpose-bench-") as tmp:
        data = (
            None
            if not training
            else run_child(
                "benchmarks.memory", "make_synthetic", {"out": tmp, "images": 8 if quick else 40}, threads
            )
        )
        if data is None:
            pass
        elif isinstance(data, dict):  # the child failed
            mem["train"] = data
        else:
            steps, batch = (1, 4) if quick else (6, 8)
            mem["train"] = run_child("benchmarks.memory", "train_memory",
                                     {"data": data, "out": f"{tmp}/run", "steps": steps, "batch_size": batch},
                                     threads, 900)  # fmt: skip
            mem["train_workers"] = [
                run_child("benchmarks.memory", "train_throughput",
                          {"data": data, "workers": w, "steps": steps, "batch_size": batch}, threads, 900)
                for w in ((0,) if quick else (0, 1, 2))
            ]  # fmt: skip
    return mem


def remeasure_memory(
    out_dir: Path = RESULTS, threads: int = 2, presets: tuple[str, ...] = ("grmpose-w32", "dekr-w32")
) -> dict:
    """Re-measure only memory (not timing) into an existing ``bench.json``: the memory section, and the
    peak RSS of ``presets`` on eager and ONNX Runtime (one timed call each). Other model rows lose
    their peak RSS (``None``) unless re-measured, so no figure of an older method survives."""
    path = out_dir / "bench.json"
    result = json.loads(path.read_text())
    result["memory"] = memory_section(False, threads)
    fresh = {}
    for preset in presets:
        for backend in ("eager", "onnxruntime"):
            kwargs = {"preset": preset, "backend": backend, "threads": threads, "repeats": 1, "warmup": 0}
            row = run_child("grmpose.bench", "measure_backend", kwargs, threads, 900)
            fresh[(preset, backend)] = row.get("peak_rss_mib")
    for row in result["models"]:
        row["peak_rss_mib"] = fresh.get((row["preset"], row["backend"]))
        row.pop("children_maxrss_mib", None)
        row.pop("peak_rss_mib_vs_dekr-w32", None)
    add_ratios(result["models"], keys=("median_ms", "min_ms"))
    result["memory_remeasured"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    result["machine"]["load_average_memory_rerun"] = load_average()
    result["memory_provenance"] = provenance("benchmarks.run_all")  # "provenance" stays the timing run's
    path.write_text(json.dumps(result, indent=1, default=float))
    (out_dir / "bench.md").write_text(markdown(result))
    return result


def _f(x, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def markdown(result: dict) -> str:
    """The results as Markdown tables (ratios to dekr-w32 on the same backend)."""
    cpu, m = result["cpu"], result["machine"]
    lines = [
        f"# grmpose benchmarks ({result['date']}{', quick smoke run' if result['quick'] else ''})",
        "",
        f"{m['cpu_count']} CPUs, {m['threads']} threads, torch {m['torch']}; load average "
        f"{m['load_average_start']} at start, {m.get('load_average_end')} at end (the cores are shared: "
        "absolute times are noisy, the ratios of one run are what to read).",
        "",
        f"CPU fp32: sgemm 2048² **{_f(cpu['matmul_gflops'])} GFLOP/s** (best; median {_f(cpu['matmul_gflops_median'])}), "
        f"3×3 conv {_f(cpu['conv3x3_gflops'])} GFLOP/s (median {_f(cpu['conv3x3_gflops_median'])}).",
        "",
        "## Models (batch 1, latency = median of timed runs; min in brackets)",
        "",
        "| preset | backend | input | params (M) | GMACs | latency ms | vs dekr-w32 | GFLOP/s | % of sgemm | peak RSS MiB | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in result["models"]:
        ok = r.get("status") == "ok"
        note = r.get("variant", "") if ok else r.get("reason", "")
        if ok and "compile_s" in r:
            note = f"compile {r['compile_s']:.0f} s"
        if ok and "export_s" in r:
            note = f"export {r['export_s']:.0f} s"
        lat = f"{r['median_ms']:.0f} ({r['min_ms']:.0f})" if ok else "n/a"
        ratio = r.get("median_ms_vs_dekr-w32")
        lines.append(
            f"| {r['preset']} | {r['backend']} | {r['input_size']} | {r['params'] / 1e6:.1f} | {r['gmacs']:.1f} | "
            f"{lat} | {_f(ratio, 2)} | {_f(r.get('achieved_gflops'))} | {_f(100 * r['matmul_share'] if ok else None)} | "
            f"{_f(r.get('peak_rss_mib'), 0)} | {note} |"
        )
    if result.get("yolo"):
        lines += ["", "YOLO11-pose (Ultralytics, built from its YAML, random weights, Conv+BN fused; speed only):", "",
                  "| model | backend | input | params (M) | latency ms | vs dekr-w32 | peak RSS MiB | note |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in result["yolo"]:
            ok = r.get("status") == "ok"
            lat = f"{r['median_ms']:.0f} ({r['min_ms']:.0f})" if ok else "n/a"
            note = (
                f"export {r['export_s']:.0f} s"
                if ok and "export_s" in r
                else ("" if ok else r.get("reason", ""))
            )
            lines.append(f"| {r['preset']} | {r['backend']} | {r.get('input_size', '-')} | {_f(r['params'] / 1e6 if ok else None)} | {lat} | "
                         f"{_f(r.get('median_ms_vs_dekr-w32'), 2)} | {_f(r.get('peak_rss_mib'), 0)} | {note} |")  # fmt: skip
    eager = [r for r in result["models"] if r["backend"] == "eager" and r.get("status") == "ok"]
    if eager:
        lines += ["", "Eager variants (interleaved, median ms): folded / folded channels-last / unfolded", ""]
        for r in eager:
            v = r["variants"]
            lines.append(f"* {r['preset']}: {v['folded']['median_ms']:.0f} / "
                         f"{v['folded_channels_last']['median_ms']:.0f} / {v['unfolded']['median_ms']:.0f}")  # fmt: skip
    for p in result.get("profiles", []):
        if "ops" not in p:
            continue
        lines += ["", f"Top operators, eager {p['preset']} (folded), self CPU of {p['total_ms']:.0f} ms:", ""]
        lines += [
            f"* {o['name']}: {o['self_ms']:.0f} ms ({100 * o['share']:.0f} %, {o['calls']} calls)"
            for o in p["ops"][:8]
        ]
    lines += ["", "## Decoding per image (128×128 maps, ms; median (min))", "",
              "| decoder | flip | " + " | ".join(f"{n} people" for n in sorted({d['people'] for d in result['decoding']})) + " |"]  # fmt: skip
    people = sorted({d["people"] for d in result["decoding"]})
    lines.append("|---|---|" + "---|" * len(people))
    for dec in dict.fromkeys(d["decoder"] for d in result["decoding"]):
        for flip in (False, True):
            cells = []
            for n in people:
                d = next(
                    (
                        d
                        for d in result["decoding"]
                        if d["decoder"] == dec and d["flip"] == flip and d["people"] == n
                    ),
                    None,
                )
                cells.append(f"{d['median_ms']:.1f} ({d['min_ms']:.1f})" if d else "")
            lines.append(f"| {dec} | {flip} | " + " | ".join(cells) + " |")
    mem = result["memory"]
    lines += ["", "## Memory and training", ""]
    for p in mem.get("predict", []):
        lines.append(f"* `grmpose predict` grmpose-w32 at 512, flip {p.get('flip')}: peak RSS "
                     f"{_f(p.get('peak_rss_mib'), 0)} MiB, {_f(p.get('seconds_per_call'), 2)} s per call {p.get('reason', '')}")  # fmt: skip
    ev = mem.get("evaluation", {})
    lines.append(f"* evaluation stream of {ev.get('images')} images: RSS samples {ev.get('samples')}, slope "
                 f"{_f(ev.get('slope_kib_per_image'), 2)} KiB/image, peak {_f(ev.get('peak_rss_mib'), 0)} MiB {ev.get('reason', '')}")  # fmt: skip
    tr = mem.get("train", {})
    lines.append(
        f"* tiny training (workers 0): peak RSS {_f(tr.get('peak_rss_mib'), 0)} MiB {tr.get('reason', '')}"
    )
    for w in mem.get("train_workers", []):
        lines.append(f"* workers {w.get('workers')}: train {_f(w.get('train_images_per_s'), 2)} img/s, "
                     f"loader alone {_f(w.get('loader_images_per_s'), 1)} img/s {w.get('reason', '')}")  # fmt: skip
    lines += extras_markdown(result)
    return "\n".join(lines) + "\n"


def extras_markdown(result: dict) -> list[str]:
    """The precision, throughput and scaling sections (issue 12), when measured."""
    lines: list[str] = []
    if result.get("precision"):
        lines += ["", "## fp32, bf16 and int8 (batch 1, random weights: latency only; interleaved, median ms)", "",
                  "| preset | input | torch fp32 | torch bf16 | ORT fp32 | ORT int8 | int8 vs ORT fp32 | bf16 vs torch fp32 |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for p in result["precision"]:
            if "rows" not in p:
                lines.append(f"| {p.get('preset', '?')} | n/a: {p.get('reason', '')} | | | | | | |")
                continue
            r = p["rows"]
            lines.append(f"| {p['preset']} | {p['input_size']} | {r['torch float32']['median_ms']:.0f} | "
                         f"{r['torch bfloat16']['median_ms']:.0f} | {r['onnxruntime float32']['median_ms']:.0f} | "
                         f"{r['onnxruntime int8']['median_ms']:.0f} | {r['onnxruntime int8']['vs_fp32']:.2f} | "
                         f"{r['torch bfloat16']['vs_fp32']:.2f} |")  # fmt: skip
        kept = next((p["kept_fp32_ops"] for p in result["precision"] if "kept_fp32_ops" in p), None)
        if kept is not None:
            lines += ["", f"int8 keeps in float32 (compute nodes): {kept}; CPU capability "
                      f"{result['precision'][0].get('cpu_capability')}."]  # fmt: skip
    t = result.get("throughput")
    if t and "rows" in t:
        from benchmarks.throughput import table_lines

        lines += ["", f"## Folder throughput ({t['preset']}, {t['rows'][0]['images']} images of {t['image_size']} px)", "",
                  *table_lines(t)]  # fmt: skip
    elif t:
        lines += ["", f"Folder throughput: n/a ({t.get('reason', '')})"]
    sc = result.get("scaling")
    if sc:
        lines += ["", "## Cost against input size and batch (eager, ms per image / peak RSS MiB)", ""]
        lines += [f"* {r['preset']} {r['size']} px, batch {r['batch']}: {r['ms_per_image']:.0f} ms/image, "
                  f"{r['peak_rss_mib']:.0f} MiB" if "median_ms" in r else
                  f"* {r['preset']} {r['size']} px, batch {r['batch']}: n/a ({r.get('reason', '')})"
                  for r in sc["rows"]]  # fmt: skip
        if sc.get("plot"):
            lines += ["", f"Plot: `{sc['plot']}`"]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny only, few repeats")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--memory-only", action="store_true", help="re-measure memory into an existing bench.json"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.memory_only:
        remeasure_memory(args.out, args.threads)
    else:
        run(args.quick, args.out, args.threads)
    print(f"wrote {args.out / 'bench.json'} and {args.out / 'bench.md'}")


if __name__ == "__main__":
    main()
