"""The main job's levers at a fixed budget: each row is ``grmpose demo`` with one setting changed.

Every case trains ``tiny`` for the same number of minutes on the same synthetic demo-level set
(generated once, shared), then evaluates on the same held-out images (with the flip test when the
case trains with flips), with the regression decoder (the demo's) and the hybrid decoder (regressed
poses snapped to heatmap peaks). The table has the change, steps, training images/s, heatmap PCK and AP (issue "A main job whose model
visibly works": "for each lever, record what it did at a fixed budget").

    python -m benchmarks.demo_levers [--minutes 6] [--cases base,offset3,...] [--out runs/demo_levers]

Appends each finished case to ``<out>/results.jsonl`` (a re-run skips the cases found there) and
writes ``benchmarks/results/demo_levers.{json,md}`` from all of them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from benchmarks.provenance import write_results_json
from grmpose.demo import DemoConfig, run_demo

RESULTS = Path(__file__).resolve().parent / "results"

#: name -> (what changes, DemoConfig fields). The levers were measured against the demo's settings
#: of their day and keep them, so that each row can be re-run as it was: until the afternoon of
#: 2026-12-05 the demo's learning rate was 2e-3 (LR2), until that morning it trained with DEKR's
#: geometric augmentation (DEKR_AUG), and before that day at 128 px (AT128).
LR2 = {"lr": 2e-3}
DEKR_AUG = {**LR2, "max_rotation": 30.0, "scale_range": (0.75, 1.5), "max_translate": 40.0}
AT128 = {**DEKR_AUG, "input_size": 128}
#: Every case changes the demo's *current* settings: rows measured before 2026-12-06 trained and tested
#: without flips (the demo's settings then) on the scenes of that time, whose left limbs were lighter.
CASES: dict[str, tuple[str, dict]] = {
    "base": ("the demo's settings (192 px, no geometric augmentation, learning rate 4e-3, DEKR's flips in "
             "training and the flip test, on the mirror-symmetric scenes of 2026-12-06)", {}),
    "noflips": ("the demo's settings without DEKR's flips in training and without the flip test, on the "
                "mirror-symmetric scenes", {"flip": False, "flip_prob": 0.0}),
    "lr2e-3": ("192 px, no geometric augmentation, learning rate 2e-3 (the demo's until the afternoon of 2026-12-05)",
               LR2),
    "dekr_aug": ("192 px, DEKR's geometric augmentation: rotation ±30°, scale 0.75-1.5, shift ±40 "
                 "(the demo's until 2026-12-05)", DEKR_AUG),
    "rot0": ("192 px, DEKR's scale and shift but no rotation (not ±30°; the people lean ±15° at most)",
             {**DEKR_AUG, "max_rotation": 0.0}),
    "lightaug": ("192 px, rotation ±10°, scale 0.75-1.25, shift ±20 (not ±30°, 0.75-1.5, ±40)",
                 {**LR2, "max_rotation": 10.0, "scale_range": (0.75, 1.25), "max_translate": 20.0}),
    "lr8e-3": ("192 px, no geometric augmentation, learning rate 8e-3 (not 4e-3)", {"lr": 8e-3}),
    "batch16": ("192 px, no geometric augmentation, learning rate 4e-3, batch 16 (not 8): half the steps",
                {"batch_size": 16}),
    "offset10": ("192 px, no geometric augmentation, learning rate 4e-3, offset-loss factor 10 (not 30)",
                 {"offset_loss": 10.0}),
    "offset100_noaug": ("192 px, no geometric augmentation, learning rate 4e-3, offset-loss factor 100 (not 30)",
                        {"offset_loss": 100.0}),
    "noaug160": ("160 px, no geometric augmentation, learning rate 2e-3", {**LR2, "input_size": 160}),
    "base128": ("128 px, DEKR's augmentation (the demo's settings before 2026-12-05)", AT128),
    "input160": ("160 px, DEKR's augmentation", {**DEKR_AUG, "input_size": 160}),
    "input256": ("256 px, the images' own size, DEKR's augmentation", {**DEKR_AUG, "input_size": 256}),
    "offset100": ("192 px, DEKR's augmentation, offset-loss factor 100 (not 30)", {**DEKR_AUG, "offset_loss": 100.0}),
    "focal192": ("192 px, DEKR's augmentation, heatmaps: sigmoid + CornerNet's focal loss on the keypoint maps "
                 "(not DEKR's MSE)", {**DEKR_AUG, "heatmap_loss": "focal"}),
    "flips": ("128 px, flips in training (p 0.5, DEKR's) and the flip test", {**AT128, "flip_prob": 0.5, "flip": True}),
    "flips_unit8": ("128 px, flips and the flip test, offsets in units of 8 map px (not 1)",
                    {**AT128, "flip_prob": 0.5, "flip": True, "offset_unit": 8.0}),
    "unit8": ("128 px, offsets in units of 8 map px (not 1)", {**AT128, "offset_unit": 8.0}),
    "offset3": ("128 px, offset-loss factor 3 (not 30)", {**AT128, "offset_loss": 3.0}),
    "sigma1": ("128 px, keypoint σ 1, centre σ 2 map px (not 2 / 4)", {**AT128, "sigma": 1.0, "center_sigma": 2.0}),
    "batch4": ("128 px, batch 4 (not 8): twice the steps", {**AT128, "batch_size": 4}),
    "lr5e-3": ("128 px, learning rate 5e-3 (not 2e-3)", {**AT128, "lr": 5e-3}),
    "focal": ("128 px, heatmaps: sigmoid + CornerNet's focal loss on the keypoint maps (not DEKR's MSE)",
              {**AT128, "heatmap_loss": "focal"}),
    "offset_blocks2": ("192 px, no geometric augmentation, learning rate 4e-3, offset head with 2 adaptive blocks "
                       "per keypoint (DEKR's; not tiny's 1)", {"offset_blocks": 2}),
    "offset_ch15": ("192 px, no geometric augmentation, learning rate 4e-3, offset head with 15 channels per "
                    "keypoint (DEKR's; not tiny's 8)", {"offset_channels": 15}),
    "dekr_offset_head": ("192 px, no geometric augmentation, learning rate 4e-3, DEKR's offset head: 2 adaptive "
                         "blocks of 15 channels per keypoint (not 1 of 8)", {"offset_blocks": 2, "offset_channels": 15}),
    "unit8_192": ("192 px, no geometric augmentation, learning rate 4e-3, offsets in units of 8 map px (not 1)",
                  {"offset_unit": 8.0}),
    "ema99": ("the demo's settings (192 px, no geometric augmentation, learning rate 4e-3, DEKR's flips in "
              "training and the flip test), with an exponential moving average of the weights and BatchNorm "
              "statistics, decay 0.99 (a ~100-step horizon); the evaluated model is the average", {"ema": 0.99}),
    "ema98": ("the demo's settings, with the moving average of the weights at decay 0.98 (a ~50-step horizon); "
              "the evaluated model is the average", {"ema": 0.98}),
    "dekr_init": ("128 px, DEKR's N(0, 0.001) initialisation (not He's)", {**AT128, "init": "dekr"}),
}


def run_case(name: str, minutes: float, root: Path, data_from: Path | None) -> dict:
    from grmpose.evaluate_run import evaluate_checkpoint

    what, fields = CASES[name]
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    if data_from is not None and not (out / "data").exists():
        (out / "data").symlink_to(data_from.resolve(), target_is_directory=True)
    # without the rescoring net: the rows compare training changes (and were measured before it)
    cfg = DemoConfig(
        out=str(out), minutes=minutes, progress=False, curve_images=0, pictures=2, rescore_images=0, **fields
    )
    t0 = time.time()
    result = run_demo(cfg)
    hybrid = evaluate_checkpoint(
        out / "run" / "last.safetensors", str(out / "data"), out=out / "eval_hybrid", flip=cfg.flip,
        decoder="hybrid", progress=False,
    )  # fmt: skip
    m = result["metrics"]
    return {
        "case": name,
        "change": what,
        "fields": fields,
        "minutes": minutes,
        "steps": result["train"]["steps"],
        "images_per_s": result["train"]["images_per_s"],
        "AP": m["AP"],
        "AP50": m["AP50"],
        "AR50": m["AR50"],
        "hybrid_AP": hybrid["AP"],
        "hybrid_AP50": hybrid["AP50"],
        "heatmap_pck": result["heatmap_pck"]["pck"],
        "wall_minutes": (time.time() - t0) / 60,
        "measured": time.strftime("%Y-%m-%d"),
        "config": dataclasses.asdict(cfg),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=6.0)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated, from: " + ", ".join(CASES))
    parser.add_argument("--out", default="runs/demo_levers")
    args = parser.parse_args(argv)
    names = [n for n in args.cases.split(",") if n]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    log = root / "results.jsonl"
    done = read_rows(root)
    first = root / names[0] / "data"
    for name in names:
        if name in done and done[name]["minutes"] == args.minutes:
            continue
        data_from = first if name != names[0] and first.is_dir() else None
        rec = run_case(name, args.minutes, root, data_from)
        done[name] = rec
        with log.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"{name}: AP {rec['AP']:.4f} (hybrid {rec['hybrid_AP']:.4f}), {rec['steps']} steps", flush=True)
    return write_tables(done, argv)


def read_rows(root: Path) -> dict[str, dict]:
    """The rows of ``<root>/results.jsonl`` by case (a later line of a case replaces an earlier one)."""
    log = root / "results.jsonl"
    done = {}
    if log.is_file():
        for line in log.read_text().splitlines():
            rec = json.loads(line)
            done[rec["case"]] = rec
    return done


def write_tables(done: dict[str, dict], argv: list[str] | None, module: str = "benchmarks.demo_levers") -> dict:
    """Write ``benchmarks/results/demo_levers.{json,md}`` from the rows; returns the JSON record."""
    # cases no longer in CASES (measured with an earlier code version, see relabelled_from) come last
    rows = [done[n] for n in CASES if n in done] + [r for n, r in done.items() if n not in CASES]
    record = {
        "what": "grmpose demo with one setting changed, fixed training minutes, flip test",
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_results_json(RESULTS / "demo_levers.json", record, module, argv)
    lines = [
        "# The main job's levers at a fixed budget (`python -m benchmarks.demo_levers`)",
        "",
        "`tiny` on the demo level (1-5 people, 25-90 % of the image height), each case trained for the "
        "same minutes on the same 2,000 images and tested on the same 200 held-out images (with the flip "
        "test when the case trains with flips). Hybrid: the regressed poses' joints snapped to heatmap peaks. "
        "PCK: the held-out joints whose heatmap maximum inside the person's box lies within 0.1 of the "
        "person's size (`grmpose/heatmap_pck.py`, no flip), the localisation that comes before AP. "
        "The machine's speed differs from day to day: compare rows measured on the same day. "
        "Until 2026-12-05 the demo trained with DEKR's geometric augmentation (rotation ±30°, scale "
        "0.75-1.5, shift ±40) and a learning rate of 2e-3, and so did every row that does not say otherwise.",
        "",
        "| change | measured | minutes | steps | images/s | heatmap PCK | AP | AP50 | AR50 | AP (hybrid) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['change']} | {r.get('measured', '')} | {r['minutes']:g} | {r['steps']} | {r['images_per_s']:.1f} "
            f"| {r.get('heatmap_pck', float('nan')):.3f} | {r['AP']:.4f} "
            f"| {r['AP50']:.4f} | {r['AR50']:.3f} | {r['hybrid_AP']:.4f} |"
        )
    renamed = [r for r in rows if r.get("relabelled_from")]
    if renamed:
        lines += ["", "Rows measured under an earlier case name (each row's "
                  "`config` in demo_levers.json is what ran): "
                  + ", ".join(f"{r['case']} (was {r['relabelled_from']})" for r in renamed) + "."]  # fmt: skip
    (RESULTS / "demo_levers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return record


if __name__ == "__main__":
    main()
