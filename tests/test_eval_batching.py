"""Batched evaluation: images ordered by size and run several per network call still give every
image its own poses (rendered ground truth scores AP 1, as one image at a time does)."""

from __future__ import annotations

import json
from pathlib import Path

from grmpose.evaluate_run import evaluate_forward
from tests.test_evaluate_run import SIZE, RenderedForward, sample


def doubled_ground_truth(ann: Path, out: Path) -> Path:
    """The sample's ground truth with every image listed twice (second copy: id + 1000), so that
    equal input sizes exist and a batch must hold two images."""
    gt = json.loads(Path(ann).read_text())
    copies = [{**im, "id": im["id"] + 1000} for im in gt["images"]]
    anns = [{**a, "id": a["id"] + 10**6, "image_id": a["image_id"] + 1000} for a in gt["annotations"]]
    gt["images"] += copies
    gt["annotations"] += anns
    out.write_text(json.dumps(gt))
    return out


def test_batched_evaluation_scores_rendered_ground_truth_ap_1(tmp_path: Path) -> None:
    ann, image_dir, spec, records, images = sample()
    forward = RenderedForward(images, [r.keypoints for r in records], spec, SIZE, flip=True)
    gt = doubled_ground_truth(ann, tmp_path / "gt.json")
    metrics = evaluate_forward(
        forward, spec, SIZE, gt, image_dir, tmp_path / "results.json", flip=True, progress=False,
        batch_size=4, workers=2,
    )  # fmt: skip
    assert metrics["AP"] == 1.0 and metrics["AR"] == 1.0
    assert metrics["images"] == 10
    assert sum(shape[0] for shape in forward.calls) == 2 * 10  # each image once, with its mirror
    assert max(shape[0] for shape in forward.calls) >= 4  # two equal images (+ mirrors) in one call
    results = json.loads((tmp_path / "results.json").read_text())
    assert {r["image_id"] for r in results} == {r.image_id for r in records} | {
        r.image_id + 1000 for r in records
    }
