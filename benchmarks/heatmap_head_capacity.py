"""Is it the heatmap head or the features? Fresh heads trained on a trained model's frozen features.

A short run's heatmaps place few joints (the demo: heatmap PCK ~0.42 after 8 minutes, the same after 30).
Two things can limit them: the heatmap head (tiny's is 16 channels wide: a 1x1 transition, one
BasicBlock, a 1x1 conv to the K + 1 maps) or the features it reads (the backbone and GRM output,
``GRMPoseNet.features``). This benchmark freezes the features of a trained checkpoint, computes them
once for the training and held-out images (no augmentation, as at evaluation), and trains on them,
with DEKR's heatmap MSE only:

* the checkpoint's own head, continued (does the head alone still learn on these features?);
* fresh heads of several widths and depths, from PyTorch's default initialisation.

Each is trained for the same number of steps (AdamW, one-cycle learning rate up to ``--lr``), and
scored with the heatmap PCK of ``grmpose.heatmap_pck`` on the held-out images. If wider fresh heads
reach about what the continued head reaches, the features are the limit, not the head.

    python -m benchmarks.heatmap_head_capacity CHECKPOINT DATA [--steps 1500] [--heads trained,16,32,64,16x3]

``DATA`` is a dataset folder with ``train`` and ``val`` splits (e.g. the demo's ``<out>/data``); a head
``WxD`` is width W with D BasicBlocks (``W`` alone: one, DEKR's). Writes
``benchmarks/results/heatmap_head_capacity.{json,md}``.
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.provenance import write_results_json
from grmpose.checkpoint import load_model
from grmpose.data.coco import load_coco_keypoints, resolve_dataset
from grmpose.data.dataset import OUTPUT_STRIDE, PoseDataset
from grmpose.heatmap_pck import found_joints
from grmpose.losses import heatmap_loss
from grmpose.model.blocks import BasicBlock
from grmpose.model.heads import HeatmapTagHead
from grmpose.model.net import GRMPoseNet
from grmpose.train import TargetCollate

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class FrozenSet:
    """Features, heatmap targets and weights, keypoints in map pixels."""

    features: torch.Tensor
    heatmaps: torch.Tensor
    weights: torch.Tensor
    keypoints: list[np.ndarray]


@torch.no_grad()
def frozen_set(
    model: GRMPoseNet, data: PoseDataset, sigma: float, center_sigma: float, batch: int = 16
) -> FrozenSet:
    """``model.features`` of every sample of ``data`` and its heatmap targets (as in training)."""
    model.eval()
    feats, heat, weights, kpts = [], [], [], []
    for lo in range(0, len(data), batch):
        samples = [data[i] for i in range(lo, min(lo + batch, len(data)))]
        feats.append(model.features(torch.stack([s["image"] for s in samples])))
        # the training loop's own target builder (square crops: one map size)
        targets = TargetCollate(feats[-1].shape[-1], center_sigma=center_sigma, sigma=sigma)(samples)[
            "targets"
        ]
        heat.append(targets["heatmaps"])
        weights.append(targets["heat_weights"])
        for s in samples:
            k = s["keypoints"].numpy().astype(np.float64)
            k[:, :, :2] /= OUTPUT_STRIDE
            kpts.append(k)
    return FrozenSet(torch.cat(feats), torch.cat(heat), torch.cat(weights), kpts)


def make_head(name: str, trained: HeatmapTagHead, in_channels: int, num_keypoints: int) -> HeatmapTagHead:
    """``"trained"``: a copy of the checkpoint's head; ``"W"`` or ``"WxD"``: a fresh head of width W with D
    BasicBlocks."""
    if name == "trained":
        return copy.deepcopy(trained)
    width, depth = (int(v) for v in name.split("x")) if "x" in name else (int(name), 1)
    if width < 1 or depth < 1:
        raise ValueError(f"head {name!r}: width and depth must be at least 1")
    head = HeatmapTagHead(in_channels, width, num_keypoints)
    for _ in range(depth - 1):
        head.features.append(BasicBlock(width))
    return head


@torch.no_grad()
def score(head: nn.Module, held_out: FrozenSet, num_keypoints: int, batch: int = 32) -> dict:
    """Heatmap PCK (``found_joints``) and the heatmap loss of ``head`` on the held-out features."""
    head.eval()
    found = np.zeros(num_keypoints, np.int64)
    labelled = np.zeros(num_keypoints, np.int64)
    loss = 0.0
    for lo in range(0, len(held_out.features), batch):
        heat, _ = head(held_out.features[lo : lo + batch])
        loss += float(
            heatmap_loss(heat, held_out.heatmaps[lo : lo + batch], held_out.weights[lo : lo + batch])
        ) * len(heat)
        for j, maps in enumerate(heat[:, :num_keypoints].numpy()):
            f, n = found_joints(maps, held_out.keypoints[lo + j])
            found += f
            labelled += n
    head.train()
    return {"pck": float(found.sum() / max(labelled.sum(), 1)), "loss": loss / len(held_out.features)}


def train_head(head: nn.Module, train: FrozenSet, steps: int, lr: float, batch: int, seed: int) -> float:
    """AdamW with a one-cycle schedule on random batches of the frozen features; returns seconds."""
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.05)
    gen = torch.Generator().manual_seed(seed)
    head.train()
    start = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(train.features), (batch,), generator=gen)
        heat, _ = head(train.features[idx])
        loss = heatmap_loss(heat, train.heatmaps[idx], train.weights[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint")
    parser.add_argument("data")
    parser.add_argument("--heads", default="trained,16,32,64,16x3")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=4e-3)
    parser.add_argument("--input-size", type=int, default=192)
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--val-images", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    ann, images, spec = resolve_dataset(args.data, "train")
    model, _, _ = load_model(args.checkpoint, spec)
    sets = {}
    start = time.perf_counter()
    for split, count in (("train", args.train_images), ("val", args.val_images)):
        ann, images, _ = resolve_dataset(args.data, split)
        data = PoseDataset(
            load_coco_keypoints(ann, images, spec)[:count], spec, args.input_size, augment=False
        )
        sets[split] = frozen_set(model, data, sigma=2.0, center_sigma=spec.center_sigma)
    feature_seconds = time.perf_counter() - start
    k = spec.num_keypoints
    in_channels = sets["train"].features.shape[1]
    rows = []
    for name in args.heads.split(","):
        head = make_head(name, model.heatmap_head, in_channels, k)
        before = score(head, sets["val"], k)
        seconds = train_head(head, sets["train"], args.steps, args.lr, args.batch, args.seed + 1)
        after = score(head, sets["val"], k)
        rows.append(
            {
                "head": name,
                "params": sum(p.numel() for p in head.parameters()),
                "pck_before": before["pck"],
                "pck_after": after["pck"],
                "loss_before": before["loss"],
                "loss_after": after["loss"],
                "seconds": seconds,
            }
        )
        print(f"{name}: PCK {before['pck']:.3f} -> {after['pck']:.3f} ({seconds:.0f} s)", flush=True)
    record = {
        "what": "fresh heatmap heads on a trained model's frozen features (benchmarks.heatmap_head_capacity)",
        "checkpoint": str(args.checkpoint),
        "data": str(args.data),
        "config": {key: value for key, value in vars(args).items() if key != "results"},
        "features": {
            "train": len(sets["train"].features),
            "val": len(sets["val"].features),
            "channels": in_channels,
        },
        "feature_seconds": feature_seconds,
        "rows": rows,
    }
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    write_results_json(out / "heatmap_head_capacity.json", record, "benchmarks.heatmap_head_capacity", argv)
    (out / "heatmap_head_capacity.md").write_text(markdown(record))
    return record


def markdown(record: dict) -> str:
    c = record["config"]
    lines = [
        "# Heatmap head or features? (`python -m benchmarks.heatmap_head_capacity`)",
        "",
        f"The frozen features (`GRMPoseNet.features`, {record['features']['channels']} channels at stride 4) of "
        f"`{record['checkpoint']}` on {record['features']['train']} training and {record['features']['val']} held-out "
        f"images of `{record['data']}` at {c['input_size']} px, no augmentation. Each head trained {c['steps']} "
        f"steps of batch {c['batch']} on them (AdamW, one-cycle to {c['lr']:g}, DEKR's heatmap MSE only); heatmap "
        "PCK on the held-out images (`grmpose.heatmap_pck`: the map's maximum in the person's box within 0.1 of "
        "the box diagonal). `trained`: the checkpoint's own head, continued; `W`: a fresh head of width W "
        "(1x1 transition, one BasicBlock, 1x1 to the maps); `WxD`: D BasicBlocks.",
        "",
        "| head | parameters | PCK at the start | PCK after | held-out loss after | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for r in record["rows"]:
        lines.append(
            f"| {r['head']} | {r['params']:,} | {r['pck_before']:.3f} | {r['pck_after']:.3f} | "
            f"{r['loss_after']:.5f} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
