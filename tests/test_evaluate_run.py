"""The evaluation runner on stub networks with known answers.

The stub "network" renders the exact training targets of the ground truth for every input it
will be shown (each test scale, and the flip test's mirrored input), so that evaluation through
``evaluate_forward`` -- resize, padding, flip, multi-scale fusion, decoding, mapping back to the
image, results file, official metric -- must give AP = 1. Rescorers with known scores check that
those scores reach ``results.json`` and that a reversed ranking lowers AP by the amount the COCO
rule gives.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import grmpose.tta
from grmpose import build_model
from grmpose.checkpoint import save_weights
from grmpose.config import get_preset
from grmpose.data.coco import ImageRecord, load_coco_keypoints, load_image, resolve_dataset
from grmpose.evaluate_run import evaluate_checkpoint, evaluate_forward
from grmpose.inference import flip_input, prepare_image
from grmpose.spec import KeypointSpec
from grmpose.targets import build_targets
from tests.test_model import randomize_

COCO_DATA = Path(__file__).parent / "data" / "coco"
SIZE = 256  # input short side: every person of the sample has its own centre peak at this size
STRIDE = 4


class RenderedForward:
    """Stub network: exact ground-truth maps for every input prepared from the given images.

    For each image, test scale and (with ``flip``) the mirrored input of ``flip_input`` -- which
    sends input pixel x to ``W - stride - x`` and swaps left and right joints -- the keypoints are
    moved into that input's pixels and rendered with ``build_targets``; tags are zeros. An input
    that is not in the table raises (a wrong resize or padding fails the test).
    """

    def __init__(
        self,
        images: list[np.ndarray],
        keypoints: list[np.ndarray],
        spec: KeypointSpec,
        input_size: int,
        scales: tuple[float, ...] = (1.0,),
        flip: bool = False,
    ) -> None:
        self.table: list[tuple[torch.Tensor, tuple[torch.Tensor, ...]]] = []
        for image, kpts in zip(images, keypoints, strict=True):
            for scale in scales:
                tensor, m = prepare_image(image, max(1, round(input_size * scale)))
                moved = np.asarray(kpts, dtype=np.float64).copy()
                moved[..., :2] = moved[..., :2] @ m[:, :2].T + m[:, 2]
                self.table.append((tensor, self.render(moved, tensor.shape)))
                if flip:
                    mirrored = moved[:, spec.flip_index].copy()
                    mirrored[..., 0] = tensor.shape[2] - STRIDE - mirrored[..., 0]
                    self.table.append(
                        (flip_input(tensor[None], STRIDE)[0], self.render(mirrored, tensor.shape))
                    )
        self.calls: list[tuple[int, ...]] = []

    @staticmethod
    def render(kpts: np.ndarray, input_shape: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
        h, w = input_shape[1] // STRIDE, input_shape[2] // STRIDE
        t = build_targets(kpts, (h, w), stride=STRIDE)
        return t["heatmaps"], t["offsets"], torch.zeros(kpts.shape[1], h, w)

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self.calls.append(tuple(batch.shape))
        rows = []
        for x in batch:
            (out,) = [out for t, out in self.table if t.shape == x.shape and torch.equal(t, x)]
            rows.append(out)
        return tuple(torch.stack(parts) for parts in zip(*rows, strict=True))


def sample() -> tuple[Path, Path, KeypointSpec, list[ImageRecord], list[np.ndarray]]:
    ann, image_dir, spec = resolve_dataset(COCO_DATA, "val")
    records = load_coco_keypoints(ann, image_dir, spec)
    images = [load_image(r.path, exif_transpose=False) for r in records]
    return ann, image_dir, spec, records, images


def read_results(path: Path) -> list[dict]:
    return json.loads(Path(path).read_text())


@pytest.mark.parametrize(
    "scales, flip",
    [((1.0,), False), ((1.0,), True), ((0.5, 1.0, 2.0), False)],
    ids=["single", "flip", "multi-scale"],
)
def test_rendered_ground_truth_scores_ap_1(tmp_path: Path, scales, flip) -> None:
    ann, image_dir, spec, records, images = sample()
    assert sum(r.num_people for r in records) == 15  # people with keypoints in the sample
    forward = RenderedForward(images, [r.keypoints for r in records], spec, SIZE, scales, flip)
    out = tmp_path / "results.json"
    metrics = evaluate_forward(
        forward, spec, SIZE, ann, image_dir, out, flip=flip, scales=scales, progress=False
    )
    assert metrics["AP"] == 1.0 and metrics["AR"] == 1.0
    assert metrics["images"] == metrics["images_total"] == 5 and metrics["images_unreadable"] == 0
    assert len(forward.calls) == 5 * len(scales)  # one call per image and scale
    assert {shape[2] for shape in forward.calls} == {SIZE * s for s in scales}  # short sides (landscape)
    assert all(shape[0] == (2 if flip else 1) for shape in forward.calls)  # mirror in the same call
    results = read_results(out)
    assert {r["image_id"] for r in results} == {r.image_id for r in records}


def test_max_images_cuts_images_and_ground_truth(tmp_path: Path) -> None:
    """The first two images by id: only they are predicted, and AP stays 1 (the other images' people
    are not counted as missed)."""
    ann, image_dir, spec, records, images = sample()
    first = sorted(r.image_id for r in records)[:2]
    forward = RenderedForward(images, [r.keypoints for r in records], spec, SIZE)
    out = tmp_path / "results.json"
    metrics = evaluate_forward(forward, spec, SIZE, ann, image_dir, out, max_images=2, progress=False)
    assert metrics["AP"] == 1.0
    assert metrics["images"] == metrics["images_total"] == 2
    assert len(forward.calls) == 2
    assert {r["image_id"] for r in read_results(out)} == set(first)


def test_unreadable_image_stays_in_ground_truth(tmp_path: Path) -> None:
    """An image that cannot be read costs its people's recall instead of vanishing from the score."""
    ann, image_dir, spec, records, images = sample()
    copy = tmp_path / "images"
    copy.mkdir()
    for r in records:
        (copy / r.file_name).write_bytes(r.path.read_bytes())
    broken = max(records, key=lambda r: r.num_people)  # image 197388: 5 of the 15 people
    (copy / broken.file_name).write_bytes(b"not a jpeg")
    forward = RenderedForward(images, [r.keypoints for r in records], spec, SIZE)
    metrics = evaluate_forward(forward, spec, SIZE, ann, copy, tmp_path / "r.json", progress=False)
    assert metrics["images_unreadable"] == 1 and metrics["images"] == 4
    assert metrics["AR"] == pytest.approx(10 / 15)


# ---------------------------------------------------------------- rescoring end to end


def farthest_point(people: np.ndarray, width: int, height: int, margin: int = 40) -> np.ndarray:
    """The point of a 4-px lattice inside the image farthest from every labelled joint."""
    xs, ys = np.meshgrid(np.arange(margin, width - margin, 4.0), np.arange(margin, height - margin, 4.0))
    grid = np.stack([xs.ravel(), ys.ravel()], 1)
    joints = people[people[..., 2] > 0][:, :2]
    dist = np.linalg.norm(grid[:, None] - joints[None], axis=-1).min(1)
    return grid[dist.argmax()]


def with_decoys(records: list[ImageRecord], k: int) -> list[np.ndarray]:
    """Each image's ground truth plus one decoy: K joints on a circle of radius 5 px, placed as far
    from every real joint as the image allows (a false positive at every OKS threshold)."""
    angles = np.linspace(0, 2 * np.pi, k, endpoint=False)
    out = []
    for r in records:
        centre = farthest_point(r.keypoints, r.width, r.height)
        decoy = np.stack([centre[0] + 5 * np.cos(angles), centre[1] + 5 * np.sin(angles), np.full(k, 2.0)], 1)
        out.append(np.concatenate([r.keypoints, decoy[None]]))
    return out


def box_diagonal(poses: np.ndarray) -> np.ndarray:
    xy = np.asarray(poses)[..., :2]
    return np.linalg.norm(xy.max(-2) - xy.min(-2), axis=-1)


def by_size(poses: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Known scores: the pose's box diagonal / 1000 (people > decoys)."""
    return box_diagonal(poses) / 1000.0


def by_size_reversed(poses: np.ndarray, scores: np.ndarray) -> np.ndarray:
    return 1.0 - box_diagonal(poses) / 1000.0


def test_rescorer_scores_reach_results_and_ranking_sets_ap(tmp_path: Path) -> None:
    """15 people and 5 decoys (one per image). Ranked people first, COCO's AP is 1; ranked decoys
    first, the precision is 15 / 20 at every recall level, so AP = 0.75 at every OKS threshold,
    while recall stays 1."""
    ann, image_dir, spec, records, images = sample()
    forward = RenderedForward(images, with_decoys(records, spec.num_keypoints), spec, SIZE)
    aps = {}
    for name, rescorer in [("size", by_size), ("reversed", by_size_reversed)]:
        out = tmp_path / f"{name}.json"
        metrics = evaluate_forward(
            forward, spec, SIZE, ann, image_dir, out, progress=False, rescorer=rescorer
        )
        results = read_results(out)
        assert len(results) == 20
        for entry in results:  # each written score is the rescorer's, recomputed from the entry
            pose = np.asarray(entry["keypoints"]).reshape(-1, 3)
            assert entry["score"] == pytest.approx(float(rescorer(pose[None], None)[0]), abs=2e-4)
        small = sorted(box_diagonal(np.asarray([e["keypoints"] for e in results]).reshape(20, -1, 3)))
        assert small[4] < 20 < small[5]  # five decoys (diagonal 10 px), fifteen people
        assert metrics["AR"] == 1.0
        aps[name] = metrics["AP"]
    assert aps["size"] == 1.0
    assert aps["reversed"] == pytest.approx(0.75, abs=1e-9)


def tiny_checkpoint(path: Path, spec: KeypointSpec) -> Path:
    config = dataclasses.replace(get_preset("tiny"), input_size=64)
    return save_weights(path, randomize_(build_model(config, spec), seed=0), config, spec)


def known_poses(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Two fixed poses (image pixels) and their decoder scores."""
    rng = np.random.default_rng(0)
    poses = np.concatenate([rng.uniform(20, 300, (2, k, 2)), rng.uniform(0.2, 0.9, (2, k, 1))], 2)
    return poses, np.array([0.8, 0.3])


def test_rescore_file_multiplies_scores_end_to_end(tmp_path: Path, monkeypatch) -> None:
    """``evaluate_checkpoint(rescore=FILE)`` with a net that predicts OKS 0.5 for every pose: the
    person scores in results.json are 0.5 × the decoder's (DEKR's product), keypoints untouched.
    The predictor is replaced by one returning two known poses per image."""
    from grmpose.rescore import RescoreNet, num_features, save_rescorer

    _, _, spec, _, _ = sample()
    poses, scores = known_poses(spec.num_keypoints)
    monkeypatch.setattr(grmpose.tta, "predict_poses", lambda *a, **kw: (poses.copy(), scores.copy()))
    net = RescoreNet(num_features(spec), hidden=8)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.layers[-1].bias.fill_(0.5)
    rescore = save_rescorer(tmp_path / "rescore.safetensors", net, spec)
    ckpt = tiny_checkpoint(tmp_path / "tiny.safetensors", spec)
    metrics = evaluate_checkpoint(ckpt, str(COCO_DATA), out=tmp_path / "e", rescore=rescore, progress=False)
    results = read_results(metrics["results"])
    assert len(results) == 2 * 5
    assert [r["score"] for r in results] == [0.4, 0.15] * 5
    for r, pose in zip(results, list(poses) * 5, strict=True):
        np.testing.assert_allclose(np.reshape(r["keypoints"], (-1, 3)), pose, atol=5e-3)


# ---------------------------------------------------------------- evaluate_checkpoint switches


def test_multi_scale_and_flip_switches_reach_the_predictor(tmp_path: Path, monkeypatch) -> None:
    seen = []
    k = sample()[2].num_keypoints

    def spy(forward, image, spec, input_size, **kwargs):
        seen.append((input_size, kwargs["flip"], tuple(kwargs["scales"]), kwargs["decoder"]))
        return np.zeros((0, k, 3)), np.zeros(0)

    monkeypatch.setattr(grmpose.tta, "predict_poses", spy)
    ckpt = tiny_checkpoint(tmp_path / "tiny.safetensors", sample()[2])
    evaluate_checkpoint(ckpt, str(COCO_DATA), out=tmp_path / "a", max_images=1, progress=False)
    evaluate_checkpoint(
        ckpt, str(COCO_DATA), out=tmp_path / "b", max_images=2, flip=True, multi_scale=True,
        decoder="hybrid", progress=False,
    )  # fmt: skip
    assert seen == [(64, False, (1.0,), "regression")] + [(64, True, (0.5, 1.0, 2.0), "hybrid")] * 2


def test_eval_input_size_sets_the_test_short_side(tmp_path: Path, monkeypatch, capsys) -> None:
    """``grmpose eval --input-size 96`` runs the predictor at short side 96 (the model trained at 64);
    without it the model's size; 0 is refused with one line before anything is written."""
    from grmpose.cli import main

    seen = []
    k = sample()[2].num_keypoints

    def spy(forward, image, spec, input_size, **kwargs):
        seen.append(input_size)
        return np.zeros((0, k, 3)), np.zeros(0)

    monkeypatch.setattr(grmpose.tta, "predict_poses", spy)
    ckpt = tiny_checkpoint(tmp_path / "tiny.safetensors", sample()[2])
    base = ["eval", "--checkpoint", str(ckpt), "--data", str(COCO_DATA), "--max-images", "1", "--quiet"]
    assert main([*base, "--out", str(tmp_path / "a"), "--input-size", "96"]) == 0
    assert main([*base, "--out", str(tmp_path / "b")]) == 0
    assert seen == [96, 64]
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "c"), "--input-size", "0"]) != 0
    assert "--input-size must be positive" in capsys.readouterr().err and not (tmp_path / "c").exists()


def pooled_stub_onnx(path: Path, k: int) -> Path:
    """A hand-built ONNX graph (no export needed): m = mean over channels of a 4×4 average pool;
    heatmaps = sigmoid(m) in K+1 channels, offsets = 3·m in 2K, tags = m in K."""
    from onnx import TensorProto, helper, save

    def tile(name: str, src: str, n: int) -> list:
        reps = helper.make_tensor(f"{name}_reps", TensorProto.INT64, [4], [1, n, 1, 1])
        return [
            helper.make_node("Constant", [], [f"{name}_r"], value=reps),
            helper.make_node("Tile", [src, f"{name}_r"], [name]),
        ]

    three = helper.make_tensor("three_v", TensorProto.FLOAT, [], [3.0])
    nodes = [
        helper.make_node("AveragePool", ["image"], ["pooled"], kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("ReduceMean", ["pooled"], ["m"], axes=[1], keepdims=1),
        helper.make_node("Sigmoid", ["m"], ["s"]),
        helper.make_node("Constant", [], ["three"], value=three),
        helper.make_node("Mul", ["m", "three"], ["m3"]),
        *tile("heatmaps", "s", k + 1),
        *tile("offsets", "m3", 2 * k),
        *tile("tags", "m", k),
    ]
    dims = ["batch", 3, "height", "width"]
    outputs = [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", c, "h", "w"])
        for name, c in (("heatmaps", k + 1), ("offsets", 2 * k), ("tags", k))
    ]
    graph = helper.make_graph(
        nodes, "pooled_stub", [helper.make_tensor_value_info("image", TensorProto.FLOAT, dims)], outputs
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    save(model, str(path))
    return path


def pooled_stub_torch(k: int):
    def forward(batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m = torch.nn.functional.avg_pool2d(batch, 4).mean(1, keepdim=True)
        return m.sigmoid().repeat(1, k + 1, 1, 1), (3 * m).repeat(1, 2 * k, 1, 1), m.repeat(1, k, 1, 1)

    return forward


def test_onnxruntime_backend_runs_the_exported_graph(tmp_path: Path, monkeypatch) -> None:
    """``evaluate_checkpoint(backend="onnxruntime")`` runs what ``export_cached`` wrote in ONNX
    Runtime: with a hand-built graph in place of the export (exporting the real model takes minutes
    on a busy CPU), its results equal ``evaluate_forward`` on the same function in PyTorch."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import grmpose.api

    ann, image_dir, spec, _, _ = sample()
    k = spec.num_keypoints
    exported = []

    def fake_export(model, config, spec_, onnx_path, **extra):
        exported.append(onnx_path)
        return pooled_stub_onnx(onnx_path, k)

    monkeypatch.setattr(grmpose.api, "export_cached", fake_export)
    ckpt = tiny_checkpoint(tmp_path / "tiny.safetensors", spec)
    common = dict(flip=True, max_images=2, progress=False)
    ort_run = evaluate_checkpoint(ckpt, str(COCO_DATA), out=tmp_path / "ort", backend="onnxruntime", **common)
    assert exported == [tmp_path / "ort" / "model.onnx"]
    ref = evaluate_forward(pooled_stub_torch(k), spec, 64, ann, image_dir, tmp_path / "ref.json", **common)
    a, b = read_results(ort_run["results"]), read_results(tmp_path / "ref.json")
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        assert x["image_id"] == y["image_id"]
        np.testing.assert_allclose(x["keypoints"], y["keypoints"], atol=2e-2)
        assert x["score"] == pytest.approx(y["score"], abs=2e-4)
    assert ort_run["AP"] == pytest.approx(ref["AP"], abs=1e-6)
