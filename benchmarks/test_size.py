"""The test short side as a lever: a finished demo-style run evaluated at several short sides.

DEKR tests at the short side it trained at. The synthetic models train on crops smaller than their
images (the demo: 192 px crops of 256 px images), so testing larger shows its people larger than in
training. This measures what that does, with no new training: for each run folder (``grmpose demo``
or ``benchmarks/train_synthetic.py`` output), the AP of its ``run/last.safetensors`` on its held-out
set and on the extra held-out sets of ``benchmarks/demo.py`` when the folder has them, at each
short side, regression decoder, no flip test, no rescoring net (the net is fitted at one size).

    python -m benchmarks.test_size [--runs runs/demo runs/bench_synthetic] [--factors 1 1.25 1.5]

Writes ``benchmarks/results/test_size.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.provenance import write_results_json

RESULTS = Path(__file__).resolve().parent / "results"


def short_sides(train_size: int, factors: list[float]) -> list[int]:
    """``train_size`` times each factor, rounded to a multiple of 16 px, without repeats."""
    return list(dict.fromkeys(max(16, round(train_size * f / 16) * 16) for f in factors))


def held_out_sets(run: Path) -> list[tuple[str, Path]]:
    """(name, data folder): the run's own validation split, then ``other_sets/*`` if present."""
    sets = [("own held-out set", run / "data")]
    others = run / "other_sets"
    if others.is_dir():
        sets += [(d.name, d) for d in sorted(others.iterdir()) if (d / "val.json").is_file()]
    return sets


def measure_run(run: Path, factors: list[float]) -> dict:
    from grmpose.evaluate_run import evaluate_checkpoint

    cfg = json.loads((run / "demo.json").read_text())["config"]
    checkpoint = run / "run" / "last.safetensors"
    sides = short_sides(cfg["input_size"], factors)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in held_out_sets(run):
            row = {"set": name, "AP": {}, "AP50": {}}
            for side in sides:
                out = Path(tmp) / f"{data.name}_{side}"
                m = evaluate_checkpoint(checkpoint, str(data), out=out, input_size=side, progress=False)
                row["AP"][side], row["AP50"][side] = m["AP"], m["AP50"]
                row["images"] = m["images"]
                shutil.rmtree(out)
            rows.append(row)
            print(f"{run} {name}: " + ", ".join(f"{s} px AP {row['AP'][s]:.4f}" for s in sides), flush=True)
    return {"run": str(run), "train_size": cfg["input_size"], "short_sides": sides, "rows": rows}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", nargs="+", default=["runs/demo", "runs/bench_synthetic"])
    parser.add_argument("--factors", type=float, nargs="+", default=[1.0, 1.25, 1.5])
    args = parser.parse_args(argv)
    missing = [r for r in args.runs if not (Path(r) / "demo.json").is_file()]
    if missing:
        parser.error(f"not a finished demo-style run (no demo.json): {', '.join(missing)}")
    record = {
        "what": "AP of a trained run at several test short sides (regression, no flip, no rescoring net)",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "runs": [measure_run(Path(r), args.factors) for r in args.runs],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_results_json(RESULTS / "test_size.json", record, "benchmarks.test_size", argv)
    lines = [
        f"# The test short side as a lever (`python -m benchmarks.test_size`), {record['date']}",
        "",
        "Each run's final model, no new training; regression decoder, no flip test, no rescoring net. "
        "The first column of sizes is the size the model trained at (DEKR's rule).",
    ]
    for r in record["runs"]:
        sides = r["short_sides"]
        lines += [
            "",
            f"`{r['run']}` (trained at {r['train_size']} px):",
            "",
            "| held-out set | images | " + " | ".join(f"AP at {s} px" for s in sides) + " |",
            "|---|---|" + "---|" * len(sides),
        ]
        lines += [
            f"| {row['set']} | {row['images']} | " + " | ".join(f"{row['AP'][s]:.4f}" for s in sides) + " |"
            for row in r["rows"]
        ]
    (RESULTS / "test_size.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return record


if __name__ == "__main__":
    main()
