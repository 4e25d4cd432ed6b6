"""The patched levers of ``benchmarks.demo_levers_patched`` do what their rows say.

The patches change grmpose's classes for the whole process, so they run in a child process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import numpy as np
import torch

import benchmarks.demo_levers_patched as P
import grmpose.train
from grmpose.model.net import build_model

x = torch.randn(2, 3, 64, 64)
torch.manual_seed(0)
plain = build_model("tiny", "coco").eval()
plain.offset_head.set_offset_bias(torch.linspace(-20.0, 20.0, 34))  # offsets of the size of real ones
with torch.no_grad():
    before = plain(x)[1]
assert before.abs().mean() > 5

# person scale: a new zero-started conv, so the patched network starts as the plain one
P.person_scale(1.0)
torch.manual_seed(0)
scaled = build_model("tiny", "coco").eval()
result = scaled.load_state_dict(plain.state_dict(), strict=False)
assert sorted(result.missing_keys) == ["offset_head.scale.bias", "offset_head.scale.weight"], result
with torch.no_grad():
    assert torch.allclose(scaled(x)[1], before, rtol=1e-5, atol=0)
    scaled.offset_head.scale.bias.fill_(float(np.log(2.0)))
    assert torch.allclose(scaled(x)[1], 2 * before, rtol=1e-5, atol=0)

# translation at the mean pose: the sampling point p + t is the mean joint p - offset
P.translation_at_mean_pose(1.0)
mean = torch.randn(34)
scaled.offset_head.set_offset_bias(mean)
conv = scaled.offset_head.blocks[0].conv
assert torch.equal(conv.translation.bias.detach(), -mean)
assert torch.equal(conv.affine.bias.detach().reshape(17, 4), torch.tensor([[1.0, 0.0, 0.0, 1.0]] * 17))
assert torch.allclose(scaled.offset_head.offset.bias.detach(), mean)

# offset radius 2: the cells whose centre lies within 2 map px of the person's centre (naive count)
P.offset_radius(2)
kp = np.zeros((1, 17, 3))
kp[0, :, :2] = [[100.0 + 3 * j, 90.0 + 5 * j] for j in range(17)]
kp[0, :, 2] = 2
centre = kp[0, :, :2].mean(0) / 4
targets = grmpose.train.build_targets(kp, (48, 48))
cx, cy = np.floor(centre + 0.5).astype(int)
naive = sum(
    (x - centre[0]) ** 2 + (y - centre[1]) ** 2 <= 4
    for x in range(cx - 3, cx + 4)
    for y in range(cy - 3, cy + 4)
)
assert int((targets["offset_weights"][0] > 0).sum()) == naive, (int((targets["offset_weights"][0] > 0).sum()), naive)
print("ok")
"""


def test_patches_change_what_their_rows_say():
    proc = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
