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


def test_export_takes_the_checkpoint_as_its_argument(tmp_path, capsys):
    """``grmpose export CKPT --output M`` exports that checkpoint's weights (not a preset's random ones)."""
    config = get_preset("tiny")
    model = randomize_(build_model(config, CROWDPOSE), seed=3)
    ckpt = save_weights(tmp_path / "w.safetensors", model, config, CROWDPOSE)
    onnx_path = tmp_path / "w.onnx"
    assert cli_main(["export", str(ckpt), "--output", str(onnx_path)]) == 0
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ref = model(x)
    for r, g in zip(ref, session.run(None, {"images": x.numpy()})):
        np.testing.assert_allclose(g, r.numpy(), atol=1e-4, rtol=0)
    # given twice: one line naming both, nothing written
    other = tmp_path / "other.onnx"
    assert cli_main(["export", str(ckpt), "--checkpoint", str(ckpt), "--output", str(other)]) == 2
    assert "give the checkpoint once" in capsys.readouterr().err and not other.exists()


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


# ------------------------------------------------------------------------------------------ int8
INT8_SIZE = 64  # calibration and test short side: small, so the fixture stays a few seconds


def legacy_onnx(model: torch.nn.Module, path) -> None:
    """The TorchScript exporter: seconds instead of the dynamo exporter's half minute on this CPU.
    ``quantize_int8`` takes any ONNX file, so its tests need not pay for the dynamo export."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.zeros(2, 3, 64, 64),), str(path), input_names=["images"],
            output_names=["heatmaps", "offsets", "tags"], dynamo=False, opset_version=17,
            dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}},
        )  # fmt: skip


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory):
    from grmpose.export import quantize_int8
    from tests.test_api import BUS, SKIERS

    tmp = tmp_path_factory.mktemp("int8")
    model = randomize_(build_model("tiny", COCO), seed=0).eval()
    legacy_onnx(model, tmp / "fp32.onnx")
    report = quantize_int8(tmp / "fp32.onnx", tmp / "int8.onnx", [SKIERS, BUS], INT8_SIZE)
    return model, tmp / "int8.onnx", report


def _producers(graph) -> dict:
    return {out: node for node in graph.node for out in node.output}


def test_int8_weights_are_per_channel_7_bit(int8_model) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    _, path, report = int8_model
    graph = onnx.load(str(path)).graph
    inits = {i.name: i for i in graph.initializer}
    producer = _producers(graph)
    convs = [n for n in graph.node if n.op_type == "Conv"]
    quantized = 0
    for conv in convs:
        weight = conv.input[1]
        if weight in inits:  # kept in float32
            assert numpy_helper.to_array(inits[weight]).dtype == np.float32
            continue
        dq = producer[weight]
        assert dq.op_type == "DequantizeLinear"
        q = numpy_helper.to_array(inits[dq.input[0]])
        scale = numpy_helper.to_array(inits[dq.input[1]])
        assert q.dtype == np.int8
        assert scale.shape == (q.shape[0],)  # one scale per output channel
        assert np.abs(q.astype(int)).max() <= 64  # reduce_range: 7-bit weights
        quantized += 1
    assert quantized >= 0.9 * len(convs) and quantized == report.quantized_ops["Conv"]


def test_int8_keeps_heads_and_sampling_grids_in_float(int8_model) -> None:
    onnx = pytest.importorskip("onnx")

    _, path, report = int8_model
    graph = onnx.load(str(path)).graph
    producer = _producers(graph)
    inits = {i.name for i in graph.initializer}

    def float_path(tensor: str, stop: tuple[str, ...]) -> set[str]:
        """Op types met walking back from ``tensor`` to the first ``stop`` node of each path."""
        seen, ops, stack = set(), set(), [tensor]
        while stack:
            node = producer.get(stack.pop())
            if node is None or node.name in seen or node.op_type == "Shape":
                continue
            seen.add(node.name)
            ops.add(node.op_type)
            if node.op_type in stop:
                dqs = [producer[i] for i in node.input if i in producer]
                int8_weights = [d for d in dqs if d.op_type == "DequantizeLinear" and d.input[0] in inits]
                assert not int8_weights, f"{node.name} has int8 weights"
                continue
            stack.extend(node.input)
        return ops

    for output in graph.output:  # heatmaps, offsets, tags: no int8 step between head conv and output
        assert not float_path(output.name, ("Conv", "MatMul")) & {"DequantizeLinear", "QuantizeLinear"}
    grid_samples = [n for n in graph.node if n.op_type == "GridSample"]
    assert grid_samples and report.kept_fp32_ops["GridSample"] == len(grid_samples)
    for node in grid_samples:  # the sampling grid is computed in float from the A/t conv on
        assert not float_path(node.input[1], ("Conv",)) & {"DequantizeLinear", "QuantizeLinear"}


def test_int8_outputs_follow_the_float_model(int8_model) -> None:
    from grmpose.data.coco import load_image
    from grmpose.inference import prepare_image
    from tests.test_api import SKIERS

    model, path, _ = int8_model
    x, _ = prepare_image(load_image(SKIERS), INT8_SIZE)
    with torch.no_grad():
        ref = [r.numpy() for r in model(x[None])]
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"images": x[None].numpy()}
    )
    for r, g in zip(ref, got):
        assert g.shape == r.shape
        # a random-weight network quantises poorly, but a wrong scale or axis gives no correlation
        assert np.corrcoef(r.ravel(), g.ravel())[0, 1] > 0.85


def test_predict_runs_an_int8_model_with_onnxruntime(int8_model, tmp_path) -> None:
    import json
    import shutil

    from grmpose.api import write_sidecar
    from grmpose.predict import predict_main
    from tests.test_api import SKIERS

    _, path, _ = int8_model
    onnx_path = shutil.copy(path, tmp_path / "int8.onnx")
    write_sidecar(onnx_path, get_preset("tiny"), COCO, precision="int8")
    summary = predict_main(
        str(SKIERS), str(tmp_path / "out"), checkpoint=str(onnx_path), backend="onnxruntime",
        input_size=INT8_SIZE, progress=False,
    )  # fmt: skip
    assert summary["processed"] == 1 and summary["people"] > 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(results) == summary["people"] and all(len(r["keypoints"]) == 51 for r in results)


def test_int8_export_flags_are_checked(tmp_path, capsys) -> None:
    from grmpose.export import calibration_images

    assert cli_main(["export", "tiny", "--output", str(tmp_path / "m.onnx"), "--int8"]) == 2
    assert "--int8 needs --calibration" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--calibration .*nothing"):
        calibration_images(tmp_path / "nothing")
    assert not (tmp_path / "m.onnx").exists()
