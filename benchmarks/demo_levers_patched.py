"""Levers that no ``grmpose train`` option sets, measured as ``benchmarks.demo_levers`` measures its cases.

Each case patches grmpose in this process only (a changed initialisation, target or head, or a denser
training set), then trains and evaluates the demo's settings for the same minutes as the other rows:

    python -m benchmarks.demo_levers_patched CASE [--minutes 4] [--out runs/demo_levers]

It appends the case's row to ``<out>/results.jsonl`` and rewrites ``benchmarks/results/demo_levers.{json,md}``
from every row there (``benchmarks.demo_levers.write_tables``). The afternoon rows of 2026-12-07 were
measured with these patches written in a scratch script, the supervised person scale and the evening rows
(offset radius 8, residual blocks starting as the identity, width 12) and the night rows (deep supervision of the
heatmaps, heatmap head widths 32 and 64) with this module; it keeps them all so
that the rows can be re-run. None is an option of ``grmpose train``: none measured better than the spread of
runs of the demo's own settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import benchmarks.demo_levers as demo_levers
import grmpose.config
import grmpose.train
from grmpose.data.dataset import PoseDataset
from grmpose.demo import DATA_MARKER, DemoConfig, data_marker
from grmpose.model.blocks import BasicBlock, Bottleneck
from grmpose.model.heads import OffsetHead

BASE = (
    "the demo's settings (192 px, no geometric augmentation, learning rate 4e-3, DEKR's flips in training "
    "and the flip test)"
)


def translation_at_mean_pose(affine: float | None) -> None:
    """The first adaptive block's translation t starts at each joint's mean position (bias = minus the
    mean-pose offsets, set where the offset head's bias is set to the mean pose); with ``affine``, A
    starts at that multiple of the identity."""
    set_bias = OffsetHead.set_offset_bias

    @torch.no_grad()
    def patched(self: OffsetHead, mean_offsets: torch.Tensor) -> None:
        set_bias(self, mean_offsets)
        conv = self.blocks[0].conv
        k = self.num_keypoints
        conv.translation.bias.copy_(-torch.as_tensor(mean_offsets, dtype=torch.float32).reshape(2 * k))
        if affine is not None:
            conv.affine.bias.copy_(torch.tensor([affine, 0.0, 0.0, affine]).repeat(k))

    OffsetHead.set_offset_bias = patched


def progressive_resize(first_images: int, small: int, final: int) -> None:
    """The first ``first_images`` training samples at ``small`` px, the rest at ``final`` (the mean pose,
    from the first 64 samples ``grmpose.train.mean_offsets`` loads, stays at ``final``)."""
    load = PoseDataset.load_sample
    loaded = [0]

    def load_sample(self: PoseDataset, index: int) -> dict:
        loaded[0] += 1
        self.input_size = small if 64 < loaded[0] <= 64 + first_images else final
        return load(self, index)

    collate = grmpose.train.TargetCollate.__call__

    def call(self: grmpose.train.TargetCollate, samples: list[dict]) -> dict:
        self.map_size = samples[0]["image"].shape[-1] // grmpose.train.OUTPUT_STRIDE
        return collate(self, samples)

    PoseDataset.load_sample = load_sample
    grmpose.train.TargetCollate.__call__ = call


def offset_radius(radius: int) -> None:
    """Offset targets within ``radius`` map px of each centre (DEKR's: 4)."""
    grmpose.train.build_targets = functools.partial(grmpose.train.build_targets, center_radius=radius)


def person_scale(step: float, supervised: float = 0.0) -> None:
    """Offsets in units of a predicted person scale: the offset maps times ``exp(step * s)``, ``s`` a 1x1
    conv from the heads' input that starts at 0 (so the network starts as DEKR's). With ``supervised`` > 0,
    ``step * s`` is also pulled towards the log of each person's size (relative to the first batch's mean
    log size) at the cells with offset targets, by a smooth-L1 term (beta 0.1) of that factor."""
    init, forward = OffsetHead.__init__, OffsetHead.forward
    last = {}  # the newest forward's scale map, for the loss term

    def __init__(self: OffsetHead, in_channels: int, *args, **kwargs) -> None:
        init(self, in_channels, *args, **kwargs)
        self.scale = nn.Conv2d(in_channels, 1, 1)

    def special_init(self: OffsetHead) -> None:  # after the generic pass; He's re-draw skips zero convs
        nn.init.zeros_(self.scale.weight)
        nn.init.zeros_(self.scale.bias)

    def scaled_forward(self: OffsetHead, x: torch.Tensor) -> torch.Tensor:
        last["s"] = step * self.scale(x)
        return forward(self, x) * torch.exp(last["s"])

    OffsetHead.__init__ = __init__
    OffsetHead.special_init = special_init
    OffsetHead.forward = scaled_forward
    if supervised <= 0:
        return
    total_loss = grmpose.train.total_loss

    def supervised_loss(outputs, targets, factors):
        loss, parts = total_loss(outputs, targets, factors)
        s = last["s"]
        weight = targets["offset_weights"].amax(1, keepdim=True).to(s.device)  # 1 / size at target cells
        cells = weight > 0
        if not s.requires_grad or not cells.any():
            return loss, parts
        log_size = -torch.log(weight[cells])
        last.setdefault("reference", float(log_size.mean()))
        d = (s[cells] - (log_size - last["reference"])).abs()
        return loss + supervised * torch.where(d < 0.1, 5.0 * d * d, d - 0.05).mean(), parts

    grmpose.train.total_loss = supervised_loss


def zero_init_residual() -> None:
    """After He's initialisation, the last BatchNorm of every residual branch (BasicBlock, Bottleneck) gets
    a zero scale, so that each block starts as the identity (Goyal et al. 2017; torchvision's
    ``zero_init_residual``)."""
    init = grmpose.train.kaiming_init

    def patched(model: nn.Module, keep: set[nn.Module]) -> nn.Module:
        init(model, keep)
        for m in model.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.conv2[1].weight)
            elif isinstance(m, Bottleneck):
                nn.init.zeros_(m.conv3[1].weight)
        return model

    grmpose.train.kaiming_init = patched


def tiny_width(width: int) -> None:
    """The ``tiny`` preset's backbone width (its branches C, 2C, 4C, 8C; the heads' input 16C) set to ``width``."""
    grmpose.config.PRESETS["tiny"] = dataclasses.replace(grmpose.config.PRESETS["tiny"], width=width)


def heatmap_head_width(channels: int) -> None:
    """The ``tiny`` preset's heatmap head width (its 1x1 transition and BasicBlock) set to ``channels``."""
    grmpose.config.PRESETS["tiny"] = dataclasses.replace(
        grmpose.config.PRESETS["tiny"], head_channels=channels
    )


def intermediate_heatmaps(factor: float) -> None:
    """Deep supervision: in training, a 1x1 conv on each of the GRM's inputs p1 and p2 (the stride-4
    outputs of stages 2 and 3) predicts the K + 1 heatmaps too, and their MSE against the same targets
    is added to the loss with ``factor`` each (the model's outputs are unchanged)."""
    from grmpose.losses import heatmap_loss
    from grmpose.model.net import GRMPoseNet

    init, layers = GRMPoseNet.__init__, GRMPoseNet.prediction_layers
    last: dict[str, list[torch.Tensor]] = {}

    def __init__(self: GRMPoseNet, config, num_keypoints: int) -> None:
        init(self, config, num_keypoints)
        c = self.backbone.widths[0]
        self.aux = nn.ModuleList([nn.Conv2d(c, num_keypoints + 1, 1) for _ in range(2)])
        for conv in self.aux:  # DEKR's start for prediction layers
            nn.init.normal_(conv.weight, std=0.001)
            nn.init.zeros_(conv.bias)
        backbone_forward = self.backbone.forward

        def backbone_with_aux(x: torch.Tensor):
            p1, p2, stage4 = backbone_forward(x)
            if self.training:
                last["aux"] = [self.aux[0](p1), self.aux[1](p2)]
            return p1, p2, stage4

        self.backbone.forward = backbone_with_aux

    GRMPoseNet.__init__ = __init__
    GRMPoseNet.prediction_layers = lambda self: layers(self) | set(self.aux)
    total_loss = grmpose.train.total_loss

    def loss_with_aux(outputs, targets, factors):
        loss, parts = total_loss(outputs, targets, factors)
        aux = last.pop("aux", None)
        if aux is None:
            return loss, parts
        gt = targets["heatmaps"].to(aux[0].device)
        w = targets["heat_weights"].to(aux[0].device)
        return loss + factor * sum(heatmap_loss(a.float(), gt, w) for a in aux), parts

    grmpose.train.total_loss = loss_with_aux


def denser_training_set(max_people: int, out: Path) -> None:
    """Generate the demo's training set with up to ``max_people`` people at the demo level's sizes into
    ``out/data``, and the demo's own held-out set (same seed, same images) beside it."""
    from grmpose.data.synthetic import derived_seed, generate_dataset

    cfg = DemoConfig()
    data = out / "data"
    if (data / DATA_MARKER).is_file():
        return
    kwargs = {"height_range": cfg.height_range}
    generate_dataset(data, "coco", cfg.train_images, cfg.seed, cfg.image_size, "train", max_people, **kwargs)
    generate_dataset(
        data,
        "coco",
        cfg.val_images,
        derived_seed(cfg.seed, 1),
        cfg.image_size,
        "val",
        cfg.max_people,
        **kwargs,
    )
    # run_demo's marker of its own data: the demo then trains on this set as it is
    (data / DATA_MARKER).write_text(json.dumps(data_marker(cfg)))


#: name -> (what changes, the patch's fields for the row, the patch; it gets the case's output folder)
CASES: dict[str, tuple[str, dict, Callable[[Path], None]]] = {
    "adaptive_t_mean": (
        f"{BASE}, the adaptive convolution's translation t starting at each keypoint's mean position (its bias "
        "set to minus the mean-pose offset, as the offset head's bias is set to the mean pose), so that its taps "
        "start on where the joint usually is rather than on the centre (OffsetHead.set_offset_bias patched in "
        "the process; no option)",
        {"t bias (patched)": "minus the mean offsets"},
        lambda out: translation_at_mean_pose(None),
    ),
    "adaptive_t_mean_A1": (
        f"{BASE}, t starting at the mean joint position as in the row above and A at the identity: a regular "
        "3x3 conv around the mean joint at the start (patched in the process; no option)",
        {"t bias (patched)": "minus the mean offsets", "A bias (patched)": 1.0},
        lambda out: translation_at_mean_pose(1.0),
    ),
    "progressive_128": (
        f"{BASE}, progressive resizing: the first 3,200 training images at 128 px, the rest at 192 (dataset "
        "and target maps patched in the process; no option)",
        {"input size (patched)": "128 for 3200 images, then 192"},
        lambda out: progressive_resize(3200, 128, DemoConfig.input_size),
    ),
    "offset_radius2": (
        f"{BASE}, offset targets within 2 map px of each centre instead of DEKR's 4 (build_targets' "
        "center_radius patched in the process; no option)",
        {"center_radius (patched)": 2},
        lambda out: offset_radius(2),
    ),
    "offset_radius8": (
        f"{BASE}, offset targets within 8 map px of each centre instead of DEKR's 4: about 4x the supervised "
        "cells per person (build_targets' center_radius patched in the process; no option)",
        {"center_radius (patched)": 8},
        lambda out: offset_radius(8),
    ),
    "zero_init_residual": (
        f"{BASE}, every residual block starting as the identity: the scale of the last BatchNorm of each "
        "BasicBlock and Bottleneck set to 0 after He's initialisation (Goyal et al. 2017; kaiming_init "
        "patched in the process; no option)",
        {"init (patched)": "He's, residual branches' last BatchNorm scale 0"},
        lambda out: zero_init_residual(),
    ),
    "width12": (
        f"{BASE}, backbone width 12 (not tiny's 16): a lighter tiny-class network, the heads' input 192 "
        "channels instead of 256 (the tiny preset patched in the process; no option sets the width)",
        {"width (patched)": 12},
        lambda out: tiny_width(12),
    ),
    "head32": (
        f"{BASE}, heatmap head width 32 (not tiny's 16 = its backbone width, DEKR's rule; the tiny preset "
        "patched in the process; no option sets it)",
        {"head_channels (patched)": 32},
        lambda out: heatmap_head_width(32),
    ),
    "head64": (
        f"{BASE}, heatmap head width 64 (not tiny's 16; the tiny preset patched in the process; no option sets it)",
        {"head_channels (patched)": 64},
        lambda out: heatmap_head_width(64),
    ),
    "intermediate_heatmaps": (
        f"{BASE}, deep supervision: the heatmaps also predicted by a 1x1 conv from each of the GRM's inputs p1 "
        "and p2 (stride 4, after stages 2 and 3) in training, their MSE added with factor 1 each; the model's "
        "outputs unchanged (GRMPoseNet and the loss patched in the process; no option)",
        {"intermediate heatmap losses (patched)": "p1, p2, factor 1"},
        lambda out: intermediate_heatmaps(1.0),
    ),
    "offset_person_scale": (
        f"{BASE}, offsets in units of a predicted person scale: the offset maps multiplied by exp(s), s a 1x1 "
        "conv from the heads' input, zero at the start so the network starts as DEKR's (OffsetHead patched "
        "in the process; no option)",
        {"offset scale (patched)": "exp(conv1x1(x)) x offsets"},
        lambda out: person_scale(1.0),
    ),
    "offset_person_scale_small_step": (
        f"{BASE}, offsets in units of a predicted person scale as in the row above, with s = 0.02 x the 1x1 "
        "conv (a 50x smaller step for s under Adam; OffsetHead patched in the process; no option)",
        {"offset scale (patched)": "exp(0.02 conv1x1(x)) x offsets"},
        lambda out: person_scale(0.02),
    ),
    "offset_person_scale_supervised": (
        f"{BASE}, offsets in units of a predicted person scale, s = 0.1 x the 1x1 conv, also pulled towards the "
        "log of the person's size at the cells with offset targets (smooth-L1, factor 1; OffsetHead and the "
        "loss patched in the process; no option)",
        {"offset scale (patched)": "exp(0.1 conv1x1(x)) x offsets, log size supervised (factor 1)"},
        lambda out: person_scale(0.1, supervised=1.0),
    ),
    "train_people8": (
        f"{BASE}, training images with up to 8 people at the demo level's sizes (9,037 people in 2,000 images "
        "instead of 6,026); the same held-out set of 1-5 (the training set generated outside the demo; no "
        "option)",
        {"training set": "max_people 8"},
        lambda out: denser_training_set(8, out),
    ),
    "train_people12": (
        f"{BASE}, training images with up to 12 people at the demo level's sizes (13,041 people in 2,000 "
        "images); the same held-out set of 1-5 (the training set generated outside the demo; no option)",
        {"training set": "max_people 12"},
        lambda out: denser_training_set(12, out),
    ),
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("case", choices=sorted(CASES))
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--out", default="runs/demo_levers")
    args = parser.parse_args(argv)
    change, fields, patch = CASES[args.case]
    root = Path(args.out)
    (root / args.case).mkdir(parents=True, exist_ok=True)
    patch(root / args.case)
    demo_levers.CASES[args.case] = (change, {})  # the demo's own settings; the change is the patch
    base_data = root / "base" / "data"
    rec = demo_levers.run_case(args.case, args.minutes, root, base_data if base_data.is_dir() else None)
    rec["fields"] = fields
    with (root / "results.jsonl").open("a") as f:
        f.write(json.dumps(rec) + "\n")
    print(
        f"{args.case}: AP {rec['AP']:.4f} (hybrid {rec['hybrid_AP']:.4f}), {rec['steps']} steps", flush=True
    )
    demo_levers.write_tables(demo_levers.read_rows(root), argv, "benchmarks.demo_levers_patched")
    return rec


if __name__ == "__main__":
    main()
