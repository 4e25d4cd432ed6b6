"""ONNX export (dynamic shapes) and safe checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grmpose import build_model
from grmpose.checkpoint import CheckpointError, load_model, save_training_checkpoint, save_weights
from grmpose.cli import main as cli_main
from grmpose.config import get_preset
from grmpose.spec import COCO, CROWDPOSE
from tests.test_model import randomize_

ort = pytest.importorskip("onnxruntime")


def test_onnx_parity_at_other_sizes(tmp_path):
    config = get_preset("tiny")
    model = randomize_(build_model(config, COCO), seed=7)
    ckpt = save_weights(tmp_path / "tiny.safetensors", model, config, COCO)
    onnx_path = tmp_path / "tiny.onnx"
    assert cli_main(["export", "--checkpoint", str(ckpt), "--output", str(onnx_path)]) == 0
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 256, 256), (2, 3, 192, 320), (3, 3, 96, 64)]:  # exported at 256 x 256, batch 1
        x = torch.randn(*shape)
        with torch.no_grad():
            ref = model(x)
        got = session.run(None, {"images": x.numpy()})
        for r, g in zip(ref, got):
            assert g.shape == tuple(r.shape)
            np.testing.assert_allclose(g, r.numpy(), atol=1e-4, rtol=0)


def test_safetensors_round_trip(tmp_path):
    config = get_preset("tiny")
    model = randomize_(build_model(config, CROWDPOSE), seed=1)
    path = save_weights(tmp_path / "w.safetensors", model, config, CROWDPOSE)
    loaded, config2, spec2 = load_model(path)
    assert config2 == config and spec2 == CROWDPOSE
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(model(x), loaded(x)):
            torch.testing.assert_close(a, b)


def test_training_checkpoint_loads_with_weights_only(tmp_path):
    config = get_preset("tiny")
    model = build_model(config, COCO)
    path = save_training_checkpoint(
        tmp_path / "c.pt", model, config, COCO, epoch=3, rng=torch.get_rng_state()
    )
    payload = torch.load(path, weights_only=True)
    assert payload["epoch"] == 3
    _, _, spec = load_model(path)
    assert spec == COCO
    with pytest.raises(CheckpointError, match="crowdpose"):
        load_model(path, spec=CROWDPOSE)


def test_bad_checkpoints_are_refused(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_model(bad)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": Evil()}, evil)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_model(evil)
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing.safetensors")
