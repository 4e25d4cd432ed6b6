"""Reduced precision at inference: bfloat16 weights and inputs in the torch backend."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from grmpose.api import PoseEstimator, TorchForward
from grmpose.cli import main as cli_main
from grmpose.data.coco import load_image
from grmpose.inference import prepare_image
from tests.test_api import SKIERS, TEST_SIZE, random_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


def test_bfloat16_maps_follow_float32(checkpoint) -> None:
    fp32 = PoseEstimator.from_checkpoint(checkpoint, input_size=TEST_SIZE)
    bf16 = PoseEstimator.from_checkpoint(checkpoint, input_size=TEST_SIZE, dtype="bfloat16")
    assert bf16.dtype == "bfloat16" and "bfloat16" in repr(bf16)
    assert all(p.dtype == torch.bfloat16 for p in bf16.forward.model.parameters())
    x, _ = prepare_image(load_image(SKIERS), TEST_SIZE)
    ref = fp32.forward(x[None])
    got = bf16.forward(x[None])
    for r, g in zip(ref, got):
        assert g.dtype == torch.float32 and g.shape == r.shape  # decoding reads float32 maps
        # bfloat16 keeps 8 significant bits: errors of a few per cent of the maps' range, no more
        assert float((r - g).abs().max()) < 0.05 * float(r.abs().max())
        assert np.corrcoef(r.numpy().ravel(), g.numpy().ravel())[0, 1] > 0.995


def test_dtype_errors_name_the_option(checkpoint) -> None:
    with pytest.raises(ValueError, match="float16 runs on CUDA only"):
        TorchForward(torch.nn.Conv2d(3, 3, 1), "cpu", "float16")
    with pytest.raises(ValueError, match="dtype must be one of"):
        PoseEstimator.from_checkpoint(checkpoint, dtype="int8")
    with pytest.raises(ValueError, match="backend 'torch'"):
        PoseEstimator.from_preset("tiny", backend="onnxruntime", dtype="bfloat16")


def test_cli_predict_with_bfloat16_batches(checkpoint, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    args = ["predict", str(SKIERS.parent), "--checkpoint", str(checkpoint), "--out", str(out), "--quiet",
            "--input-size", str(TEST_SIZE), "--dtype", "bfloat16", "--batch-size", "2", "--workers", "1"]  # fmt: skip
    assert cli_main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["processed"] == 2 and summary["batch_size"] == 2 and summary["images_per_s"] > 0
    assert cli_main([*args[:-6], "--batch-size", "0"]) == 2
    assert "--batch-size must be >= 1" in capsys.readouterr().err
