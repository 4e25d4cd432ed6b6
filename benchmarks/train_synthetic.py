"""Issue-3 benchmark: ``tiny`` trained on synthetic crowds for N minutes on this CPU.

Trains on a synthetic COCO-17 set (seed 0) and evaluates on a held-out synthetic set generated
from a different seed (the generator's derived validation seed), with the demo's recipe
(``DemoConfig``: DEKR's flips in training and the flip test, on mirror-symmetric scenes; runs before
2026-12-06 trained and tested without mirrors, as their ``config`` in git history shows; DEKR's
rescoring net fitted on 300 training images ranks the poses). Records AP, the AP without the flip
test and without the rescoring net, and training images/s.

    python -m benchmarks.train_synthetic [--minutes 15] [--out runs/bench_synthetic]

Writes ``benchmarks/results/train_synthetic.json`` and ``benchmarks/results/train_synthetic.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import torch

from benchmarks.provenance import write_results_json
from grmpose.demo import DemoConfig, run_demo

RESULTS = Path(__file__).resolve().parent / "results"
DOCS_IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--train-images", type=int, default=4000)
    parser.add_argument("--val-images", type=int, default=300)
    parser.add_argument("--max-people", type=int, default=15)
    parser.add_argument("--input-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=None, help="default: grmpose train's")
    parser.add_argument("--out", default="runs/bench_synthetic")
    parser.add_argument(
        "--offset-loss",
        type=float,
        default=DemoConfig.offset_loss,
        help=f"offset loss factor (DEKR: 0.03; the demo's default for short runs: {DemoConfig.offset_loss:g})",
    )
    parser.add_argument(
        "--height-range",
        type=float,
        nargs=2,
        default=None,
        metavar=("LO", "HI"),
        help="people's heights as fractions of the image height (default: the crowd level, smaller in crowds)",
    )
    parser.add_argument(
        "--curve-images", type=int, default=100, help="held-out images per learning-curve point"
    )
    parser.add_argument("--tag", default="", help="suffix for the results files")
    args = parser.parse_args(argv)
    cfg = DemoConfig(
        out=args.out, minutes=args.minutes, train_images=args.train_images, val_images=args.val_images,
        max_people=args.max_people, input_size=args.input_size, batch_size=args.batch_size,
        workers=args.workers, pictures=4, progress=False, offset_loss=args.offset_loss,
        height_range=tuple(args.height_range) if args.height_range else None, curve_images=args.curve_images,
    )  # fmt: skip
    t0 = time.time()
    result = run_demo(cfg)
    m = result["metrics"]
    record = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        "load_average_at_end": os.getloadavg(),
        "config": cfg.__dict__,
        "train_minutes": result["train"]["minutes"],
        "steps": result["train"]["steps"],
        "train_images_per_s": result["train"]["images_per_s"],
        "eval": {k: v for k, v in m.items() if k != "results"},
        "heatmap_pck": result["heatmap_pck"],
        "rescore": result["rescore"],
        "eval_no_rescore": {k: v for k, v in result["metrics_no_rescore"].items() if k != "results"},
        "eval_no_flip_test": {k: v for k, v in result["metrics_no_flip_test"].items() if k != "results"},
        "wall_minutes": (time.time() - t0) / 60,
        "learning_curve": result.get("learning_curve_points", []),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "train_synthetic" + (f"_{args.tag}" if args.tag else "")
    write_results_json(RESULTS / f"{name}.json", record, "benchmarks.train_synthetic", argv)
    curve_png = Path(args.out) / "learning_curve.png"
    if curve_png.is_file():  # the learning curve (AP against training minutes) beside the figures
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(curve_png, DOCS_IMAGES / f"learning_curve_{name}.png")
    rows = [f"| {k} | {v:.4f} |" for k, v in record["eval"].items() if isinstance(v, float)]
    (RESULTS / f"{name}.md").write_text(
        f"# tiny on synthetic crowds, {args.minutes:g} min of CPU training ({record['date']})\n\n"
        f"{record['machine']}; {record['steps']} steps of batch {args.batch_size} at {args.input_size} px, "
        f"{record['train_images_per_s']:.1f} training images/s; held-out set: {m['images']} images "
        f"(different seed), {'flip test' if cfg.flip else 'no flip test'}.\n\n| metric | value |\n|---|---|\n" + "\n".join(rows) + "\n"
        f"| heatmap PCK (joints placed within 0.1 of the person's size, given the person; no flip) "
        f"| {record['heatmap_pck']['pck']:.3f} |\n"
        + (f"| AP without the rescoring net | {record['eval_no_rescore']['AP']:.4f} |\n" if record["rescore"] else "")
        + (f"| AP without the flip test | {record['eval_no_flip_test']['AP']:.4f} |\n" if cfg.flip else "")
    )
    print(json.dumps(record, indent=2))
    return record


if __name__ == "__main__":
    main()
