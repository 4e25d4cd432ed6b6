"""Single-image inference: resize, run the network, decode -- the pieces evaluation and prediction share.

Test-time resizing follows the paper (§IV-A-4): the short side goes to the preset's input size,
the aspect ratio is kept, and the image is padded right/bottom to a multiple of 32.

Padding is black, as in training: training crops fill everything outside the image with uint8 0
(``grmpose.data.transforms.apply_affine_image``) before normalisation, and DEKR's test-time
``cv2.warpAffine`` does the same. So padded input pixels hold ``(0 - MEAN) / STD`` per channel
(``PAD_VALUE``), not 0 (which would be mean grey, a colour the network never saw at the border).
The flip test's shifted columns (``flip_input``) lie outside the image too and get the same value.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from grmpose.data.dataset import MEAN, STD, normalize_image
from grmpose.decode import decode_image
from grmpose.spec import KeypointSpec

PAD_MULTIPLE = 32
PAD_VALUE = tuple((0.0 - m) / s for m, s in zip(MEAN, STD))  # a black pixel after normalisation


def pad_black(tensor: torch.Tensor, right: int, bottom: int) -> torch.Tensor:
    """Pad ``…×3×H×W`` normalised images with black (``PAD_VALUE``) on the right and bottom."""
    if right == bottom == 0:
        return tensor
    *lead, c, h, w = tensor.shape
    if c != len(PAD_VALUE):
        raise ValueError(f"expected 3 colour channels, got {c}")
    fill = torch.tensor(PAD_VALUE, dtype=tensor.dtype, device=tensor.device).view(3, 1, 1)
    out = fill.expand(*lead, 3, h + bottom, w + right).clone()
    out[..., :h, :w] = tensor
    return out


def check_short_side(input_size: int | None) -> None:
    """Refuse a test short side (``--input-size``) that is not positive; ``None`` (the model's
    training size) passes. Called before any output is written."""
    if input_size is not None and input_size <= 0:
        raise ValueError(f"--input-size must be positive, got {input_size}")


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
    tensor = pad_black(tensor, right=pw - nw, bottom=ph - nh)
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
    plain ``flip`` of the output maps undoes it. The ``stride - 1`` columns that come in on the
    right lie left of the image: black, as all padding (``PAD_VALUE``).
    """
    shift = stride - 1
    return pad_black(batch.flip(-1)[..., shift:], right=shift, bottom=0)


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
