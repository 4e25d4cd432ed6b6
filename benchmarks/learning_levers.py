"""How fast the offset regression learns under each lever, at a fixed number of steps.

``tiny`` at 128 px trains for ``--steps`` steps on the first 64 images of a synthetic set of the
demo level (1-5 people, 25-90 % of the image height), cycling 8 fixed batches of 8 (augmented once),
with AdamW at a constant learning rate. After each step it records the mean absolute offset error
(map pixels) over the cells that carry offset targets, and the heatmap term. Each row changes one
lever of the offset regression's conditioning (issue "A main job whose model visibly works"):

* ``offset_unit``: the last conv predicts offsets in units of this many map pixels;
* ``mean_pose``: the offset bias starts at the data's mean pose (``grmpose.train.mean_offsets``);
* ``offset_loss``: the offset term's factor (DEKR: 0.03).

    python -m benchmarks.learning_levers [--steps 120] [--data runs/levers_data]

Writes ``benchmarks/results/learning_levers.{json,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from benchmarks.provenance import write_results_json
from grmpose.config import get_preset
from grmpose.data.coco import load_coco_keypoints, resolve_dataset
from grmpose.data.dataset import PoseDataset
from grmpose.data.synthetic import generate
from grmpose.losses import LossWeights, total_loss
from grmpose.model.net import GRMPoseNet
from grmpose.train import TargetCollate, mean_offsets

RESULTS = Path(__file__).resolve().parent / "results"

#: (offset_unit, mean_pose, offset_loss factor, lr)
LEVERS = [
    (1.0, False, 0.03, 2e-3),
    (8.0, False, 0.03, 2e-3),
    (32.0, False, 0.03, 2e-3),
    (8.0, True, 0.03, 2e-3),
    (8.0, True, 0.3, 2e-3),
    (8.0, True, 3.0, 2e-3),
    (8.0, True, 30.0, 2e-3),
    (1.0, True, 30.0, 2e-3),
    (8.0, True, 3.0, 5e-3),
]


def run_lever(batches: list[dict], mean: torch.Tensor, size: int, unit: float, mean_pose: bool, factor: float,
              lr: float, steps: int) -> dict:  # fmt: skip
    torch.manual_seed(0)
    model = GRMPoseNet(dataclasses.replace(get_preset("tiny"), input_size=size, offset_unit=unit), 17).train()
    if mean_pose:
        model.offset_head.set_offset_bias(mean)
    optimizer = torch.optim.AdamW(model.parameters(), lr, weight_decay=0.0)
    errors, t0 = [], time.perf_counter()
    for step in range(steps):
        batch = batches[step % len(batches)]
        outputs = model(batch["image"])
        loss, parts = total_loss(outputs, batch["targets"], LossWeights(offset=factor))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        used = batch["targets"]["offset_weights"] > 0
        errors.append((outputs[1].detach() - batch["targets"]["offsets"]).abs()[used].mean().item())
    tail = max(1, steps // 12)
    return {
        "offset_unit": unit, "mean_pose": mean_pose, "offset_loss": factor, "lr": lr, "steps": steps,
        "offset_error_first": errors[0], "offset_error_mid": sum(errors[steps // 2 - tail // 2:][:tail]) / tail,
        "offset_error_last": sum(errors[-tail:]) / tail, "heatmap_term_last": parts["heatmap"].item(),
        "seconds": time.perf_counter() - t0,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--data", default="runs/levers_data")
    args = parser.parse_args(argv)
    data = Path(args.data)
    if not (data / "train.json").is_file():
        generate(data, "coco", 64, 1, seed=0, image_size=256, max_people=5, height_range=(0.25, 0.9))
    ann, images, spec = resolve_dataset(str(data), "train")
    dataset = PoseDataset(load_coco_keypoints(ann, images, spec)[:64], spec, args.size, augment=True, seed=0)
    collate = TargetCollate(args.size // 4, spec.center_sigma)
    batches = [collate([dataset[i] for i in range(j, j + 8)]) for j in range(0, len(dataset) - 7, 8)]
    mean = mean_offsets(dataset, collate, 8)
    rows = [run_lever(batches, mean, args.size, *lever, args.steps) for lever in LEVERS]
    record = {"what": __doc__.split("\n\n")[0], "size": args.size, "rows": rows}
    write_results_json(RESULTS / "learning_levers.json", record, "benchmarks.learning_levers", argv)
    lines = [
        f"# Offset regression: what each lever does in {args.steps} steps (tiny, {args.size} px, 64 images)",
        "",
        "Mean absolute offset error in map pixels over the cells with offset targets (first step, middle, "
        "last steps), and the heatmap term at the end. `python -m benchmarks.learning_levers`.",
        "",
        "| offset unit | mean-pose bias | offset factor | lr | error first | error mid | error last | heatmap term |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['offset_unit']:g} | {'yes' if r['mean_pose'] else 'no'} | {r['offset_loss']:g} | {r['lr']:g} | "
            f"{r['offset_error_first']:.2f} | {r['offset_error_mid']:.2f} | {r['offset_error_last']:.2f} | "
            f"{r['heatmap_term_last']:.4f} |"
        )
    (RESULTS / "learning_levers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return record


if __name__ == "__main__":
    main()
