"""Decoding cost per image against the number of people, for each decoder, with and without flip.

Maps are built from ground truth (``grmpose.targets.build_targets``) for N people laid out on a
grid of a ``input_size`` square image (COCO keypoints, a fixed upright template pose with jitter):
heatmaps and centre heatmap are the training Gaussians, offsets the training offsets, and tags are
the person's index written on a 3×3 patch around each of its keypoints. So every decoder finds the
people and does its full work.

What is timed is everything after the network: with flip, mirroring the flipped outputs back and
averaging (``grmpose.tta.run_forward`` with a stub forward that returns the precomputed batch of
two), then ``grmpose.tta.decode_scales`` (candidates, grouping/snapping, scoring, pose NMS, mapping
to image pixels). The input flip of the image is included (``flip_input`` runs inside
``run_forward``).
"""

from __future__ import annotations

import numpy as np
import torch

from grmpose.bench import time_calls
from grmpose.grouping import DECODERS
from grmpose.inference import flip_outputs
from grmpose.spec import get_spec
from grmpose.targets import build_targets
from grmpose.tta import ScaleMaps, decode_scales, run_forward

PEOPLE = (1, 5, 10, 20, 30)

# An upright person of height 1 centred at the origin, COCO order (x right, y down).
_TEMPLATE = np.array(
    [[0.0, -0.45], [-0.03, -0.47], [0.03, -0.47], [-0.06, -0.46], [0.06, -0.46],
     [-0.12, -0.30], [0.12, -0.30], [-0.16, -0.12], [0.16, -0.12], [-0.18, 0.05], [0.18, 0.05],
     [-0.08, 0.05], [0.08, 0.05], [-0.09, 0.28], [0.09, 0.28], [-0.09, 0.50], [0.09, 0.50]]
)  # fmt: skip


def crowd_keypoints(people: int, input_size: int = 512, seed: int = 0) -> np.ndarray:
    """N×17×3 ``(x, y, v=2)`` keypoints of ``people`` non-overlapping people in a square image."""
    rng = np.random.default_rng(seed)
    cols = int(np.ceil(np.sqrt(people)))
    rows = int(np.ceil(people / cols))
    cell_w, cell_h = input_size / cols, input_size / rows
    height = 0.8 * min(cell_h, 2.5 * cell_w)
    out = np.zeros((people, len(_TEMPLATE), 3))
    for n in range(people):  # building test data, not a hot path
        cx = (n % cols + 0.5) * cell_w + rng.uniform(-0.05, 0.05) * cell_w
        cy = (n // cols + 0.5) * cell_h + rng.uniform(-0.05, 0.05) * cell_h
        jitter = rng.normal(0.0, 0.01, _TEMPLATE.shape)
        out[n, :, :2] = (_TEMPLATE + jitter) * height + [cx, cy]
    out[..., 2] = 2
    return out


def crowd_maps(
    people: int, input_size: int = 512, stride: int = 4, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """``(heatmaps (K+1)×h×w, offsets 2K×h×w, tags K×h×w)`` from ground truth for ``people`` people."""
    kpts = crowd_keypoints(people, input_size, seed)
    h = input_size // stride
    t = build_targets(kpts, (h, h), stride=stride)
    k = kpts.shape[1]
    tags = np.zeros((k, h, h), np.float32)
    index = t["tag_index"].numpy()
    n_idx, k_idx = np.nonzero(index >= 0)
    cy, cx = index[n_idx, k_idx] // h, index[n_idx, k_idx] % h
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            tags[k_idx, np.clip(cy + dy, 0, h - 1), np.clip(cx + dx, 0, h - 1)] = n_idx
    return t["heatmaps"], t["offsets"], torch.from_numpy(tags)


def network_outputs(maps: tuple[torch.Tensor, ...], flip: bool, spec) -> tuple[torch.Tensor, ...]:
    """What the network would return: batch 1, or with flip batch 2 (the mirrored image's maps second)."""
    outputs = tuple(m[None] for m in maps)
    if not flip:
        return outputs
    mirrored = flip_outputs(outputs, spec.flip_index)
    return tuple(torch.cat([a, b]) for a, b in zip(outputs, mirrored))


def decode_once(outputs: tuple[torch.Tensor, ...], decoder: str, flip: bool, input_size: int, spec) -> int:
    """Post-process one image's network outputs as ``grmpose.tta.predict_batch`` does; returns the
    number of people found."""
    stride = 4
    batch = torch.zeros(1, 3, input_size, input_size)
    heat, off, tags = run_forward(lambda _: outputs, batch, spec.flip_index if flip else None, stride)
    m = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    scale_maps = ScaleMaps(heat[0], off[0], tags[0], m / stride, m, 1.0)
    poses, _ = decode_scales([scale_maps], spec, decoder, max_people=30, stride=stride)
    return len(poses)


def bench_decoding(
    people: tuple[int, ...] = PEOPLE,
    decoders: tuple[str, ...] = tuple(DECODERS),
    flips: tuple[bool, ...] = (False, True),
    input_size: int = 512,
    repeats: int = 20,
    warmup: int = 3,
    threads: int = 2,
) -> list[dict]:
    """``{"decoder", "flip", "people", "found", "median_ms", "min_ms"}`` per combination (128×128 maps at 512)."""
    torch.set_num_threads(threads)
    spec = get_spec("coco")
    rows = []
    for n in people:
        maps = crowd_maps(n, input_size)
        for flip in flips:
            outs = network_outputs(maps, flip, spec)
            for decoder in decoders:
                found = decode_once(outs, decoder, flip, input_size, spec)
                t = time_calls(lambda: decode_once(outs, decoder, flip, input_size, spec), repeats, warmup)  # noqa: B023
                rows.append({"decoder": decoder, "flip": flip, "people": n, "found": found,
                             "median_ms": t["median_ms"], "min_ms": t["min_ms"]})  # fmt: skip
    return rows
