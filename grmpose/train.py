"""Training: a plain loop with optional DDP and AMP, resumable exactly.

``train(TrainConfig(...))`` runs on one process, or under ``torchrun --nproc_per_node=N`` on N
processes with DistributedDataParallel (NCCL on GPU, gloo on CPU; SyncBatchNorm only on GPU).
Rank 0 writes everything: ``config.json`` (the resolved config + git revision), ``log.jsonl``
(JSON lines), TensorBoard events (when installed), ``last.pt`` (resumable training checkpoint,
written atomically every epoch and every ``checkpoint_every`` steps), ``last.safetensors`` and
``best.safetensors`` (weights for sharing).

Exact resumption: the sample order of an epoch is a permutation drawn from ``(seed, epoch)``,
each sample's augmentation from ``(seed, epoch, index)``, and the checkpoint stores the model,
optimiser, scheduler, step inside the epoch and torch's RNG state -- so a run stopped (even
killed) and resumed from its last checkpoint ends with the same weights as an uninterrupted one
on CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
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
from grmpose.data.coco import DataError, ImageRecord, load_coco_keypoints, resolve_dataset
from grmpose.data.dataset import OUTPUT_STRIDE, PoseDataset, collate
from grmpose.fileio import check_output_dir
from grmpose.losses import LossWeights, collate_targets, total_loss
from grmpose.model.net import GRMPoseNet
from grmpose.spec import KeypointSpec
from grmpose.targets import build_targets

log = logging.getLogger(__name__)

# Paper schedules (epochs, lr steps); scaled proportionally when fewer epochs are asked for.
SCHEDULES: dict[str, tuple[int, tuple[int, ...]]] = {"coco": (140, (90, 120)), "crowdpose": (300, (200, 260))}


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
    input_size: int | None = None  # default: the preset's
    workers: int = 2
    seed: int = 0
    val_every: int = 1  # epochs; 0 = never
    val_images: int | None = None  # evaluate on the first N validation images only
    val_flip: bool = True
    max_minutes: float | None = None  # stop after this much time; lr steps then follow time, not epochs
    max_steps: int | None = None  # stop after this many optimiser steps in total
    checkpoint_every: int = 0  # steps; 0 = only at the end of each epoch
    log_every: int = 10
    amp: bool = True  # CUDA only
    device: str = "auto"
    resume: str | None = None
    max_nonfinite: int = 5  # consecutive non-finite losses before the run stops
    offset_loss: float = (
        0.03  # factor of the offset loss (DEKR's); short CPU runs learn offsets faster with more
    )
    progress: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------- distributed
@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_name: str) -> tuple[DistInfo, torch.device]:
    """Initialise the process group when launched by torchrun; choose the device honestly."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    if device_name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' asked for, but CUDA is not available on this machine")
        device = torch.device("cuda", local_rank if world > 1 else (torch.device(device_name).index or 0))
        torch.cuda.set_device(device)
    else:
        device = torch.device(device_name)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world, local_rank), device


# ---------------------------------------------------------------------------- data
class TargetCollate:
    """Collate samples and build their training targets (runs inside DataLoader workers)."""

    def __init__(self, map_size: int) -> None:
        self.map_size = map_size

    def __call__(self, samples: list[dict]) -> dict:
        batch = collate(samples)
        targets = [
            build_targets(k.numpy(), (self.map_size, self.map_size), stride=OUTPUT_STRIDE, mask=m.numpy())
            for k, m in zip(batch["keypoints"], batch["mask"])
        ]
        batch["targets"] = collate_targets(targets)
        return batch


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


def present_images(records: list[ImageRecord], ann_file: Path) -> tuple[list[ImageRecord], int]:
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


def _schedule(cfg: TrainConfig, spec: KeypointSpec) -> tuple[int, tuple[int, ...]]:
    schedule = cfg.schedule or (spec.name if spec.name in SCHEDULES else "coco")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}: choose one of {', '.join(SCHEDULES)}")
    return SCHEDULES[schedule]


def time_fractions(cfg: TrainConfig, spec: KeypointSpec) -> list[float]:
    """LR-step points as fractions of the run (used when a time budget drives the schedule)."""
    full_epochs, steps = _schedule(cfg, spec)
    return [s / full_epochs for s in steps]


def lr_milestones(cfg: TrainConfig, spec: KeypointSpec) -> tuple[int, list[int]]:
    """Epoch count and lr-step epochs: the paper's schedule scaled to ``cfg.epochs``."""
    full_epochs, steps = _schedule(cfg, spec)
    epochs = cfg.epochs or full_epochs
    if cfg.lr_steps is not None:
        return epochs, list(cfg.lr_steps)
    return epochs, [max(1, round(s * epochs / full_epochs)) for s in steps]


# ---------------------------------------------------------------------------- logging
class RunLog:
    """JSON lines + optional TensorBoard, written by rank 0 only."""

    def __init__(self, out: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.path = out / "log.jsonl"
        self.tb = None
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
def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train(cfg: TrainConfig) -> dict:
    """Train; returns a summary ``{"epochs", "steps", "images_per_s", "val": last metrics, ...}``."""
    info, device = setup_distributed(cfg.device)
    out = Path(cfg.out)
    if info.main:
        check_output_dir(out)
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(".*.tmp*"):  # a run killed while writing a file leaves its temp file
            stale.unlink()
            log.info("removed %s, left by an interrupted run", stale)

    ann_file, image_dir, spec = resolve_dataset(cfg.data, "train")
    records, missing_images = present_images(load_coco_keypoints(ann_file, image_dir, spec), ann_file)
    state, extra = None, {}
    if cfg.resume:  # the checkpoint's model config is authoritative
        state, model_cfg, ckpt_spec, extra = read_checkpoint(cfg.resume)
        if ckpt_spec.num_keypoints != spec.num_keypoints:
            raise ValueError(
                f"{cfg.resume}: checkpoint spec {ckpt_spec.name!r} does not match the data's {spec.name!r}"
            )
    else:
        model_cfg = get_preset(cfg.preset)
        if cfg.input_size:
            model_cfg = dataclasses.replace(model_cfg, input_size=cfg.input_size)
    epochs, milestones = lr_milestones(cfg, spec)
    fractions = time_fractions(cfg, spec)

    torch.manual_seed(cfg.seed)
    model = GRMPoseNet(model_cfg, spec.num_keypoints).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start_epoch, start_step, global_step, best_ap = 0, 0, 0, -1.0
    if state is not None:
        model.load_state_dict(state)
        if "optimizer" in extra:  # a training checkpoint (a .safetensors file only holds weights)
            optimizer.load_state_dict(extra["optimizer"])
            scheduler.load_state_dict(extra["scheduler"])
            if use_amp and extra.get("scaler"):
                scaler.load_state_dict(extra["scaler"])
            start_epoch, start_step = int(extra["epoch"]), int(extra["step"])
            global_step, best_ap = int(extra["global_step"]), float(extra.get("best_ap", -1.0))
            set_rng_state(extra["rng"])
        log.info("resumed from %s at epoch %d step %d", cfg.resume, start_epoch, start_step)

    if info.world > 1:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ddp = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    else:
        ddp = model

    dataset = PoseDataset(records, spec, model_cfg.input_size, augment=cfg.augment, seed=cfg.seed)
    collate_fn = TargetCollate(model_cfg.input_size // OUTPUT_STRIDE)
    runlog = RunLog(out, info.main)
    if info.main:
        resolved = {
            "train": cfg.to_dict(),
            "model": model_cfg.to_dict(),
            "spec": spec.to_dict(),
            "git": git_revision(),
        }
        resolved["train"]["epochs"] = epochs
        resolved["train"]["lr_steps"] = milestones
        (out / "config.json").write_text(json.dumps(resolved, indent=2))

    run_meta = {"train_config": json.dumps(cfg.to_dict()), "git": git_revision()}
    t_start = time.time()
    images_seen, nonfinite, stop_reason = 0, 0, None
    last_val: dict = {}
    train_time = 0.0  # forward/backward/step only
    loop_time = 0.0  # the epochs' loops, data loading included

    def checkpoint(epoch: int, step: int) -> None:
        if not info.main:
            return
        save_training_checkpoint(
            out / "last.pt",
            model,
            model_cfg,
            spec,
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            scaler=scaler.state_dict() if use_amp else {},
            epoch=epoch,
            step=step,
            global_step=global_step,
            best_ap=best_ap,
            rng=rng_state(),
            **run_meta,
        )

    for epoch in range(start_epoch, epochs):
        dataset.set_epoch(epoch)
        batches = epoch_order(len(dataset), cfg.seed, epoch, cfg.batch_size, info.rank, info.world)
        first = start_step if epoch == start_epoch else 0
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=batches[first:],
            collate_fn=collate_fn,
            num_workers=cfg.workers,
            persistent_workers=False,
            pin_memory=device.type == "cuda",
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
            t0 = time.time()
            loss_value, parts, finite = _train_step(
                ddp,
                optimizer,
                scaler,
                batch,
                device,
                use_amp,
                cfg.accumulate,
                info,
                LossWeights(offset=cfg.offset_loss),
            )
            step += 1
            train_time += time.time() - t0
            if not finite:
                nonfinite += 1
                log.warning(
                    "non-finite loss at epoch %d step %d: step skipped (%d in a row)", epoch, step, nonfinite
                )
                if nonfinite >= cfg.max_nonfinite:
                    stop_reason = f"{nonfinite} non-finite losses in a row"
                    break
                continue
            nonfinite = 0
            global_step += 1
            if cfg.max_minutes is not None:  # a time budget drives the schedule: steps at fractions of it
                elapsed = (time.time() - t_start) / (60 * cfg.max_minutes)
                drops = sum(elapsed >= f for f in fractions)
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr * 0.1**drops
            images_seen += batch["image"].shape[0] * info.world
            if info.main and global_step % cfg.log_every == 0:
                record = {"kind": "train", "epoch": epoch, "step": global_step, "loss": loss_value,
                          "lr": optimizer.param_groups[0]["lr"], **parts}  # fmt: skip
                runlog.write(record, global_step)
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{loss_value:.4f}")
            if cfg.checkpoint_every and global_step % cfg.checkpoint_every == 0:
                checkpoint(epoch, step)
            if cfg.max_minutes is not None and (time.time() - t_start) / 60 >= cfg.max_minutes:
                stop_reason = f"time budget of {cfg.max_minutes} min reached"
                break
            if cfg.max_steps is not None and global_step >= cfg.max_steps:
                stop_reason = f"{cfg.max_steps} steps reached"
                break
        loop_time += time.time() - t_epoch
        if hasattr(bar, "close"):
            bar.close()
        if stop_reason and "non-finite" in stop_reason:
            log.error("stopping: %s; the last good checkpoint is kept", stop_reason)
            break
        epoch_done = step >= len(batches)
        if epoch_done and cfg.max_minutes is None:
            scheduler.step()
        if info.main:
            rate = images_seen / max(loop_time, 1e-9)
            runlog.write({"kind": "epoch", "epoch": epoch, "step": global_step, "images_per_s": rate,
                          "epoch_seconds": time.time() - t_epoch}, global_step)  # fmt: skip
        if epoch_done:
            checkpoint(epoch + 1, 0)
        else:
            checkpoint(epoch, step)
        want_val = cfg.val_every and (
            epoch_done and (epoch + 1) % cfg.val_every == 0 or stop_reason or epoch + 1 == epochs
        )
        if want_val:
            last_val = _validate(model, cfg, spec, model_cfg.input_size, device, info, out)
            if info.main and last_val:
                runlog.write({"kind": "val", "epoch": epoch, "step": global_step, **last_val}, global_step)
                ap = last_val.get("AP", -1.0)
                if ap > best_ap:
                    best_ap = ap
                    save_weights(out / "best.safetensors", model, model_cfg, spec)
        if stop_reason:
            break
    if info.main:
        save_weights(out / "last.safetensors", model, model_cfg, spec)
    runlog.close()
    summary = {
        "epochs": epochs,
        "steps": global_step,
        "images_per_s": images_seen / max(loop_time, 1e-9),
        "compute_images_per_s": images_seen / max(train_time, 1e-9),
        "minutes": (time.time() - t_start) / 60,
        "val": last_val,
        "stop_reason": stop_reason or "finished",
        "skipped_images": dataset.skipped,
        "missing_images": missing_images,
    }
    if dataset.skipped:
        log.warning("skipped %d unreadable training sample(s) (see the warnings above)", dataset.skipped)
    if info.main:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if info.world > 1:
        dist.barrier()
    return summary


def _progress(iterable, total: int, initial: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=False)


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
) -> tuple[float, dict[str, float], bool]:
    """One optimiser step over the batch (split into ``accumulate`` chunks); skipped if not finite."""
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
    if finite:
        grads_ok = all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
        if not grads_ok and not use_amp:
            finite = False
    if finite:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for b, s in zip(buffers, saved):
                b.copy_(s)
    return total, parts_sum, finite


# ---------------------------------------------------------------------------- validation
def _validate(
    model: nn.Module, cfg: TrainConfig, spec: KeypointSpec, input_size: int, device, info: DistInfo, out: Path
) -> dict:
    """AP on the validation split (rank 0; others wait)."""
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
    if info.world > 1:
        dist.barrier()
    return metrics
