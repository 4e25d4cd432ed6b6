"""Training: a plain loop with optional DDP and AMP, resumable exactly, stoppable by a signal.

``train(TrainConfig(...))`` runs on one process, or under ``torchrun --nproc_per_node=N`` on N
processes with DistributedDataParallel (NCCL on GPU, gloo on CPU; SyncBatchNorm only on GPU).
Rank 0 writes everything: ``config.json`` (the resolved config + git revision), ``log.jsonl``
(JSON lines), TensorBoard events (when installed), ``last.pt`` (resumable training checkpoint,
written atomically every epoch and every ``checkpoint_every`` steps), ``last.safetensors`` and
``best.safetensors`` (weights for sharing; the EMA weights when ``ema`` is on).

Exact resumption: the sample order of an epoch is a permutation drawn from ``(seed, epoch)``,
each sample's augmentation from ``(seed, epoch, index)``, the learning rate is a function of the
run's progress and step count (``grmpose.schedule``), and the checkpoint stores the model,
optimiser, EMA, AMP scaler, step inside the epoch, training time so far and torch's RNG state --
so a run stopped (even killed) and resumed from its last checkpoint ends with the same weights as
an uninterrupted one on CPU. A time budget (``max_minutes``) counts the training time of every
start of the run, so the budget and the schedule survive ``--resume``.

Preemption: SIGTERM or SIGINT (a cluster's notice before a kill, Ctrl-C) lets the current step
finish, writes ``last.pt`` and returns with ``stop_reason`` naming the signal (the CLI exits
128 + signal number and prints the ``--resume`` command). Under DDP the ranks agree after every
step (one all-reduce) whether any of them was signalled, so all stop at the same step. A second
signal stops at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from grmpose.checkpoint import read_checkpoint, save_training_checkpoint, save_weights, unwrap
from grmpose.config import get_preset
from grmpose.data.coco import (
    DataError,
    ImageRecord,
    annotated_images,
    load_coco_keypoints,
    load_split,
    resolve_dataset,
    resolve_dataset_parts,
)
from grmpose.data.dataset import OUTPUT_STRIDE, PoseDataset, collate
from grmpose.data.transforms import AugmentRanges
from grmpose.fileio import check_output_dir
from grmpose.losses import LossWeights, collate_targets, total_loss
from grmpose.model import adaptive_conv_kernel
from grmpose.model.init_weights import kaiming_init
from grmpose.model.net import GRMPoseNet
from grmpose.pretrained import load_pretrained
from grmpose.runtime import (
    DistInfo,
    StopSignals,
    ignore_stop_signals,
    keep_freed_memory,
    rng_state,
    set_rng_state,
    setup_distributed,
)
from grmpose.schedule import LR_SCHEDULES, SCHEDULES, WeightEMA, drop_fractions, lr_at, run_progress
from grmpose.spec import KeypointSpec
from grmpose.targets import build_targets

log = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "adamw")
INITS = ("dekr", "kaiming")
#: --heatmap-loss -> the model's heatmap activation it trains
HEATMAP_LOSSES = {"mse": "none", "focal": "sigmoid"}


def heatmap_loss_for(activation: str) -> str:
    """The ``--heatmap-loss`` that trains a model with this heatmap activation."""
    return next(name for name, act in HEATMAP_LOSSES.items() if act == activation)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; stored resolved in the run folder and checkpoints."""

    data: str
    out: str
    preset: str = "tiny"
    epochs: int | None = None  # default: the schedule's (140 COCO-like, 300 CrowdPose)
    schedule: str | None = None  # "coco" | "crowdpose"; default: by spec name, else coco
    lr_steps: tuple[int, ...] | None = None  # explicit epochs; default: the schedule scaled
    batch_size: int = 10  # per process
    accumulate: int = 1  # split each batch into this many chunks (same gradient, less memory)
    lr: float = 1e-3
    augment: bool = True  # the paper's augmentation; off for overfitting checks
    # horizontal flips in the augmentation (DEKR: 0.5); 0 for data whose left/right cue a mirror breaks
    # (the synthetic scenes have none: they are mirror-symmetric)
    flip_prob: float = 0.5
    # the other augmentation ranges (grmpose.data.transforms.AugmentRanges; defaults: DEKR's): rotation
    # in degrees, the crop box side as a multiple of the image's short side (> 1 zooms out), and the
    # shift in DEKR's unit of input_size / 200 crop pixels. Short runs on upright synthetic people
    # learn faster with less (benchmarks/results/demo_levers.md).
    max_rotation: float = 30.0
    scale_range: tuple[float, float] = (0.75, 1.5)
    max_translate: float = 40.0
    input_size: int | None = None  # default: the preset's
    # DataLoader worker processes; None: 2 on CUDA, 0 on the CPU, where a worker takes a core from the
    # training's own threads (tiny at 128 px on 2 cores: 23.7 images/s with 0 workers, 15.1 with 1)
    workers: int | None = None
    seed: int = 0
    val_every: int = 1  # epochs; 0 = never
    val_images: int | None = None  # evaluate on the first N validation images only
    val_flip: bool = True
    # heatmap PCK given the person (grmpose.heatmap_pck) on the first N validation images at each
    # validation: the localisation that moves long before AP does; 0 = off
    val_pck_images: int = 100
    max_minutes: float | None = None  # stop after this much time; lr steps then follow time, not epochs
    max_steps: int | None = None  # stop after this many optimiser steps in total
    checkpoint_every: int = 0  # steps; 0 = only at the end of each epoch
    log_every: int = 10
    amp: bool = True  # CUDA only
    # CPU: glibc malloc keeps freed memory instead of unmapping it each step (1.36x the images/s
    # in the throughput run of 4e2a65c; the process stays at its peak memory),
    # see grmpose.runtime.keep_freed_memory
    keep_freed_memory: bool = True
    device: str = "auto"
    resume: str | None = None
    # official HRNet ImageNet weights for the backbone (DEKR starts from hrnet_w32-36af842e.pth);
    # everything else keeps DEKR's initialisation. Not used when resuming.
    pretrained: str | None = None
    max_nonfinite: int = 5  # consecutive non-finite losses before the run stops
    offset_loss: float = (
        0.03  # factor of the offset loss (DEKR's); short CPU runs learn offsets faster with more
    )
    progress: bool = True
    # Training rules from DEKR (docs/architecture.md, "Training rules and their DEKR source"):
    center_sigma: float | None = None  # centre Gaussian σ (map px); default: the spec's (COCO 4, CrowdPose 2)
    sigma: float = 2.0  # keypoint Gaussian σ (map px), DEKR's at every input size
    skip_empty_images: bool = True  # train only on images with an annotation, as DEKR
    # Optimiser, learning-rate schedule and weight averaging (grmpose/schedule.py). The defaults are
    # DEKR's: Adam at 1e-3, no weight decay, x0.1 drops at the schedule's epochs, no warmup, no EMA.
    optimizer: str = "adam"  # "adam" | "adamw" (decoupled weight decay)
    weight_decay: float = 0.0  # applied to conv/linear weights only (not to norms or biases)
    lr_schedule: str = "step"  # "step" (x0.1 at the schedule's fractions) | "cosine"
    warmup_steps: int = 0  # linear warmup from lr / warmup_steps to lr over this many steps
    min_lr_ratio: float = 0.01  # cosine ends at lr * min_lr_ratio
    ema: float = 0.0  # decay of the weights' moving average; 0 = off
    offset_mean_pose: bool = False  # start the offset head's bias at the data's mean pose (not DEKR's 0)
    # weight initialisation: "dekr" (N(0, 0.001) convs, DEKR's) or "kaiming" (He's rule for the hidden
    # convs, for training without a pretrained backbone; grmpose.model.init_weights)
    init: str = "dekr"
    # the offset head's unit (map px per unit of its last conv's output; grmpose.model.heads); None: the
    # preset's (1, DEKR's). A larger unit is a larger step for that layer under Adam.
    offset_unit: float | None = None
    # the offset head's size: adaptive-conv blocks per keypoint and channels per keypoint; None: the
    # preset's (DEKR's 2 and 15; tiny's 1 and 8)
    offset_blocks: int | None = None
    offset_channels: int | None = None
    # heatmap loss: "mse" (DEKR's: raw maps, weighted MSE) or "focal" (sigmoid maps, CornerNet's
    # penalty-reduced focal loss; grmpose.losses); None: the checkpoint's when resuming, else "mse"
    heatmap_loss: str | None = None

    def __post_init__(self) -> None:
        check_train_config(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_train_config(cfg: TrainConfig) -> None:
    """Refuse impossible values with one line naming the ``grmpose train`` flag (ValueError)."""

    def bad(field: str, rule: str) -> None:
        flag = "--" + field.replace("_", "-")
        raise ValueError(f"{flag} must be {rule}, got {getattr(cfg, field)!r}")

    for field in ("batch_size", "accumulate", "log_every", "max_nonfinite"):
        if getattr(cfg, field) < 1:
            bad(field, "at least 1")
    for field in ("epochs", "val_images", "max_steps"):
        if getattr(cfg, field) is not None and getattr(cfg, field) < 1:
            bad(field, "at least 1")
    if cfg.workers is not None and cfg.workers < 0:
        bad("workers", "0 or more")
    for field in ("val_every", "checkpoint_every", "warmup_steps", "val_pck_images"):
        if getattr(cfg, field) < 0:
            bad(field, "0 or more")
    if cfg.accumulate > cfg.batch_size:
        bad("accumulate", f"at most --batch-size ({cfg.batch_size}): each chunk needs an image")
    if not (cfg.lr > 0 and np.isfinite(cfg.lr)):
        bad("lr", "a positive number")
    if cfg.max_minutes is not None and not (cfg.max_minutes > 0 and np.isfinite(cfg.max_minutes)):
        bad("max_minutes", "a positive number")
    if cfg.offset_unit is not None and not (cfg.offset_unit > 0 and np.isfinite(cfg.offset_unit)):
        bad("offset_unit", "a positive number")
    if cfg.offset_blocks is not None and not (isinstance(cfg.offset_blocks, int) and cfg.offset_blocks >= 1):
        bad("offset_blocks", "a positive whole number")
    if cfg.offset_channels is not None and not (isinstance(cfg.offset_channels, int) and cfg.offset_channels >= 1):
        bad("offset_channels", "a positive whole number")
    if cfg.input_size is not None and (cfg.input_size < 32 or cfg.input_size % 32):
        bad("input_size", "a positive multiple of 32")
    if cfg.lr_steps is not None and any(s < 1 for s in cfg.lr_steps):
        bad("lr_steps", "epochs of 1 or more")
    if not (cfg.offset_loss >= 0 and np.isfinite(cfg.offset_loss)):
        bad("offset_loss", "0 or more")
    if not (cfg.weight_decay >= 0 and np.isfinite(cfg.weight_decay)):
        bad("weight_decay", "0 or more")
    if not (cfg.sigma > 0 and np.isfinite(cfg.sigma)):
        bad("sigma", "a positive number")
    if not 0 <= cfg.flip_prob <= 1:
        bad("flip_prob", "a probability in [0, 1]")
    if not 0 <= cfg.max_rotation <= 180:
        bad("max_rotation", "degrees in [0, 180]")
    if len(cfg.scale_range) != 2 or not 0 < cfg.scale_range[0] <= cfg.scale_range[1] < float("inf"):
        bad("scale_range", "two positive numbers MIN MAX with MIN <= MAX")
    if not (cfg.max_translate >= 0 and np.isfinite(cfg.max_translate)):
        bad("max_translate", "0 or more")
    if not 0 <= cfg.min_lr_ratio <= 1:
        bad("min_lr_ratio", "between 0 and 1")
    if not 0 <= cfg.ema < 1:
        bad("ema", "a decay in [0, 1) (0: off)")
    if cfg.optimizer not in OPTIMIZERS:
        bad("optimizer", "one of " + ", ".join(OPTIMIZERS))
    if cfg.heatmap_loss is not None and cfg.heatmap_loss not in HEATMAP_LOSSES:
        bad("heatmap_loss", "one of " + ", ".join(HEATMAP_LOSSES))
    if cfg.init not in INITS:
        bad("init", "one of " + ", ".join(INITS))
    if cfg.lr_schedule not in LR_SCHEDULES:
        bad("lr_schedule", "one of " + ", ".join(LR_SCHEDULES))
    if cfg.schedule is not None and cfg.schedule not in SCHEDULES:
        bad("schedule", "one of " + ", ".join(SCHEDULES))


# ---------------------------------------------------------------------------- data
class TargetCollate:
    """Collate samples and build their training targets (runs inside DataLoader workers)."""

    def __init__(self, map_size: int, center_sigma: float = 4.0, sigma: float = 2.0) -> None:
        self.map_size = map_size
        self.center_sigma = center_sigma
        self.sigma = sigma

    def __call__(self, samples: list[dict]) -> dict:
        batch = collate(samples)
        size = (self.map_size, self.map_size)
        targets = [
            build_targets(
                k.numpy(),
                size,
                stride=OUTPUT_STRIDE,
                sigma=self.sigma,
                center_sigma=self.center_sigma,
                mask=m.numpy(),
                centers=c.numpy(),
                sizes=z.numpy(),
            )
            for k, m, c, z in zip(batch["keypoints"], batch["mask"], batch["centers"], batch["sizes"])
        ]
        batch["targets"] = collate_targets(targets)
        return batch


def mean_offsets(
    dataset: PoseDataset, collate_fn: TargetCollate, batch_size: int, images: int = 64
) -> torch.Tensor:
    """The mean pose of the training data as offsets: per offset channel (2K), the weighted mean of
    the offset targets over the first ``images`` samples of epoch 0 (0 where no person has the joint).

    It starts the offset head's bias at the mean pose (``OffsetHead.set_offset_bias``).
    """
    total, weight = None, None
    count = min(images, len(dataset))
    for lo in range(0, count, batch_size):
        batch = collate_fn([dataset[i] for i in range(lo, min(lo + batch_size, count))])
        off, w = batch["targets"]["offsets"], batch["targets"]["offset_weights"]
        s, n = (off * w).sum((0, 2, 3)), w.sum((0, 2, 3))
        total, weight = (s, n) if total is None else (total + s, weight + n)
    return torch.where(weight > 0, total / weight.clamp(min=1e-12), torch.zeros_like(total))


def epoch_order(n: int, seed: int, epoch: int, batch: int, rank: int, world: int) -> list[list[int]]:
    """This rank's batches of an epoch: a permutation from (seed, epoch), full global batches only."""
    perm = np.random.default_rng([seed, epoch, 7919]).permutation(n)
    global_batch = batch * world
    steps = n // global_batch
    if steps == 0:
        raise ValueError(f"{n} training images cannot fill one global batch of {global_batch}")
    return [
        perm[s * global_batch + rank * batch : s * global_batch + (rank + 1) * batch].tolist()
        for s in range(steps)
    ]


def present_images(records: list[ImageRecord], ann_file: str | Path) -> tuple[list[ImageRecord], int]:
    """The records whose image file exists, and how many were missing (logged with the first names)."""
    if not records:
        raise DataError(f"{ann_file}: no images listed, nothing to train on")
    exists = [r.path.is_file() for r in records]
    present = [r for r, e in zip(records, exists) if e]
    missing = [r for r, e in zip(records, exists) if not e]
    if missing:
        names = ", ".join(str(r.path) for r in missing[:3]) + (", ..." if len(missing) > 3 else "")
        log.warning(
            "%s: %d of %d training images missing on disk, skipped: %s",
            ann_file, len(missing), len(records), names,
        )  # fmt: skip
    if not present:
        raise DataError(
            f"{ann_file}: none of its {len(records)} images exists on disk (first: {records[0].path})"
        )
    return present, len(missing)


def git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
        rev = out.stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        ).stdout.strip()
        return (rev + ("-dirty" if dirty else "")) if rev else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def schedule_plan(cfg: TrainConfig, spec: KeypointSpec) -> tuple[int, tuple[float, ...]]:
    """Epoch count and the step schedule's drop points as fractions of the run.

    DEKR's schedule by name (``cfg.schedule``, else the spec's name if it has one, else COCO's),
    scaled to ``cfg.epochs``; see ``grmpose.schedule.drop_fractions``.
    """
    name = cfg.schedule or (spec.name if spec.name in SCHEDULES else "coco")
    epochs = cfg.epochs or SCHEDULES[name][0]
    epoch_driven = cfg.max_minutes is None and cfg.max_steps is None
    return epochs, drop_fractions(name, epochs, cfg.lr_steps, epoch_driven)


def default_workers(device: torch.device) -> int:
    """DataLoader workers when ``--workers`` is not given: 2 on CUDA (the GPU computes, the CPU
    prepares batches), 0 on the CPU. There the training's threads already use every core, and a
    worker process preempts one of them in each parallel op: measured with ``tiny`` at 128 px, batch
    8, on 2 cores, 23.7 images/s with 0 workers against 15.1 with 1 (preparing a batch in the main
    process costs about 3 ms per image)."""
    return 2 if device.type == "cuda" else 0


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam (DEKR's) or AdamW; with weight decay, norms and biases (1-D tensors) are not decayed.

    ``fused``: PyTorch's one-kernel implementation of the same update (CPU and CUDA); PyTorch picks
    it by default nowhere. For ``tiny``'s 239 tensors on this CPU one step takes 2.4 ms, against 10.0 ms
    for the multi-tensor (``foreach``) implementation this code used before and 13.8 ms for the
    per-tensor loop that is PyTorch's default on the CPU (medians of 5 rounds of 20 steps).
    """
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    if cfg.weight_decay == 0:
        return cls(model.parameters(), lr=cfg.lr, weight_decay=0.0, fused=True)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
    return cls(groups, lr=cfg.lr, fused=True)


def make_grad_scaler(use_amp: bool, device: torch.device) -> torch.amp.GradScaler:
    """The AMP loss scaler (a no-op when AMP is off); tests replace it with a fake one."""
    return torch.amp.GradScaler(device.type, enabled=use_amp)


# ---------------------------------------------------------------------------- logging
class RunLog:
    """JSON lines + optional TensorBoard, written by rank 0 only."""

    def __init__(self, out: Path, enabled: bool, fresh: bool = True) -> None:
        """``fresh``: a new run starts a new ``log.jsonl``; a resumed run (``fresh=False``) appends."""
        self.enabled = enabled
        self.path = out / "log.jsonl"
        self.tb = None
        if enabled and fresh:
            self.path.unlink(missing_ok=True)
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"))
            except ImportError:
                log.info("tensorboard not installed: logging to log.jsonl only")

    def write(self, record: dict, step: int) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                    self.tb.add_scalar(f"{record.get('kind', 'train')}/{key}", value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# ---------------------------------------------------------------------------- the loop
def train(cfg: TrainConfig) -> dict:
    """Train; returns a summary ``{"epochs", "steps", "images_per_s", "val": last metrics, ...}``."""
    info, device = setup_distributed(cfg.device)
    if device.type == "cpu" and cfg.keep_freed_memory and keep_freed_memory():
        log.info("malloc keeps freed memory for reuse (grmpose.runtime.keep_freed_memory)")
    out = Path(cfg.out)
    if info.main:
        check_output_dir(out)
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(".*.tmp*"):  # a run killed while writing a file leaves its temp file
            stale.unlink()
            log.info("removed %s, left by an interrupted run", stale)

    records, spec = load_split(cfg.data, "train")
    ann_files = " + ".join(str(a) for a, _ in resolve_dataset_parts(cfg.data, "train")[0])
    records, missing_images = present_images(records, ann_files)
    if cfg.skip_empty_images:
        annotated = annotated_images(records)
        if not annotated:
            raise DataError(f"{cfg.data}: no training image has an annotation (pass --keep-empty-images)")
        log.info("training on the %d of %d images with an annotation", len(annotated), len(records))
        records = annotated
    center_sigma = cfg.center_sigma if cfg.center_sigma is not None else spec.center_sigma
    if not center_sigma > 0:
        raise ValueError(f"center_sigma must be > 0, got {center_sigma}")
    state, extra = None, {}
    if cfg.resume:  # the checkpoint's model config is authoritative
        state, model_cfg, ckpt_spec, extra = read_checkpoint(cfg.resume)
        if ckpt_spec.num_keypoints != spec.num_keypoints:
            raise ValueError(
                f"{cfg.resume}: checkpoint spec {ckpt_spec.name!r} does not match the data's {spec.name!r}"
            )
    else:
        # the training options that change the preset's model (None: the preset's value)
        overrides = {
            "input_size": cfg.input_size or None,
            "offset_unit": cfg.offset_unit,
            "offset_blocks": cfg.offset_blocks,
            "offset_channels_per_kpt": cfg.offset_channels,
            "heatmap_activation": HEATMAP_LOSSES.get(cfg.heatmap_loss),
        }
        model_cfg = dataclasses.replace(
            get_preset(cfg.preset), **{name: value for name, value in overrides.items() if value is not None}
        )
    if cfg.heatmap_loss is not None and HEATMAP_LOSSES[cfg.heatmap_loss] != model_cfg.heatmap_activation:
        trained = heatmap_loss_for(model_cfg.heatmap_activation)
        raise ValueError(f"--heatmap-loss {cfg.heatmap_loss}: {cfg.resume} was trained with --heatmap-loss {trained}")
    epochs, drops = schedule_plan(cfg, spec)

    torch.manual_seed(cfg.seed)
    model = GRMPoseNet(model_cfg, spec.num_keypoints).to(device)
    if cfg.init == "kaiming" and state is None:
        kaiming_init(model, keep=model.prediction_layers())
    if cfg.pretrained and state is None:  # a resumed run already holds its trained weights
        load_pretrained(model, cfg.pretrained)
    optimizer = build_optimizer(model, cfg)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = make_grad_scaler(use_amp, device)

    start_epoch, start_step, global_step, best_ap, elapsed_before = 0, 0, 0, -1.0, 0.0
    if state is not None:
        model.load_state_dict(state)
        if "optimizer" in extra:  # a training checkpoint (a .safetensors file only holds weights)
            optimizer.load_state_dict(extra["optimizer"])
            if extra.get("scaler"):  # {} when AMP was off
                scaler.load_state_dict(extra["scaler"])
            start_epoch, start_step = int(extra["epoch"]), int(extra["step"])
            global_step, best_ap = int(extra["global_step"]), float(extra.get("best_ap", -1.0))
            elapsed_before = float(extra.get("elapsed_seconds", 0.0))
            set_rng_state(extra["rng"])
            warn_changed_config(cfg, extra.get("train_config"), cfg.resume)
        log.info("resumed from %s at epoch %d step %d", cfg.resume, start_epoch, start_step)

    if info.world > 1:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ddp = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    else:
        ddp = model

    dataset = PoseDataset(
        records, spec, model_cfg.input_size, augment=cfg.augment, seed=cfg.seed,
        ranges=AugmentRanges(
            max_rotation=cfg.max_rotation, min_scale=cfg.scale_range[0], max_scale=cfg.scale_range[1],
            max_translate=cfg.max_translate, flip_prob=cfg.flip_prob,
        ),
    )  # fmt: skip
    collate_fn = TargetCollate(model_cfg.input_size // OUTPUT_STRIDE, center_sigma, cfg.sigma)
    if cfg.offset_mean_pose and state is None:  # every rank computes the same mean from the same samples
        unwrap(model).offset_head.set_offset_bias(mean_offsets(dataset, collate_fn, cfg.batch_size))
    runlog = RunLog(out, info.main, fresh=not cfg.resume)
    if info.main:
        resolved = {
            "train": cfg.to_dict(),
            "model": model_cfg.to_dict(),
            "spec": spec.to_dict(),
            "git": git_revision(),
        }
        resolved["train"]["epochs"] = epochs
        resolved["train"]["lr_drop_fractions"] = list(drops)
        resolved["train"]["center_sigma"] = center_sigma
        (out / "config.json").write_text(json.dumps(resolved, indent=2))

    # The weights that validation and the .safetensors files hold: the moving average when it is on.
    ema = WeightEMA(model, cfg.ema) if cfg.ema > 0 else None
    if ema is not None and extra.get("ema"):
        ema.load_state_dict(extra["ema"])
    elif ema is not None and "optimizer" in extra:
        log.warning("%s holds no EMA weights: the average starts from the resumed weights", cfg.resume)
    shared = ema.model if ema is not None else model

    run_meta = {"train_config": json.dumps(cfg.to_dict()), "git": git_revision()}
    if device.type == "cpu" and adaptive_conv_kernel.enabled():
        adaptive_conv_kernel.load()  # a first use compiles it (~20 s): before the training clock starts
    t_wall, t_start = time.time(), _clock()
    elapsed = elapsed_before  # training time over every start of this run (seconds, same on all ranks)
    images_seen, nonfinite, stop_reason, stop_signal = 0, 0, None, None
    last_val: dict = {}
    train_time = 0.0  # forward/backward/step only
    loop_time = 0.0  # the epochs' loops, data loading included
    loss_weights = LossWeights(offset=cfg.offset_loss, heatmap_form=heatmap_loss_for(model_cfg.heatmap_activation))

    def checkpoint(epoch: int, step: int) -> None:
        if not info.main:
            return
        save_training_checkpoint(
            out / "last.pt",
            model,
            model_cfg,
            spec,
            optimizer=optimizer.state_dict(),
            scaler=scaler.state_dict(),
            ema=ema.state_dict() if ema is not None else {},
            epoch=epoch,
            step=step,
            global_step=global_step,
            best_ap=best_ap,
            elapsed_seconds=elapsed,
            rng=rng_state(),
            **run_meta,
        )

    def sync(signals: StopSignals) -> bool:
        """Update ``elapsed`` and say whether a stop signal arrived, agreed by all ranks (max)."""
        nonlocal elapsed
        now, signalled = elapsed_before + (_clock() - t_start), signals.received is not None
        if info.world > 1:
            flags = torch.tensor([now, float(signalled)], dtype=torch.float64, device=device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            now, signalled = flags[0].item(), flags[1].item() > 0
        elapsed = now
        return signalled

    def budget_reason() -> str | None:
        if cfg.max_minutes is not None and elapsed >= 60 * cfg.max_minutes:
            return f"time budget of {cfg.max_minutes} min reached"
        if cfg.max_steps is not None and global_step >= cfg.max_steps:
            return f"{cfg.max_steps} steps reached"
        return None

    def signal_reason(signals: StopSignals) -> tuple[str, str]:
        if signals.received is None:
            return "SIGTERM", "stopped by a signal to another process of the run"
        name = signal.Signals(signals.received).name
        return name, f"stopped by {name}"

    workers = default_workers(device) if cfg.workers is None else cfg.workers
    with StopSignals() as signals:
        stop_reason = budget_reason()  # a resumed run whose budget is already used up
        for epoch in range(start_epoch, epochs):
            if stop_reason:
                break
            dataset.set_epoch(epoch)
            batches = epoch_order(len(dataset), cfg.seed, epoch, cfg.batch_size, info.rank, info.world)
            first = start_step if epoch == start_epoch else 0
            loader = torch.utils.data.DataLoader(
                dataset,
                batch_sampler=batches[first:],
                collate_fn=collate_fn,
                num_workers=workers,
                persistent_workers=False,
                pin_memory=device.type == "cuda",
                worker_init_fn=ignore_stop_signals,
            )
            bar = _progress(
                loader,
                total=len(batches),
                initial=first,
                desc=f"epoch {epoch + 1}/{epochs}",
                enabled=cfg.progress and info.main,
            )
            ddp.train()
            step = first
            t_epoch = time.time()
            for batch in bar:
                progress = run_progress(
                    elapsed_s=elapsed, max_minutes=cfg.max_minutes, global_step=global_step,
                    max_steps=cfg.max_steps, epoch=epoch, batch=step, batches_per_epoch=len(batches),
                    epochs=epochs,
                )  # fmt: skip
                lr = lr_at(
                    cfg.lr, progress, global_step, schedule=cfg.lr_schedule, drops=drops,
                    warmup_steps=cfg.warmup_steps, min_lr_ratio=cfg.min_lr_ratio,
                )  # fmt: skip
                for group in optimizer.param_groups:
                    group["lr"] = lr
                t0 = time.time()
                loss_value, parts, status = _train_step(
                    ddp, optimizer, scaler, batch, device, use_amp, cfg.accumulate, info, loss_weights
                )
                step += 1
                train_time += time.time() - t0
                images_seen += batch["image"].shape[0] * info.world
                signalled = sync(signals)
                if status == "ok":
                    nonfinite = 0
                    global_step += 1
                    if ema is not None:
                        ema.update(model)
                    if info.main and global_step % cfg.log_every == 0:
                        record = {"kind": "train", "epoch": epoch, "step": global_step, "loss": loss_value,
                                  "lr": lr, **parts}  # fmt: skip
                        runlog.write(record, global_step)
                        if hasattr(bar, "set_postfix"):
                            bar.set_postfix(loss=f"{loss_value:.4f}")
                    if cfg.checkpoint_every and global_step % cfg.checkpoint_every == 0:
                        checkpoint(epoch, step)
                elif status == "overflow":
                    log.info(
                        "fp16 gradient overflow at epoch %d step %d: step skipped, loss scale now %g",
                        epoch, step, scaler.get_scale(),
                    )  # fmt: skip
                else:
                    nonfinite += 1
                    log.warning(
                        "non-finite loss at epoch %d step %d: step skipped (%d in a row)",
                        epoch,
                        step,
                        nonfinite,
                    )
                if nonfinite >= cfg.max_nonfinite:
                    stop_reason = f"{nonfinite} non-finite losses in a row"
                elif signalled:
                    stop_signal, stop_reason = signal_reason(signals)
                else:
                    stop_reason = budget_reason()
                if stop_reason:
                    break
            loop_time += time.time() - t_epoch
            if hasattr(bar, "close"):
                bar.close()
            if stop_reason and stop_reason.endswith("in a row"):
                log.error("stopping: %s; the last good checkpoint is kept", stop_reason)
                break
            epoch_done = step >= len(batches)
            if info.main:
                rate = images_seen / max(loop_time, 1e-9)
                runlog.write({"kind": "epoch", "epoch": epoch, "step": global_step, "images_per_s": rate,
                              "epoch_seconds": time.time() - t_epoch}, global_step)  # fmt: skip
            position = (epoch + 1, 0) if epoch_done else (epoch, step)
            checkpoint(*position)
            if stop_signal:
                break
            want_val = cfg.val_every and (
                epoch_done and (epoch + 1) % cfg.val_every == 0 or stop_reason or epoch + 1 == epochs
            )
            if want_val:
                last_val = _validate(shared, cfg, spec, model_cfg.input_size, device, info, out)
                if info.main and last_val:
                    runlog.write(
                        {
                            "kind": "val",
                            "epoch": epoch,
                            "step": global_step,
                            "minutes": elapsed / 60,
                            **last_val,
                        },
                        global_step,
                    )
                    ap = last_val.get("AP", -1.0)
                    if ap > best_ap:
                        best_ap = ap
                        save_weights(out / "best.safetensors", shared, model_cfg, spec)
                        checkpoint(*position)  # with the new best AP, so a resumed run keeps comparing to it
                if sync(signals) and not stop_reason:
                    stop_signal, stop_reason = signal_reason(signals)
    if info.main and not stop_signal:
        save_weights(out / "last.safetensors", shared, model_cfg, spec)
    runlog.close()
    summary = {
        "epochs": epochs,
        "steps": global_step,
        "images_per_s": images_seen / max(loop_time, 1e-9),
        "compute_images_per_s": images_seen / max(train_time, 1e-9),
        "minutes": (time.time() - t_wall) / 60,
        "train_minutes_total": elapsed / 60,  # every start of the run (what max_minutes counts)
        "val": last_val,
        "stop_reason": stop_reason or "finished",
        "skipped_images": dataset.skipped,
        "missing_images": missing_images,
    }
    if stop_signal:
        summary["signal"] = stop_signal
        summary["resume"] = str(out / "last.pt")
        log.warning(
            "%s: resumable checkpoint %s (epoch %d, step %d)", stop_reason, out / "last.pt", *position
        )
    if dataset.skipped:
        log.warning("skipped %d unreadable training sample(s) (see the warnings above)", dataset.skipped)
    if info.main:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if info.world > 1:
        dist.barrier()
    return summary


def warn_changed_config(cfg: TrainConfig, stored: str | None, path: str) -> None:
    """Log the settings a resumed run changes (a different budget or schedule changes the lr curve)."""
    if not stored:
        return
    harmless = {
        "resume", "progress", "workers", "device", "log_every", "checkpoint_every", "data", "out",
        "keep_freed_memory",
    }  # fmt: skip
    before, now = json.loads(stored), cfg.to_dict()
    changed = [
        f"{k}: {before[k]!r} -> {now[k]!r}"
        for k in now
        if k in before and k not in harmless and json.dumps(before[k]) != json.dumps(now[k])
    ]
    if changed:
        log.warning("resuming %s with changed settings: %s", path, "; ".join(changed))


def _clock() -> float:
    """Seconds on a monotonic clock: the time budget and the schedule's progress (tests patch it)."""
    return time.monotonic()


def _progress(iterable, total: int, initial: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=False)


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every element of every tensor is finite.

    One multi-tensor 2-norm first (about 1 ms for ``tiny``'s 239 gradients on this CPU, against 6 ms for
    an ``isfinite`` per tensor): a NaN or an infinity anywhere makes it non-finite, so a finite norm
    settles it. Only a non-finite norm, which finite values above ~1e19 can also give, is checked
    element by element.
    """
    if not tensors:
        return True
    if bool(torch.nn.utils.get_total_norm(tensors, foreach=True).isfinite()):
        return True
    return all(bool(t.isfinite().all()) for t in tensors)


def _train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    batch: dict,
    device: torch.device,
    use_amp: bool,
    accumulate: int,
    info: DistInfo,
    loss_weights: LossWeights,
) -> tuple[float, dict[str, float], str]:
    """One optimiser step over the batch (split into ``accumulate`` chunks).

    Returns ``(loss, loss parts, status)``. ``status`` is ``"ok"``; ``"overflow"`` when AMP's scaled
    fp16 gradients overflowed (the scaler lowers its scale; routine while the scale calibrates);
    or ``"nonfinite"`` when the loss, or without AMP a gradient, is not finite. A step that is not
    ``"ok"`` leaves the weights, the optimiser state and the BatchNorm statistics as they were.
    """
    images = batch["image"].to(device, non_blocking=True)
    targets = batch["targets"]
    chunks = max(1, min(accumulate, images.shape[0]))
    bounds = np.linspace(0, images.shape[0], chunks + 1).round().astype(int)
    optimizer.zero_grad(set_to_none=True)
    total, parts_sum = 0.0, {}
    finite = True
    # The forward pass updates BatchNorm statistics; a skipped step must undo that too.
    buffers = list(model.buffers())
    saved = [b.detach().clone() for b in buffers]
    for c in range(chunks):
        lo, hi = bounds[c], bounds[c + 1]
        chunk_targets = {k: v[lo:hi] for k, v in targets.items()}
        sync = c == chunks - 1 or not hasattr(model, "no_sync")
        ctx = model.no_sync() if not sync else contextlib.nullcontext()
        with ctx:
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                outputs = model(images[lo:hi])
            loss, parts = total_loss(tuple(o.float() for o in outputs), chunk_targets, loss_weights)
            if not torch.isfinite(loss):
                finite = False
            scaler.scale(loss / chunks).backward()
        total += loss.item() / chunks
        for k, v in parts.items():
            parts_sum[k] = parts_sum.get(k, 0.0) + v.item() / chunks
    if info.world > 1:  # every rank must agree to skip, or DDP would deadlock / diverge
        flag = torch.tensor([0.0 if finite else 1.0], device=device)
        dist.all_reduce(flag)
        finite = flag.item() == 0
    # Unscale first (a no-op without AMP) so the gradients checked are the real ones. DDP has
    # averaged them, so every rank reaches the same verdict.
    scaler.unscale_(optimizer)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    grads_ok = all_finite(grads)
    if not finite:
        status = "nonfinite"
    elif not grads_ok:
        status = "overflow" if scaler.is_enabled() else "nonfinite"
    else:
        status = "ok"
    if status == "ok":
        scaler.step(optimizer)
    scaler.update()  # a no-op without AMP; after an overflow it lowers the scale
    if status != "ok":
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for b, s in zip(buffers, saved):
                b.copy_(s)
    return total, parts_sum, status


# ---------------------------------------------------------------------------- validation
def _validation_pck(
    model: nn.Module, cfg: TrainConfig, spec: KeypointSpec, input_size: int, ann_file, image_dir
) -> float | None:
    """Heatmap PCK (``grmpose.heatmap_pck``) on the first validation images by id; None when the
    split has no labelled person or an image cannot be read (the AP above already counted it)."""
    from grmpose.heatmap_pck import heatmap_pck

    limit = cfg.val_pck_images if cfg.val_images is None else min(cfg.val_pck_images, cfg.val_images)
    records = sorted(load_coco_keypoints(ann_file, image_dir, spec), key=lambda r: r.image_id)[:limit]
    was_training = model.training
    try:
        result = heatmap_pck(model, records, spec, input_size)
    except DataError as err:
        log.warning("no heatmap PCK this validation: %s", err)
        return None
    finally:
        model.train(was_training)
    return result["pck"] if result["joints"] else None


def _validate(
    model: nn.Module, cfg: TrainConfig, spec: KeypointSpec, input_size: int, device, info: DistInfo, out: Path
) -> dict:
    """AP on the validation split, and the heatmap PCK on its first images (rank 0; others wait)."""
    metrics: dict = {}
    if info.main:
        try:
            ann_file, image_dir, _ = resolve_dataset(cfg.data, "val")
        except (ValueError, FileNotFoundError) as err:
            log.warning("no validation split (%s): skipping validation", err)
            ann_file = None
        if ann_file is not None:
            from grmpose.evaluate_run import evaluate_model

            metrics = evaluate_model(
                unwrap(model), spec, input_size, ann_file, image_dir, out / "val_results.json",
                flip=cfg.val_flip, max_images=cfg.val_images, progress=cfg.progress, device=device,
            )  # fmt: skip
            if cfg.val_pck_images:
                pck = _validation_pck(unwrap(model), cfg, spec, input_size, ann_file, image_dir)
                if pck is not None:
                    metrics["heatmap_pck"] = pck
    if info.world > 1:
        dist.barrier()
    return metrics
