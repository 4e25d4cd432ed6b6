"""Where the main job's AP goes (``grmpose.ap_breakdown``): offsets at the true centres against decoded poses.

    python -m benchmarks.ap_breakdown --data runs/demo/data [--max-images 100] \\
        "8 min=runs/demo/run/last.safetensors" "30 min=runs/demo30/run/last.safetensors"

Each ``label=checkpoint`` is measured on the first ``--max-images`` images of the held-out split, at
the model's training size; the same on the training split shows how much of the gap is fitting,
not generalising. When the checkpoint sits in a ``grmpose demo`` folder (``<out>/run/last.safetensors``),
the run's steps, training minutes and AP (``summary.json``, ``demo.json``) go into the table too.
Writes ``benchmarks/results/ap_breakdown.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.provenance import write_results_json
from grmpose.ap_breakdown import ap_breakdown
from grmpose.checkpoint import load_model
from grmpose.data.coco import load_split

RESULTS = Path(__file__).resolve().parent / "results"


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def run_figures(checkpoint: str) -> dict:
    """Steps, training minutes and the run's AP, from the files ``grmpose train`` / ``grmpose demo`` wrote
    beside the checkpoint (empty when they are not there)."""
    run = Path(checkpoint).parent
    out: dict = {}
    if (run / "summary.json").is_file():
        summary = json.loads((run / "summary.json").read_text())
        out.update(steps=summary.get("steps"), train_minutes=summary.get("minutes"))
    if (run.parent / "demo.json").is_file():
        out["demo_AP"] = json.loads((run.parent / "demo.json").read_text())["metrics"]["AP"]
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("models", nargs="+", help="label=checkpoint")
    parser.add_argument(
        "--data", required=True, help="the data the models were trained on (its val split is held out)"
    )
    parser.add_argument("--max-images", type=int, default=100)
    parser.add_argument("--splits", default="val,train", help="comma-separated")
    args = parser.parse_args(argv)
    models = []
    for item in args.models:
        label, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            parser.error(f"{item!r}: expected label=checkpoint with an existing checkpoint file")
        models.append((label, path, *load_model(path)))
    rows = []
    for split in args.splits.split(","):
        records, _ = load_split(args.data, split)
        records = records[: args.max_images]
        for label, path, model, config, spec in models:
            result = ap_breakdown(model, records, spec, config.input_size)
            rows.append(
                {
                    "model": label,
                    "checkpoint": path,
                    "split": split,
                    "images": len(records),
                    **run_figures(path),
                    **result,
                }
            )
            a, d = result["at_true_centre"], result["best_decoded"]
            print(
                f"{label} / {split}: at the true centre {_fmt(a['ap_bound'])}, decoded {_fmt(d['ap_bound'])}"
            )
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"what": "grmpose.ap_breakdown on trained checkpoints", "rows": rows}
    write_results_json(RESULTS / "ap_breakdown.json", record, "benchmarks.ap_breakdown", argv)
    names = list(rows[0]["error_over_scale"]) if rows else []
    runs = {r["model"]: r for r in rows if "steps" in r}
    lines = [
        "# Where the main job's AP goes (`python -m benchmarks.ap_breakdown`)",
        "",
        "`grmpose/ap_breakdown.py`: for every labelled person, the pose regressed at the map cell of the person's true "
        "centre (offsets only: no centre detection, no ranking) and the decoder's best-matching pose, each scored by "
        "OKS against the person. *AP bound*: the share of people whose OKS passes each threshold 0.50:0.95, averaged "
        "(the AP of these poses if every person had exactly one, perfectly ranked). *Sides free*: the same with each "
        "pose's left and right joints swapped where that scores better. Centre heat: the centre heatmap "
        "at the true centre (the targets' peak is 1).",
        "",
        *(
            ["| model | steps | training minutes | the run's AP (its held-out set) |", "|---|---|---|---|"]
            + [
                f"| {m} | {r['steps']} | {r['train_minutes']:.1f} | {_fmt(r.get('demo_AP'), 4)} |"
                for m, r in runs.items()
            ]
            + [""]
            if runs
            else []
        ),
        "| model | split | images | people | OKS at true centre | > 0.5 | > 0.75 | AP bound "
        "| AP bound, sides free | OKS decoded (best) | > 0.5 | AP bound | centre heat |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a, d = r["at_true_centre"], r["best_decoded"]
        lines.append(
            f"| {r['model']} | {r['split']} | {r['images']} | {r['people']} | {_fmt(a['mean_oks'])} "
            f"| {_fmt(a['above_50'])} | {_fmt(a['above_75'])} | {_fmt(a['ap_bound'])} "
            f"| {_fmt(r['at_true_centre_sides_free']['ap_bound'])} | {_fmt(d['mean_oks'])} "
            f"| {_fmt(d['above_50'])} | {_fmt(d['ap_bound'])} | {_fmt(r['centre_heat_median'], 2)} |"
        )
    lines += [
        "",
        "Median distance of the joint regressed at the true centre from its label, over the person's scale "
        "`sqrt(area)`; last row: COCO's tolerance `2 sigma` (there a joint's OKS term is exp(-1/2) = 0.61).",
        "",
        "| model | split | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['split']} | "
            + " | ".join(_fmt(r["error_over_scale"][n], 2) for n in names)
            + " |"
        )
    if rows:
        lines.append(
            "| tolerance | | " + " | ".join(_fmt(rows[0]["tolerance_2sigma"][n], 2) for n in names) + " |"
        )
    (RESULTS / "ap_breakdown.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return record


if __name__ == "__main__":
    main()
