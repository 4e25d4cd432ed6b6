"""Peak memory of prediction, evaluation and training, and training throughput with DataLoader workers.

Each function here is meant to run in a fresh process (``grmpose.bench.run_child``) so that its
``ru_maxrss`` is its own.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from grmpose.bench import peak_rss_mib, rss_mib


def predict_memory(preset: str = "grmpose-w32", flip: bool = False, repeats: int = 3) -> dict:
    """``grmpose predict`` (``predict_main``, random weights, CPU, torch backend) on a 640×480 image.

    Returns:
        ``{"peak_rss_mib", "base_rss_mib", "seconds_per_image"}`` (wall time of the second and
        later calls: load, resize, forward, decode, JSON and picture writing).
    """
    from PIL import Image

    from grmpose.predict import predict_main

    torch.set_num_threads(2)
    base = rss_mib()
    with tempfile.TemporaryDirectory(prefix="grmpose-bench-") as tmp:
        img = Path(tmp) / "image.jpg"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(img)
        times = []
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            predict_main(str(img), str(Path(tmp) / f"out{i}"), preset=preset, flip=flip, progress=False)
            times.append(time.perf_counter() - t0)
    return {"preset": preset, "flip": flip, "peak_rss_mib": peak_rss_mib(), "base_rss_mib": base,
            "seconds_per_call": float(np.median(times[1:])), "first_call_s": times[0]}  # fmt: skip


def evaluation_memory(num_images: int = 5000, every: int = 500, input_size: int = 64) -> dict:
    """RSS over a stream of ``num_images`` tiny images through ``evaluate_forward``.

    The forward is a stub returning fixed maps with 5 people (so every image yields poses and the
    results writer has work); images are copies of one 64×48 JPEG with one annotated person each.

    Returns:
        ``{"images", "samples": [[images, rss_mib], ...], "slope_kib_per_image", "peak_rss_mib"}``;
        the slope is a least-squares fit over the samples from the second one on (the first
        includes one-time allocations).
    """
    from PIL import Image

    from benchmarks.decoding import crowd_maps
    from grmpose.evaluate_run import evaluate_forward
    from grmpose.spec import get_spec

    torch.set_num_threads(2)
    spec = get_spec("coco")
    maps = tuple(m[None] for m in crowd_maps(5, input_size))
    samples: list[list[float]] = []
    calls = 0

    def forward(batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        nonlocal calls
        calls += 1
        if calls % every == 0:
            samples.append([calls, rss_mib()])
        return maps

    with tempfile.TemporaryDirectory(prefix="grmpose-bench-") as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        Image.fromarray(np.full((48, 64, 3), 128, np.uint8)).save(root / "one.jpg")
        data = (root / "one.jpg").read_bytes()
        kp = np.zeros((17, 3))
        kp[:, 0], kp[:, 1], kp[:, 2] = np.linspace(20, 44, 17), np.linspace(5, 43, 17), 2
        images, anns = [], []
        for i in range(1, num_images + 1):  # writing test data
            (root / "images" / f"{i:06d}.jpg").write_bytes(data)
            images.append({"id": i, "file_name": f"{i:06d}.jpg", "width": 64, "height": 48})
            anns.append({"id": i, "image_id": i, "category_id": 1, "keypoints": kp.ravel().tolist(),
                         "num_keypoints": 17, "bbox": [20, 5, 24, 38], "area": 24 * 38, "iscrowd": 0})  # fmt: skip
        cats = [{"id": 1, "name": "person", "keypoints": list(spec.keypoints), "skeleton": []}]
        ann_file = root / "ann.json"
        ann_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
        del images, anns
        t0 = time.perf_counter()
        metrics = evaluate_forward(
            forward, spec, input_size, ann_file, root / "images", root / "results.json", progress=False
        )
        seconds = time.perf_counter() - t0
    xs = np.array([s[0] for s in samples[1:]], dtype=float)
    ys = np.array([s[1] for s in samples[1:]], dtype=float)
    slope = float(np.polyfit(xs, ys, 1)[0] * 1024) if len(xs) >= 2 else float("nan")
    return {"images": int(metrics.get("images", 0)), "samples": samples, "slope_kib_per_image": slope,
            "peak_rss_mib": peak_rss_mib(), "seconds": seconds}  # fmt: skip


def make_synthetic(out: str, images: int = 40, seed: int = 0) -> str:
    """A small synthetic COCO-format set (``grmpose.data.synthetic.generate``) at 256; returns dataset.yaml."""
    from grmpose.data.synthetic import generate

    return str(generate(out, "coco", images, 4, seed, image_size=256, max_people=8))


def train_memory(data: str, out: str, steps: int = 6, batch_size: int = 8) -> dict:
    """Peak RSS of ``grmpose.train.train`` with ``tiny`` on CPU (``workers=0``: one process holds it all)."""
    from grmpose.train import TrainConfig, train

    torch.set_num_threads(2)
    base = rss_mib()
    t0 = time.perf_counter()
    cfg = TrainConfig(data=data, out=out, preset="tiny", batch_size=batch_size, workers=0, max_steps=steps,
                      val_every=0, progress=False, device="cpu")  # fmt: skip
    summary = train(cfg)
    return {"peak_rss_mib": peak_rss_mib(), "base_rss_mib": base, "steps": summary["steps"],
            "compute_images_per_s": summary["images_per_s"], "seconds": time.perf_counter() - t0}  # fmt: skip


def train_throughput(data: str, workers: int, steps: int = 6, batch_size: int = 8) -> dict:
    """Wall-clock training images/s of ``tiny`` with ``workers`` DataLoader workers (first step excluded),
    and the loader alone (images/s of data + targets without training)."""
    from grmpose.config import get_preset
    from grmpose.data.coco import load_coco_keypoints, resolve_dataset
    from grmpose.data.dataset import OUTPUT_STRIDE, PoseDataset
    from grmpose.losses import LossWeights, total_loss
    from grmpose.model.net import GRMPoseNet
    from grmpose.train import TargetCollate

    torch.set_num_threads(2)
    ann, image_dir, spec = resolve_dataset(data, "train")
    cfg = get_preset("tiny")
    dataset = PoseDataset(load_coco_keypoints(ann, image_dir, spec), spec, cfg.input_size, augment=True)

    def loader():
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                           collate_fn=TargetCollate(cfg.input_size // OUTPUT_STRIDE))  # fmt: skip

    t0, n = None, 0
    for i, batch in enumerate(loader()):
        if i == 0:
            t0 = time.perf_counter()
        else:
            n += batch["image"].shape[0]
    data_rate = n / (time.perf_counter() - t0) if n else float("nan")

    torch.manual_seed(0)
    model = GRMPoseNet(cfg, spec.num_keypoints).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    t0, n = None, 0
    for i, batch in enumerate(loader()):
        if i >= steps + 1:
            break
        if i == 1:
            t0, n = time.perf_counter(), 0
        opt.zero_grad(set_to_none=True)
        loss, _ = total_loss(tuple(model(batch["image"])), batch["targets"], LossWeights())
        loss.backward()
        opt.step()
        n += batch["image"].shape[0]
    rate = n / (time.perf_counter() - t0) if t0 else float("nan")
    return {"workers": workers, "train_images_per_s": rate, "loader_images_per_s": data_rate,
            "peak_rss_mib": peak_rss_mib()}  # fmt: skip
