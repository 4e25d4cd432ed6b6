"""grmpose.ap_breakdown: the pose at each true centre and the best decoded pose, scored by OKS.

The model here is a stand-in whose outputs are written by hand for one known person: a centre peak
at the person's centre and offsets that point from every cell to the joints (shifted by a chosen
number of map pixels). The expected OKS is COCO's formula written out in the test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from grmpose.ap_breakdown import ap_breakdown, poses_at_cells
from grmpose.data.coco import ImageRecord
from grmpose.spec import get_spec

COCO = get_spec("coco")
K = COCO.num_keypoints
STRIDE = 4


class HandWritten(nn.Module):
    """Outputs for one person whose joints are ``joints`` (input pixels): a centre peak of 1 at
    the mean of the labelled ones (``labelled``), and offsets ``cell - joint/4 + shift`` at every cell (so every cell regresses the
    joints moved by ``-shift`` map pixels)."""

    def __init__(self, joints: np.ndarray, labelled: np.ndarray, shift: tuple[float, float]) -> None:
        super().__init__()
        self.centre = np.asarray(joints)[labelled].mean(0) / STRIDE
        self.joints = torch.as_tensor(joints, dtype=torch.float32) / STRIDE  # K x 2, map px
        self.shift = torch.tensor(shift, dtype=torch.float32)
        self.anchor = nn.Parameter(torch.zeros(1))  # for .parameters()

    def forward(self, x: torch.Tensor):
        h, w = x.shape[2] // STRIDE, x.shape[3] // STRIDE
        heat = torch.zeros(1, K + 1, h, w)
        cx, cy = (int(np.floor(v + 0.5)) for v in self.centre)
        heat[0, K, cy, cx] = 1.0
        heat[0, :K] = 0.5  # keypoint scores: anything positive
        ys, xs = torch.meshgrid(
            torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
        )
        off = torch.zeros(1, K, 2, h, w)
        off[0, :, 0] = xs - self.joints[:, 0, None, None] + self.shift[0]
        off[0, :, 1] = ys - self.joints[:, 1, None, None] + self.shift[1]
        return heat, off.reshape(1, 2 * K, h, w), torch.zeros(1, K, h, w)


@pytest.fixture
def one_person(tmp_path):
    rng = np.random.default_rng(3)
    # a 96 x 64 image: its short side is the test size (64), so image pixels are input pixels
    path = tmp_path / "img.png"
    Image.fromarray(np.zeros((64, 96, 3), np.uint8)).save(path)
    xy = np.c_[rng.uniform(20, 76, K), rng.uniform(8, 56, K)]
    kpts = np.c_[xy, np.full(K, 2.0)]
    kpts[3, 2] = 0  # one unlabelled joint: left out of the OKS
    area = 900.0
    record = ImageRecord(
        image_id=1, file_name="img.png", path=path, width=96, height=64, keypoints=kpts[None].astype(np.float32),
        boxes=np.array([[20, 8, 56, 48]], np.float32), areas=np.array([area], np.float32),
    )  # fmt: skip
    return record, xy, kpts, area


def coco_oks(pred: np.ndarray, kpts: np.ndarray, area: float) -> float:
    """COCO's OKS written out: mean over labelled joints of exp(-d^2 / (2 s^2 k^2)), k = 2 sigma, s^2 = area."""
    terms = []
    for j in range(K):
        if kpts[j, 2] > 0:
            d2 = float(((pred[j] - kpts[j, :2]) ** 2).sum())
            terms.append(np.exp(-d2 / (2 * area * (2 * COCO.sigmas[j]) ** 2)))
    return float(np.mean(terms))


def test_exact_offsets_give_oks_1_at_the_centre_and_decoded(one_person):
    record, xy, kpts, area = one_person
    result = ap_breakdown(HandWritten(xy, kpts[:, 2] > 0, (0.0, 0.0)), [record], COCO, input_size=64)
    assert result["people"] == 1
    assert result["at_true_centre"]["mean_oks"] == pytest.approx(1.0, abs=1e-6)
    assert result["at_true_centre"]["ap_bound"] == 1.0
    assert result["best_decoded"]["mean_oks"] == pytest.approx(1.0, abs=1e-6)
    assert result["centre_heat_median"] == 1.0
    assert result["error_over_scale"]["left_ear"] is None  # joint 3 is unlabelled
    assert result["error_over_scale"]["nose"] == pytest.approx(0.0, abs=1e-6)


def test_shifted_offsets_score_coco_oks_of_the_shift_in_image_pixels(one_person):
    record, xy, kpts, area = one_person
    shift = (0.5, -0.25)  # map pixels: the regressed joints move by -shift * stride image pixels
    result = ap_breakdown(HandWritten(xy, kpts[:, 2] > 0, shift), [record], COCO, input_size=64)
    moved = xy - np.array(shift) * STRIDE
    expected = coco_oks(moved, kpts, area)
    assert 0.05 < expected < 0.95  # the case tells something
    assert result["at_true_centre"]["mean_oks"] == pytest.approx(expected, rel=1e-5)
    assert result["best_decoded"]["mean_oks"] == pytest.approx(expected, rel=1e-5)
    distance = np.hypot(*(np.array(shift) * STRIDE)) / np.sqrt(area)
    assert result["error_over_scale"]["nose"] == pytest.approx(distance, rel=1e-5)


def test_left_and_right_swapped_score_low_but_one_when_sides_are_free(one_person):
    record, xy, kpts, area = one_person
    swapped = xy[COCO.flip_index]  # the model puts every left joint on the right one and back
    result = ap_breakdown(HandWritten(swapped, kpts[COCO.flip_index, 2] > 0, (0.0, 0.0)), [record], COCO, 64)
    assert result["at_true_centre"]["mean_oks"] == pytest.approx(coco_oks(swapped, kpts, area), rel=1e-5)
    assert result["at_true_centre"]["mean_oks"] < 0.5
    assert result["at_true_centre_sides_free"]["mean_oks"] == pytest.approx(1.0, abs=1e-6)


def test_poses_at_cells_reads_the_nearest_cell_clamped_into_the_map():
    rng = np.random.default_rng(0)
    offsets = torch.as_tensor(rng.normal(size=(2 * K, 5, 7)), dtype=torch.float32)
    centres = np.array([[2.4, 1.6], [6.6, 4.4], [-3.0, 9.0]])
    got = poses_at_cells(offsets, centres)
    for n, (cx, cy) in enumerate([(2, 2), (6, 4), (0, 4)]):  # nearest cells; the last clamped
        for j in range(K):
            want = (cx - offsets[2 * j, cy, cx].item(), cy - offsets[2 * j + 1, cy, cx].item())
            np.testing.assert_allclose(got[n, j], want, rtol=1e-6)
