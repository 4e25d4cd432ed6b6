"""benchmarks.heatmap_head_capacity: the frozen features are the heads' real input, and the benchmark's
scoring of the checkpoint's own head is the heatmap PCK of the whole model (``grmpose.heatmap_pck``)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from benchmarks.heatmap_head_capacity import main, make_head
from grmpose import build_model
from grmpose.checkpoint import save_weights
from grmpose.config import get_preset
from grmpose.data.coco import load_coco_keypoints, resolve_dataset
from grmpose.data.synthetic import generate_dataset
from grmpose.heatmap_pck import heatmap_pck
from grmpose.model.blocks import BasicBlock
from grmpose.spec import COCO
from tests.test_model import randomize_


def test_features_are_what_the_heads_read() -> None:
    """The heads applied to ``GRMPoseNet.features`` give the network's own outputs."""
    model = randomize_(build_model("tiny", COCO), seed=3).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        heatmaps, offsets, tags = model(x)
        feats = model.features(x)
        h2, t2 = model.heatmap_head(feats)
        o2 = model.offset_head(feats)
    assert feats.shape == (2, model.grm.out_channels, 16, 24)
    for a, b in ((heatmaps, h2), (offsets, o2), (tags, t2)):
        torch.testing.assert_close(a, b)


def test_head_names() -> None:
    model = build_model("tiny", COCO)
    trained = make_head("trained", model.heatmap_head, 256, 17)
    assert trained is not model.heatmap_head
    torch.testing.assert_close(trained.heatmap.weight, model.heatmap_head.heatmap.weight)
    deep = make_head("32x3", model.heatmap_head, 256, 17)
    assert sum(isinstance(m, BasicBlock) for m in deep.features) == 3
    assert deep.heatmap.in_channels == 32
    with pytest.raises(ValueError, match="at least 1"):
        make_head("0", model.heatmap_head, 256, 17)


def test_the_checkpoints_head_scores_the_models_heatmap_pck(tmp_path: Path) -> None:
    data = tmp_path / "data"
    generate_dataset(data, COCO, 3, seed=5, image_size=128, split="train", max_people=3, workers=1)
    generate_dataset(data, COCO, 2, seed=6, image_size=128, split="val", max_people=3, workers=1)
    config = dataclasses.replace(get_preset("tiny"), input_size=64)
    model = randomize_(build_model(config, COCO), seed=0)
    ckpt = save_weights(tmp_path / "tiny.safetensors", model, config, COCO)
    argv = [str(ckpt), str(data), "--heads", "trained,8", "--steps", "2", "--batch", "2"]
    record = main([*argv, "--input-size", "64", "--results", str(tmp_path / "results")])

    ann, images, spec = resolve_dataset(str(data), "val")
    reference = heatmap_pck(model, load_coco_keypoints(ann, images, spec), spec, 64)["pck"]
    rows = {r["head"]: r for r in record["rows"]}
    assert rows["trained"]["pck_before"] == pytest.approx(reference, abs=1e-9)
    assert record["features"] == {"train": 3, "val": 2, "channels": model.grm.out_channels}
    written = json.loads((tmp_path / "results" / "heatmap_head_capacity.json").read_text())
    assert written["rows"] == json.loads(json.dumps(record["rows"]))
    assert "benchmarks.heatmap_head_capacity" in written["provenance"]["command"]
    assert "| 8 |" in (tmp_path / "results" / "heatmap_head_capacity.md").read_text()
