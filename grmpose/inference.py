"""Single-image inference: resize, run the network, decode -- the pieces evaluation and prediction share.

Test-time resizing follows the paper (§IV-A-4): the short side goes to the preset's input size,
the aspect ratio is kept, and the image is padded right/bottom to a multiple of 32.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from grmpose.data.dataset import normalize_image
from grmpose.decode import decode_image
from grmpose.spec import KeypointSpec

PAD_MULTIPLE = 32


def prepare_image(
    image: np.ndarray, short_side: int, max_long_side: int = 4096
) -> tuple[torch.Tensor, np.ndarray]:
    """Resize an RGB uint8 image (H x W x 3) so its short side is ``short_side``; pad to /32.

    Returns ``(tensor 3 x H' x W', image_to_input 2x3 affine)``. The long side is capped at
    ``max_long_side`` (the short side shrinks accordingly) so extreme aspect ratios stay bounded.
    """
    h, w = image.shape[:2]
    scale = short_side / min(h, w)
    scale = min(scale, max_long_side / max(h, w))
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = (
        np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR)) if (nh, nw) != (h, w) else image
    )
    ph = -(-nh // PAD_MULTIPLE) * PAD_MULTIPLE
    pw = -(-nw // PAD_MULTIPLE) * PAD_MULTIPLE
    tensor = normalize_image(resized)
    if (ph, pw) != (nh, nw):
        tensor = torch.nn.functional.pad(tensor, (0, pw - nw, 0, ph - nh))
    # image -> input affine with the scale actually used per axis (x' = s (x + 0.5) - 0.5)
    m = np.array([[nw / w, 0.0, 0.5 * nw / w - 0.5], [0.0, nh / h, 0.5 * nh / h - 0.5]])
    return tensor, m


def flip_outputs(outputs: Sequence[torch.Tensor], flip_index: np.ndarray) -> tuple[torch.Tensor, ...]:
    """Mirror the network outputs of a horizontally flipped image back to the original frame.

    heatmaps: flip along W, swap left/right channels (centre stays); offsets: flip along W, swap
    channel pairs and negate x (x offsets change sign in a mirror); tags: flip and swap.
    """
    heat, off, tags = outputs
    k = len(flip_index)
    perm = torch.as_tensor(np.asarray(flip_index), device=heat.device)
    heat = heat.flip(-1)
    heat = torch.cat([heat[:, perm], heat[:, k:]], dim=1)
    b, _, h, w = off.shape
    off = off.flip(-1).reshape(b, k, 2, h, w)[:, perm]
    off = torch.stack([-off[:, :, 0], off[:, :, 1]], dim=2).reshape(b, 2 * k, h, w)
    tags = tags.flip(-1)[:, perm]
    return heat, off, tags


def flip_input(batch: torch.Tensor, stride: int = 4) -> torch.Tensor:
    """Mirror a batch so that the mirrored maps land exactly on the original map grid.

    Map cell j sits on input pixel ``stride * j``. Mirroring the W-pixel input sends pixel x to
    W - 1 - x, which is not on the grid; mirroring and then shifting left by ``stride - 1`` pixels
    sends x to W - stride - x, so cell j goes to cell w - 1 - j exactly (w = W / stride), and a
    plain ``flip`` of the output maps undoes it.
    """
    shift = stride - 1
    return torch.nn.functional.pad(batch.flip(-1)[..., shift:], (0, shift))


@torch.no_grad()
def run_network(
    model: nn.Module, batch: torch.Tensor, flip_index: np.ndarray | None = None
) -> tuple[torch.Tensor, ...]:
    """Network outputs for a batch; with ``flip_index`` the mirrored image's outputs are averaged in."""
    outputs = tuple(model(batch))
    if flip_index is None:
        return outputs
    flipped = flip_outputs(model(flip_input(batch)), flip_index)
    return tuple((a + b) / 2 for a, b in zip(outputs, flipped))


def predict_image(
    model: nn.Module,
    image: np.ndarray,
    spec: KeypointSpec,
    input_size: int,
    flip: bool = False,
    max_people: int = 30,
    device: torch.device | str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Poses of one RGB image: ``(N x K x 3 (x, y, score) in image pixels, N scores)``."""
    device = device or next(model.parameters()).device
    tensor, m = prepare_image(image, input_size)
    outputs = run_network(model, tensor[None].to(device), spec.flip_index if flip else None)
    return decode_image(outputs, spec, image_to_input=m, max_people=max_people)
