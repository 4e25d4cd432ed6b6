"""Folder throughput of ``grmpose predict``: one image at a time (as before) against batches with workers.

    python -m benchmarks.throughput                     # grmpose-w32, 100 images, batch 8 (~10 min, 2 cores)
    python -m benchmarks.throughput --quick             # tiny at 256, 24 images

The folder holds synthetic crowd images (``grmpose.data.synthetic``, ``--image-size`` square JPEGs).
Three runs of ``predict_main`` over the same folder, same model (random weights of ``--preset``)
and backend, each writing results and pictures: ``batch 1, workers 0`` (the behaviour before
batching: read, forward, decode, draw and save one image after the other), ``batch 1, workers W``
(reading and picture writing in threads) and ``batch B, workers W``. images/s is the summary's
own figure (the loop's wall time, model loading excluded). Writes ``throughput.json`` and
``throughput.md``.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import tempfile
from pathlib import Path

import torch

from benchmarks.provenance import write_results_json

RESULTS = Path(__file__).resolve().parent / "results"


def run(preset: str = "grmpose-w32", images: int = 100, image_size: int = 512, batch: int = 8, workers: int = 2,
        threads: int = 2, backend: str = "torch", out_dir: Path = RESULTS, command: str | None = None) -> dict:  # fmt: skip
    """The three runs; returns (and writes) their images/s and the ratios to the first."""
    from grmpose.data.synthetic import generate
    from grmpose.predict import predict_main

    torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    rows = []
    with tempfile.TemporaryDirectory(prefix="grmpose-throughput-") as tmp:
        generate(f"{tmp}/data", "coco", images, 1, 0, image_size=image_size, max_people=8)
        folder = Path(tmp) / "data" / "train"  # generate_dataset's image folder of the train split
        for b, w in ((1, 0), (1, workers), (batch, workers)):
            summary = predict_main(str(folder), f"{tmp}/out_{b}_{w}", preset=preset, backend=backend,
                                   batch_size=b, workers=w, progress=False)  # fmt: skip
            rows.append({"batch_size": b, "workers": w, "images": summary["processed"],
                         "images_per_s": summary["images_per_s"], "seconds": summary["seconds"]})  # fmt: skip
    for row in rows:
        row["vs_batch_1_workers_0"] = row["images_per_s"] / rows[0]["images_per_s"]
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "preset": preset, "backend": backend, "image_size": image_size, "threads": threads,
        "load_average": [round(v, 2) for v in os.getloadavg()], "rows": rows,
    }  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    write_results_json(out_dir / "throughput.json", result, "benchmarks.throughput", indent=1, default=None,
                       command=command)  # command: the run this is part of (run_all)
    (out_dir / "throughput.md").write_text(markdown(result))
    return result


def markdown(result: dict) -> str:
    lines = [f"# Folder throughput of grmpose predict ({result['date']})", "",
             f"{result['preset']} (random weights), {result['backend']}, {result['rows'][0]['images']} synthetic "
             f"{result['image_size']}x{result['image_size']} JPEGs, {result['threads']} threads; results and pictures "
             f"written; load average {result['load_average']} at the end.", "",
             "| batch | workers | images/s | vs batch 1, workers 0 |", "|---|---|---|---|"]  # fmt: skip
    for r in result["rows"]:
        lines.append(
            f"| {r['batch_size']} | {r['workers']} | {r['images_per_s']:.2f} | {r['vs_batch_1_workers_0']:.2f} |"
        )
    return "\n".join(lines) + "\n"


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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.quick:
        args.preset, args.images, args.image_size = "tiny", 24, 256
    result = run(args.preset, args.images, args.image_size, args.batch, args.workers, args.threads, args.backend,
                 args.out)  # fmt: skip
    print(markdown(result))


if __name__ == "__main__":
    main()
