"""Folder throughput of ``grmpose predict``: one image at a time (as before) against batches with workers.

    python -m benchmarks.throughput                     # grmpose-w32, 100 images, batch 8 (~12 min, 2 cores)
    python -m benchmarks.throughput --quick             # tiny at 256, 24 images
    python -m benchmarks.throughput --baseline none     # without the earlier revision's run

The folder holds synthetic crowd images (``grmpose.data.synthetic``, ``--image-size`` square JPEGs).
Three runs of ``predict_main`` over the same folder, same model (random weights of ``--preset``)
and backend, each writing results and pictures: ``batch 1, workers 0`` (the behaviour before
batching: read, forward, decode, draw and save one image after the other), ``batch 1, workers W``
(reading and picture writing in threads) and ``batch B, workers W``. images/s is the summary's
own figure (the loop's wall time, model loading excluded). Before them, unless ``--baseline none``,
the same folder goes through ``predict_main`` of the code at ``--baseline`` (a git revision unpacked
with ``git archive``, run in a child process with the same threads): by default the revision before
the issue "Inference at the speed of the hardware" (one image at a time, the adaptive convolution by
``grid_sample``), whose images/s is its processed images over its run time less the model's building.
Writes ``throughput.json`` and ``throughput.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.provenance import write_results_json

RESULTS = Path(__file__).resolve().parent / "results"
#: the code before the issue "Inference at the speed of the hardware" (its batching, readers and kernels)
BASELINE = "a731e21"

#: run in the baseline's tree: predict_main over a folder, the model's building time taken out
_BASELINE_CHILD = """
import json, sys, time
import torch
torch.set_num_threads(int(sys.argv[5]))
import grmpose.predict as predict
spent = []
build = predict.build_estimator
def timed(*args, **kwargs):
    t0 = time.perf_counter()
    estimator = build(*args, **kwargs)
    spent.append(time.perf_counter() - t0)
    return estimator
predict.build_estimator = timed
s = predict.predict_main(sys.argv[1], sys.argv[2], preset=sys.argv[3], backend=sys.argv[4], progress=False)
print(json.dumps({"processed": s["processed"], "seconds": s["seconds"] - sum(spent)}))
"""


def baseline_run(rev: str, folder: Path, out: Path, preset: str, backend: str, threads: int, tmp: Path) -> dict:
    """``predict_main`` of git revision ``rev`` over ``folder`` in a child process: images/s without model loading."""
    from benchmarks.train_throughput import unpack_revision

    source = unpack_revision(rev, tmp / f"src_{rev}")
    env = {**os.environ, "PYTHONPATH": str(source), "GRMPOSE_ADAPTIVE_KERNEL": "0"}
    cmd = [sys.executable, "-c", _BASELINE_CHILD, str(folder), str(out), preset, backend, str(threads)]
    proc = subprocess.run(cmd, cwd=source, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the baseline's predict ({rev}) failed:\n{proc.stderr[-2000:]}")
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"code": rev, "batch_size": 1, "workers": 0, "images": child["processed"],
            "images_per_s": child["processed"] / child["seconds"], "seconds": child["seconds"]}  # fmt: skip


def run(preset: str = "grmpose-w32", images: int = 100, image_size: int = 512, batch: int = 8, workers: int = 2,
        threads: int = 2, backend: str = "torch", out_dir: Path = RESULTS, command: str | None = None,
        baseline: str | None = BASELINE) -> dict:  # fmt: skip
    """The baseline's run (unless ``baseline`` is None) and this code's three; returns (and writes) their
    images/s and the ratios to this code's first run and to the baseline."""
    from grmpose.data.synthetic import generate
    from grmpose.predict import predict_main

    torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    rows = []
    with tempfile.TemporaryDirectory(prefix="grmpose-throughput-") as tmp:
        generate(f"{tmp}/data", "coco", images, 1, 0, image_size=image_size, max_people=8)
        folder = Path(tmp) / "data" / "train"  # generate_dataset's image folder of the train split
        base = None
        if baseline:
            base = baseline_run(baseline, folder, Path(tmp) / "out_baseline", preset, backend, threads, Path(tmp))
        for b, w in ((1, 0), (1, workers), (batch, workers)):
            summary = predict_main(str(folder), f"{tmp}/out_{b}_{w}", preset=preset, backend=backend,
                                   batch_size=b, workers=w, progress=False)  # fmt: skip
            rows.append({"batch_size": b, "workers": w, "images": summary["processed"],
                         "images_per_s": summary["images_per_s"], "seconds": summary["seconds"]})  # fmt: skip
    for row in rows:
        row["vs_batch_1_workers_0"] = row["images_per_s"] / rows[0]["images_per_s"]
        if base:
            row["vs_baseline"] = row["images_per_s"] / base["images_per_s"]
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "preset": preset, "backend": backend, "image_size": image_size, "threads": threads,
        "load_average": [round(v, 2) for v in os.getloadavg()], "rows": rows, "baseline": base,
    }  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    write_results_json(out_dir / "throughput.json", result, "benchmarks.throughput", indent=1, default=None,
                       command=command)  # command: the run this is part of (run_all)
    (out_dir / "throughput.md").write_text(markdown(result))
    return result


def table_lines(result: dict) -> list[str]:
    """The markdown table of the runs (the baseline's first, when there is one)."""
    lines = ["| code | batch | workers | images/s | vs this code at batch 1, workers 0 | vs the baseline |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    base = result.get("baseline")
    if base:
        lines.append(f"| {base['code']} (baseline) | 1 | 0 | {base['images_per_s']:.2f} | "
                     f"{base['images_per_s'] / result['rows'][0]['images_per_s']:.2f} | 1.00 |")  # fmt: skip
    for r in result["rows"]:
        versus = f"{r['vs_baseline']:.2f}" if base else "-"
        lines.append(
            f"| this code | {r['batch_size']} | {r['workers']} | {r['images_per_s']:.2f} | "
            f"{r['vs_batch_1_workers_0']:.2f} | {versus} |"
        )
    return lines


def markdown(result: dict) -> str:
    lines = [f"# Folder throughput of grmpose predict ({result['date']})", "",
             f"{result['preset']} (random weights), {result['backend']}, {result['rows'][0]['images']} synthetic "
             f"{result['image_size']}x{result['image_size']} JPEGs, {result['threads']} threads; results and pictures "
             f"written; load average {result['load_average']} at the end."]  # fmt: skip
    base = result.get("baseline")
    if base:
        lines.append(f"Baseline: `predict_main` of the code at {base['code']}, one image at a time, in a child "
                     "process; its images/s leaves out the model's building.")  # fmt: skip
    return "\n".join([*lines, "", *table_lines(result)]) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny at 256, 24 images")
    parser.add_argument("--preset", default="grmpose-w32")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--baseline", default=BASELINE, help="git revision run first on the same folder ('none': skip)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.quick:
        args.preset, args.images, args.image_size = "tiny", 24, 256
    baseline = None if args.baseline.lower() == "none" else args.baseline
    result = run(args.preset, args.images, args.image_size, args.batch, args.workers, args.threads, args.backend,
                 args.out, baseline=baseline)  # fmt: skip
    print(markdown(result))


if __name__ == "__main__":
    main()
