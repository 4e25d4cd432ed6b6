"""Issue-4 table: AP of a trained checkpoint for each decoder x flip test x multi-scale, plus rescoring.

    python -m benchmarks.decoders --checkpoint runs/bench_synthetic/run/last.safetensors \
        --data runs/bench_synthetic/data [--max-images 100] [--rescore-images 300]

Every configuration is evaluated on the same held-out images; the rescoring net is fitted on the
model's own predictions on training images (``grmpose rescore-fit``) and applied to the best
configuration. Writes ``benchmarks/results/decoders.json`` and ``benchmarks/results/decoders.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from itertools import product
from pathlib import Path

from benchmarks.provenance import write_results_json
from grmpose.evaluate_run import evaluate_checkpoint
from grmpose.rescore import rescore_fit_main

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--max-images", type=int, default=100)
    parser.add_argument("--rescore-images", type=int, default=300, help="training images for rescore-fit")
    parser.add_argument("--out", default="runs/bench_decoders")
    args = parser.parse_args(argv)
    out = Path(args.out)
    rows = []
    for decoder, flip, multi in product(("regression", "ae", "hybrid"), (False, True), (False, True)):
        t0 = time.time()
        m = evaluate_checkpoint(
            args.checkpoint, args.data, split="val", out=out / f"{decoder}_{int(flip)}_{int(multi)}", flip=flip,
            multi_scale=multi, decoder=decoder, max_images=args.max_images, progress=False,
        )  # fmt: skip
        rows.append({"decoder": decoder, "flip": flip, "multi_scale": multi, "AP": m["AP"], "AP50": m["AP50"],
                     "AR": m["AR"], "seconds_per_image": (time.time() - t0) / max(1, m["images"])})  # fmt: skip
        print(rows[-1], flush=True)
    best = max(rows, key=lambda r: r["AP"])
    rescore_path = out / "rescore.safetensors"
    fit = rescore_fit_main(
        args.checkpoint, args.data, str(rescore_path), split="train", max_images=args.rescore_images,
        flip=best["flip"], decoder=best["decoder"], progress=False,
    )  # fmt: skip
    with_rescore = evaluate_checkpoint(
        args.checkpoint, args.data, split="val", out=out / "best_rescored", flip=best["flip"],
        multi_scale=best["multi_scale"], decoder=best["decoder"], max_images=args.max_images,
        rescore=str(rescore_path), progress=False,
    )  # fmt: skip
    record = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "checkpoint": args.checkpoint,
        "images": args.max_images,
        "rows": rows,
        "best": best,
        "rescore": {
            "fit": {k: v for k, v in fit.items() if k != "out"},
            "AP_without": best["AP"],
            "AP_with": with_rescore["AP"],
        },  # fmt: skip
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_results_json(RESULTS / "decoders.json", record, "benchmarks.decoders", argv)
    lines = [
        f"# Decoders on held-out synthetic crowds ({record['date']}, {args.max_images} images)\n",
        "| decoder | flip | multi-scale | AP | AP50 | AR | s / image |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['decoder']} | {'✓' if r['flip'] else ''} | {'✓' if r['multi_scale'] else ''} | "
                     f"{r['AP']:.4f} | {r['AP50']:.4f} | {r['AR']:.4f} | {r['seconds_per_image']:.2f} |")  # fmt: skip
    lines.append(
        f"\nRescoring net (fitted on {fit.get('images')} training images) on the best row "
        f"({best['decoder']}, flip {best['flip']}, multi-scale {best['multi_scale']}): "
        f"AP {best['AP']:.4f} -> {with_rescore['AP']:.4f}.\n"
    )
    (RESULTS / "decoders.md").write_text("\n".join(lines))
    print(json.dumps(record, indent=2, default=str))
    return record


if __name__ == "__main__":
    main()
