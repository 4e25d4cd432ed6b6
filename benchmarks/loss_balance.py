"""Issue-9 benchmark: the heatmap vs offset loss balance before and after DEKR's offset weights.

Before (``old``): a person's offsets were weighted ``1 / sqrt(max(w * h, 1))`` of the labelled
joints' box in *map* pixels, measured after the crop. After (``new``, ``grmpose.targets``): DEKR's
``1 / sqrt(w^2 + h^2)``, one over the diagonal of the person's box (labelled joints joined with the
annotation box) in *input-crop* pixels, floored at 32 px, centres and sizes measured before the
crop. Both use the same crops (the new DEKR crop convention), the same model and the same offset
loss factor (DEKR's 0.03, or ``--offset-loss``), so only the weighting differs.

On a small set of synthetic crowds (``grmpose.data.synthetic.generate``, COCO spec, 256 px) it
measures, on fixed batches, the heatmap term and the weighted offset term under both weightings:
for the ``tiny`` preset at initialisation, and after a short run (``--seconds``, default 30 s each)
trained with each weighting from the same initialisation. It also reports the per-person weights
and the share of the offset-weight mass held by people with one or two labelled joints.

    python -m benchmarks.loss_balance [--images 64] [--seconds 25]

Writes ``benchmarks/results/loss_balance.json`` and ``benchmarks/results/loss_balance.md``.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.provenance import write_results_json
from grmpose.config import get_preset
from grmpose.data.coco import load_split
from grmpose.data.dataset import OUTPUT_STRIDE, PoseDataset, collate
from grmpose.data.synthetic import generate
from grmpose.losses import collate_targets, heatmap_loss, offset_loss
from grmpose.model.net import GRMPoseNet
from grmpose.targets import MIN_PERSON_SIZE, build_targets

RESULTS = Path(__file__).resolve().parent / "results"
COCO_SAMPLE = Path(__file__).resolve().parent.parent / "tests" / "data" / "coco" / "dataset.yaml"


def old_sizes(keypoints: np.ndarray, stride: int = OUTPUT_STRIDE) -> np.ndarray:
    """The sizes that make ``build_targets`` (with ``min_size=0``) give the old weights:
    ``sqrt(max(w * h, 1))`` of the labelled in-crop joints' box in map pixels."""
    out = np.ones(len(keypoints))
    for i, person in enumerate(keypoints):
        xy = person[person[:, 2] > 0, :2] / stride
        if len(xy):
            w, h = xy.max(0) - xy.min(0)
            out[i] = math.sqrt(max(w * h, 1.0))
    return out


def batch_targets(samples: list[dict], map_size: int, weighting: str) -> dict:
    """Collated batch with the targets of one weighting (``old`` or ``new``)."""
    batch = collate(samples)
    targets = []
    for k, m, c, z in zip(batch["keypoints"], batch["mask"], batch["centers"], batch["sizes"]):
        k = k.numpy()
        if weighting == "new":
            t = build_targets(k, (map_size, map_size), mask=m.numpy(), centers=c.numpy(), sizes=z.numpy())
        else:  # old: centres from the in-crop joints, 1 / sqrt(map-pixel w * h), no floor but 1
            t = build_targets(k, (map_size, map_size), mask=m.numpy(), sizes=old_sizes(k), min_size=0.0)
        targets.append(t)
    batch["targets"] = collate_targets(targets)
    return batch


def loss_terms(model: torch.nn.Module, batches: list[dict], offset_factor: float) -> dict:
    """Mean heatmap term and weighted offset term over fixed batches (model in eval mode)."""
    model.eval()
    heat, off = [], []
    with torch.no_grad():
        for batch in batches:
            heatmaps, offsets, _ = model(batch["image"])
            t = batch["targets"]
            heat.append(heatmap_loss(heatmaps, t["heatmaps"], t["heat_weights"]).item())
            off.append(offset_factor * offset_loss(offsets, t["offsets"], t["offset_weights"]).item())
    h, o = float(np.mean(heat)), float(np.mean(off))
    return {"heatmap": h, "offset": o, "offset_over_heatmap": o / h}


def train_for(model, batches: list[dict], seconds: float, offset_factor: float) -> int:
    """Adam (lr 1e-3) on heatmap + weighted offset terms, cycling over prepared batches for
    ``seconds`` (data preparation excluded); returns the step count."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    steps, t0 = 0, time.time()
    while time.time() - t0 < seconds:
        batch = batches[steps % len(batches)]
        heatmaps, offsets, _ = model(batch["image"])
        t = batch["targets"]
        loss = heatmap_loss(heatmaps, t["heatmaps"], t["heat_weights"]) + offset_factor * offset_loss(
            offsets, t["offsets"], t["offset_weights"]
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
    return steps


def weight_stats(samples: list[dict]) -> dict:
    """Per-person offset weights under both rules (people with a centre and a labelled joint in the
    crop), and the share of the weight mass (weight times labelled in-crop joints; the disc of
    cells is about the same for everyone) of people with one or two labelled joints."""
    old_w, new_w, joints = [], [], []
    for s in samples:
        k = s["keypoints"].numpy()
        n = (k[:, :, 2] > 0).sum(1)
        has_centre = (s["centers"][:, 2].numpy() > 0) & (n > 0)
        old_w += list(1.0 / old_sizes(k)[has_centre])
        new_w += list(1.0 / np.maximum(s["sizes"].numpy()[has_centre], MIN_PERSON_SIZE))
        joints += list(n[has_centre])
    old_w, new_w, joints = np.array(old_w), np.array(new_w), np.array(joints)
    few = joints <= 2

    def share(w: np.ndarray) -> float:
        mass = w * joints
        return float(mass[few].sum() / mass.sum())

    return {
        "people": int(len(joints)),
        "people_with_1_or_2_joints": int(few.sum()),
        "old_weight_median": float(np.median(old_w)),
        "new_weight_median": float(np.median(new_w)),
        "old_over_new_median": float(np.median(old_w / new_w)),
        "old_weight_max": float(old_w.max()),
        "new_weight_max": float(new_w.max()),
        "mass_share_1_or_2_joints_old": share(old_w),
        "mass_share_1_or_2_joints_new": share(new_w),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--eval-batches", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0, help="training time per weighting (0: none)")
    parser.add_argument("--coco-draws", type=int, default=10, help="augmented crops per COCO sample image")
    parser.add_argument("--offset-loss", type=float, default=0.03, help="offset loss factor (DEKR: 0.03)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    t_start = time.time()
    preset = get_preset("tiny")
    size = preset.input_size
    map_size = size // OUTPUT_STRIDE
    with tempfile.TemporaryDirectory() as tmp:
        data = generate(Path(tmp) / "synth", "coco", args.images, 1, args.seed, (size, size), 15)
        records, spec = load_split(data, "train")
        dataset = PoseDataset(records, spec, size, augment=True, seed=args.seed)
        n_eval = args.eval_batches * args.batch_size
        dataset.set_epoch(1000)  # held-out crops: augmentation draws the training batches never use
        held_out = [dataset[i] for i in range(n_eval)]
        dataset.set_epoch(0)
        train_samples = [dataset[i] for i in range(len(dataset))]
        stats = {"synthetic": weight_stats(train_samples)}

    def prepare(samples: list[dict], weighting: str) -> list[dict]:
        chunks = [samples[i : i + args.batch_size] for i in range(0, len(samples), args.batch_size)]
        return [batch_targets(c, map_size, weighting) for c in chunks if len(c) == args.batch_size]

    eval_sets = {w: prepare(held_out, w) for w in ("old", "new")}
    torch.manual_seed(args.seed)
    init = GRMPoseNet(preset, spec.num_keypoints)
    init_state = {k: v.clone() for k, v in init.state_dict().items()}
    rows = [{"model": "init", "steps": 0, "weighting": w, **loss_terms(init, eval_sets[w], args.offset_loss)}
            for w in ("old", "new")]  # fmt: skip
    if args.seconds > 0:
        for trained_with in ("old", "new"):
            model = GRMPoseNet(preset, spec.num_keypoints)
            model.load_state_dict(init_state)
            steps = train_for(model, prepare(train_samples, trained_with), args.seconds, args.offset_loss)
            for w in ("old", "new"):
                terms = loss_terms(model, eval_sets[w], args.offset_loss)
                rows.append({"model": f"trained {args.seconds:g} s with {trained_with}", "steps": steps,
                             "weighting": w, **terms})  # fmt: skip
    coco_records, coco_spec = load_split(COCO_SAMPLE, "train")
    coco = PoseDataset(coco_records, coco_spec, 512, augment=True, seed=args.seed)
    coco_samples = []
    for epoch in range(args.coco_draws):
        coco.set_epoch(epoch)
        coco_samples += [coco[i] for i in range(len(coco))]
    stats["coco_sample"] = weight_stats(coco_samples)

    record = {
        "what": "heatmap vs offset loss terms on synthetic crowds, old and new (DEKR) offset weights",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "config": {
            "preset": "tiny",
            "input_size": size,
            "images": args.images,
            "eval_images": n_eval,
            "coco_sample_crops": len(coco_samples),
            "batch_size": args.batch_size,
            "offset_loss_factor": args.offset_loss,
            "seconds_per_run": args.seconds,
            "torch_threads": torch.get_num_threads(),
        },  # fmt: skip
        "rows": rows,
        "weights": stats,
        "wall_minutes": (time.time() - t_start) / 60,
        "load_average_at_end": os.getloadavg(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_results_json(RESULTS / "loss_balance.json", record, "benchmarks.loss_balance", argv)
    (RESULTS / "loss_balance.md").write_text(to_markdown(record))
    print(to_markdown(record))
    return record


def to_markdown(record: dict) -> str:
    c = record["config"]
    lines = [
        f"# Loss balance: old vs DEKR offset weights ({record['date']})",
        "",
        f"`{c['preset']}` at {c['input_size']} px on {c['images']} synthetic COCO-17 crowd images; terms "
        f"averaged over {c['eval_images']} fixed augmented crops; offset factor {c['offset_loss_factor']} "
        "(heatmap factor 1). `old`: 1/sqrt(max(w*h, 1)) of the labelled joints' box in map pixels, after the "
        "crop. `new`: 1/max(sqrt(w^2+h^2), 32) of the person's box in input-crop pixels, before the crop (DEKR).",
        "",
        f"Machine: 2 shared CPU cores, load average {record['load_average_at_end'][0]:.1f} at the end (the short "
        "runs' step counts show how much training the time bought).",
        "",
        "| model | steps | weighting | heatmap term | offset term | offset / heatmap |",
        "|---|---|---|---|---|---|",
    ]
    for r in record["rows"]:
        lines.append(
            f"| {r['model']} | {r['steps']} | {r['weighting']} | {r['heatmap']:.5f} | {r['offset']:.5f} "
            f"| {r['offset_over_heatmap']:.2f} |"
        )
    lines += [
        "",
        "Per-person offset weights (people with a centre in the crop; old: 1/map px, new: 1/input px) and the "
        "share of the offset-weight mass (weight x labelled in-crop joints) held by people with one or two "
        f"labelled joints in the crop. COCO sample: the 5 real images of `tests/data/coco`, "
        f"{c['coco_sample_crops']} augmented 512 px crops.",
        "",
        "| data | people | with 1-2 joints | median weight old | new | old / new (median) | largest old | "
        "largest new | mass share of 1-2-joint people, old | new |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in record["weights"].items():
        lines.append(
            f"| {name} | {s['people']} | {s['people_with_1_or_2_joints']} | {s['old_weight_median']:.4f} | "
            f"{s['new_weight_median']:.4f} | {s['old_over_new_median']:.1f}x | {s['old_weight_max']:.3f} | "
            f"{s['new_weight_max']:.4f} | {100 * s['mass_share_1_or_2_joints_old']:.1f} % | "
            f"{100 * s['mass_share_1_or_2_joints_new']:.1f} % |"
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
