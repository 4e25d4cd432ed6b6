"""The main job: synthesise crowds, train ``tiny`` on the CPU for a few minutes, evaluate, draw.

Everything it needs is generated here (no download): a synthetic COCO-17 training set, a held-out
validation set drawn from a different seed, a training run with a time budget, the OKS metrics
of the trained model on the held-out set and pictures of its predictions next to the ground truth.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    out: str = "runs/demo"
    minutes: float = 5.0
    train_images: int = 2000
    val_images: int = 200
    image_size: int = 256
    max_people: int = 15
    input_size: int = 256
    batch_size: int = 8
    workers: int = 1
    seed: int = 0
    flip: bool = True
    pictures: int = 6
    progress: bool = True
    # DEKR's 0.03 suits 140 epochs; in a few CPU minutes 0.5 learns the offsets faster (15-minute
    # benchmark: AP50 0.011 against 0.0001, benchmarks/results/train_synthetic*.md)
    offset_loss: float = 0.5


def run_demo(cfg: DemoConfig) -> dict:
    """Run the whole job; returns ``{"metrics", "train", "pictures", ...}`` and writes ``demo.json``."""
    from grmpose.data.synthetic import generate
    from grmpose.evaluate_run import evaluate_checkpoint
    from grmpose.train import TrainConfig, train

    out = Path(cfg.out)
    data = out / "data"
    marker = data / "demo_data.json"
    wanted = {"format": 2, "train": cfg.train_images, "val": cfg.val_images, "size": cfg.image_size, "seed": cfg.seed,
              "max_people": cfg.max_people}  # fmt: skip
    if not (marker.is_file() and json.loads(marker.read_text()) == wanted):
        log.info("generating %d + %d synthetic images in %s", cfg.train_images, cfg.val_images, data)
        progress = None
        if cfg.progress:
            from tqdm import tqdm

            def progress(it):
                return tqdm(it, desc="synthesise", dynamic_ncols=True, leave=False)

        generate(
            data, "coco", cfg.train_images, cfg.val_images, cfg.seed, cfg.image_size, cfg.max_people, progress
        )
        marker.write_text(json.dumps(wanted))
    run = out / "run"
    summary = train(
        TrainConfig(
            data=str(data), out=str(run), preset="tiny", epochs=1000, batch_size=cfg.batch_size,
            input_size=cfg.input_size, workers=cfg.workers, seed=cfg.seed, val_every=0,
            max_minutes=cfg.minutes, progress=cfg.progress, checkpoint_every=200, offset_loss=cfg.offset_loss,
        )
    )  # fmt: skip
    checkpoint = run / "last.safetensors"
    metrics = evaluate_checkpoint(
        checkpoint, str(data), split="val", out=out / "eval", flip=cfg.flip, progress=cfg.progress
    )
    pictures = draw_examples(checkpoint, data, out / "pictures", cfg.pictures, cfg.flip)
    result = {
        "metrics": metrics,
        "train": summary,
        "pictures": [str(p) for p in pictures],
        "config": cfg.__dict__,
    }
    (out / "demo.json").write_text(json.dumps(result, indent=2))
    return result


def draw_examples(checkpoint: Path, data: Path, out: Path, count: int, flip: bool) -> list[Path]:
    """Prediction (left) and ground truth (right) for the first ``count`` validation images."""
    from grmpose.api import PoseEstimator
    from grmpose.data.coco import load_coco_keypoints, load_image, resolve_dataset
    from grmpose.visualize import draw_poses, save_image, side_by_side

    ann, images, spec = resolve_dataset(str(data), "val")
    records = load_coco_keypoints(ann, images, spec)[:count]
    estimator = PoseEstimator.from_checkpoint(checkpoint, flip=flip)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for rec in records:
        image = load_image(rec.path, exif_transpose=False)
        poses = estimator(image)
        gt = rec.keypoints.copy()
        gt[:, :, 2] = (gt[:, :, 2] > 0).astype(np.float32)
        picture = side_by_side(
            draw_poses(image, poses, spec), draw_poses(image, gt, spec, score_threshold=0.5), height=384
        )
        paths.append(save_image(out / f"{rec.image_id:06d}.jpg", picture))
    return paths
