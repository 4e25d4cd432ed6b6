"""The levers that make short runs learn: offset unit, mean-pose bias, learning curve, demo level."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from grmpose.config import get_preset
from grmpose.data.coco import load_coco_keypoints, resolve_dataset
from grmpose.data.dataset import PoseDataset
from grmpose.data.synthetic import generate
from grmpose.learning_curve import learning_curve, write_learning_curve
from grmpose.model.net import GRMPoseNet
from grmpose.train import TargetCollate, mean_offsets

SIZE = 64


def tiny(unit: float) -> GRMPoseNet:
    torch.manual_seed(0)
    return GRMPoseNet(dataclasses.replace(get_preset("tiny"), input_size=SIZE, offset_unit=unit), 17).eval()


def test_offset_unit_scales_the_last_conv_and_nothing_else():
    """offsets = unit * (last conv of the same features): with the same weights, unit 8 gives 8x the
    offsets of unit 1, and the same heatmaps and tags."""
    one, eight = tiny(1.0), tiny(8.0)
    eight.load_state_dict(one.state_dict())
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        h1, o1, t1 = one(x)
        h8, o8, t8 = eight(x)
    torch.testing.assert_close(o8, 8.0 * o1)
    torch.testing.assert_close(h8, h1)
    torch.testing.assert_close(t8, t1)


def test_offset_bias_gives_the_mean_pose_from_zero_features():
    model = tiny(8.0)
    mean = torch.linspace(-10.0, 10.0, 34)
    model.offset_head.set_offset_bias(mean)
    head = model.offset_head
    k, c = head.num_keypoints, head.channels
    zero = torch.zeros(1, k * c, 4, 4)
    with torch.no_grad():  # the last layer alone, as OffsetHead.forward applies it
        out = torch.einsum("goi,bgin->bgon", head.offset.weight.reshape(k, 2, c), zero.reshape(1, k, c, 16))
        out = (out + head.offset.bias.reshape(k, 2)[:, :, None]).reshape(1, 2 * k, 4, 4) * head.unit
    torch.testing.assert_close(out[0, :, 2, 3], mean)


@pytest.fixture(scope="module")
def demo_level_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("levels")
    generate(out, "coco", 12, 2, seed=3, image_size=(96, 80), max_people=3, height_range=(0.4, 0.9))
    return out


def test_mean_offsets_is_the_weighted_mean_of_the_targets(demo_level_data):
    """Against a loop over every cell of every sample's targets."""
    ann, images, spec = resolve_dataset(str(demo_level_data), "train")
    dataset = PoseDataset(load_coco_keypoints(ann, images, spec), spec, SIZE, augment=True, seed=0)
    collate = TargetCollate(SIZE // 4, 4.0)
    got = mean_offsets(dataset, collate, batch_size=5, images=12)
    total, weight = np.zeros(34), np.zeros(34)
    for i in range(12):
        t = collate([dataset[i]])["targets"]
        off, w = t["offsets"][0].numpy(), t["offset_weights"][0].numpy()
        for ch in range(34):
            for y in range(SIZE // 4):
                for x in range(SIZE // 4):
                    total[ch] += off[ch, y, x] * w[ch, y, x]
                    weight[ch] += w[ch, y, x]
    expected = np.where(weight > 0, total / np.maximum(weight, 1e-12), 0.0)
    assert (weight > 0).sum() >= 20  # the synthetic people carry most joints
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-5)


def test_learning_curve_reads_val_records_and_plots(tmp_path):
    records = [
        {"kind": "train", "step": 10, "loss": 1.0},
        {"kind": "val", "epoch": 0, "step": 20, "minutes": 1.5, "AP": 0.1, "AP50": 0.3},
        {"kind": "epoch", "step": 20},
        {"kind": "val", "epoch": 1, "step": 40, "minutes": 3.0, "AP": 0.25, "AP50": 0.5, "heatmap_pck": 0.4},
    ]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    points = learning_curve(tmp_path / "log.jsonl")
    assert points == [
        {"minutes": 1.5, "step": 20, "AP": 0.1, "AP50": 0.3, "heatmap_pck": None},
        {"minutes": 3.0, "step": 40, "AP": 0.25, "AP50": 0.5, "heatmap_pck": 0.4},
    ]
    png = write_learning_curve(points, tmp_path / "c.json", tmp_path / "c.png", "test", goal=0.5)
    assert json.loads((tmp_path / "c.json").read_text())["points"] == points
    if png is not None:  # matplotlib is in the dev extra
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_end_to_end_writes_metrics_curve_and_pictures(tmp_path, capsys):
    """The main job on a handful of small images: the CLI prints AP next to the goal, and the output
    folder holds demo.json, the learning curve (one point per epoch) and the pictures."""
    from grmpose.cli import main

    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--minutes", "0.15", "--train-images", "16", "--val-images", "3",
                 "--workers", "0", "--quiet"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    assert "against the goal of 0.5" in printed
    assert "3 images from another seed, flip test" in printed and "AP without the flip test" in printed
    assert "PCK, given the person" in printed
    result = json.loads((out / "demo.json").read_text())
    assert 0.0 <= result["heatmap_pck"]["pck"] <= 1.0 and result["heatmap_pck"]["joints"] > 0
    assert result["goal_AP"] == 0.5 and 0.0 <= result["metrics"]["AP"] <= 1.0
    assert result["metrics"]["images"] == 3
    # DEKR's protocol (mirrors in training, the flip test) for the main figure, the AP without beside it
    assert result["flip_test"] is True and result["metrics_flip_test"] == result["metrics"]
    assert result["metrics_no_flip_test"]["images"] == 3
    no_flip = json.loads((out / "eval_no_flip" / "metrics.json").read_text())
    assert no_flip["AP"] == result["metrics_no_flip_test"]["AP"]
    # DEKR's rescoring net when the model predicted poses on its training images, else none
    if result["rescore"]:
        assert (out / "rescore.safetensors").is_file() and "AP without the rescoring net" in printed
        assert result["metrics_no_rescore"]["images"] == 3
        assert json.loads((out / "eval" / "metrics.json").read_text())["AP"] == result["metrics"]["AP"]
    else:
        assert not (out / "rescore.safetensors").exists() and result["metrics_no_rescore"] == result["metrics"]
    assert json.loads((out / "run" / "config.json").read_text())["train"]["flip_prob"] == 0.5
    points = json.loads((out / "learning_curve.json").read_text())["points"]
    assert points and all(p["minutes"] >= 0 and 0.0 <= p["AP"] <= 1.0 for p in points)
    # each validation also measured the heatmap PCK on the (3) held-out images
    assert all(0.0 <= p["heatmap_pck"] <= 1.0 for p in points)
    assert [p["step"] for p in points] == sorted(p["step"] for p in points)
    assert len(list((out / "pictures").glob("*.jpg"))) == 3
    data = json.loads((out / "data" / "val.json").read_text())
    assert data["info"]["max_people"] == 5 and data["info"]["height_range"] == [0.25, 0.9]


def test_offset_unit_option_builds_the_head_with_that_unit(demo_level_data, tmp_path):
    """``grmpose train --offset-unit 8``: the trained model's config (checkpoint) has unit 8 and its
    offsets are 8 x its last conv's output; without the flag the preset's unit (1) is kept."""
    from grmpose.checkpoint import load_model
    from grmpose.cli import main

    base = ["train", "--data", str(demo_level_data), "--preset", "tiny", "--input-size", "64", "--batch-size", "2",
            "--max-steps", "1", "--val-every", "0", "--workers", "0", "--quiet"]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "u8"), "--offset-unit", "8", "--offset-blocks", "2",
                 "--offset-channels", "15"]) == 0
    assert main([*base, "--out", str(tmp_path / "u1")]) == 0
    model, config, _ = load_model(tmp_path / "u8" / "last.safetensors")
    assert config.offset_unit == 8.0 and model.offset_head.unit == 8.0
    # --offset-blocks: the head holds that many adaptive blocks (tiny's own is 1)
    # --offset-blocks / --offset-channels: the head's size (tiny's own: 1 block of 8 channels per keypoint)
    assert config.offset_blocks == 2 and len(model.offset_head.blocks) == 2
    assert config.offset_channels_per_kpt == 15 and model.offset_head.transition[0].out_channels == 17 * 15
    preset_config = load_model(tmp_path / "u1" / "last.safetensors")[1]
    assert (preset_config.offset_unit, preset_config.offset_blocks, preset_config.offset_channels_per_kpt) == (1, 1, 8)
    model.offset_head.unit = 1.0
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        raw = model(x)[1]
        model.offset_head.unit = 8.0
        torch.testing.assert_close(model(x)[1], 8.0 * raw)


def test_flip_prob_zero_never_mirrors_and_one_always_does():
    """``--flip-prob`` reaches the augmentation: the flip draws of 200 samples follow it."""
    from grmpose.data.transforms import AugmentRanges, sample_augment

    rng = np.random.default_rng(0)
    for prob, lo, hi in ((0.0, 0, 0), (1.0, 200, 200), (0.5, 70, 130)):
        flips = sum(sample_augment(rng, AugmentRanges(flip_prob=prob)).flip for _ in range(200))
        assert lo <= flips <= hi, (prob, flips)


def test_augmentation_flags_reach_the_training_dataset(tmp_path, monkeypatch):
    """``--max-rotation``, ``--scale-range``, ``--max-translate`` and ``--flip-prob`` become the
    training set's ``AugmentRanges`` (captured where ``train`` builds its dataset); without them the
    ranges are DEKR's (±30°, 0.75-1.5, ±40, flips 0.5)."""
    import grmpose.train
    from grmpose.cli import main

    data = tmp_path / "data"
    generate(data, "coco", 4, 2, 0, 64, 2)
    seen = []

    def capture(*args, **kwargs):  # stops the run there (the CLI reports the error and returns 1)
        seen.append(kwargs["ranges"])
        raise RuntimeError("captured")

    monkeypatch.setattr(grmpose.train, "PoseDataset", capture)
    common = ["train", "--data", str(data), "--batch-size", "2", "--input-size", "64", "--quiet"]
    main([*common, "--out", str(tmp_path / "a"), "--max-rotation", "5", "--scale-range", "0.9", "1.1",
          "--max-translate", "7", "--flip-prob", "0"])  # fmt: skip
    main([*common, "--out", str(tmp_path / "b")])
    got = [(r.max_rotation, r.min_scale, r.max_scale, r.max_translate, r.flip_prob) for r in seen]
    assert got == [(5.0, 0.9, 1.1, 7.0, 0.0), (30.0, 0.75, 1.5, 40.0, 0.5)]


def test_keep_freed_memory_keeps_big_blocks_in_the_process():
    """After ``keep_freed_memory`` the steps of a conv forward/backward loop reuse the memory the
    previous step freed: page faults over 5 steps fall to under a tenth of glibc's default, which
    unmaps its big blocks on every free and faults them in again (measured here: 8,192 against
    409,650). Each case runs in its own process (the setting is process-wide)."""
    import subprocess
    import sys

    script = """
import resource, sys, torch
from grmpose.runtime import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
conv = torch.nn.Conv2d(16, 64, 3, padding=1)
x = torch.randn(8, 16, 128, 128)
def step():
    conv(x).relu().square().mean().backward()
step(); step()
before = faults()
for _ in range(5):
    step()
print(applied, faults() - before)
"""
    out = {}
    for mode in ("keep", "default"):
        res = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, check=True)
        applied, new_faults = res.stdout.split()
        out[mode] = (applied == "True", int(new_faults))
    assert out["keep"][0] and not out["default"][0]
    assert out["default"][1] > 100_000, out  # 5 steps x ~64 MiB activations, faulted in afresh
    assert out["keep"][1] < 0.1 * out["default"][1], out


@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_sigma_option_sets_the_keypoint_gaussian(sigma):
    """``--sigma`` reaches the targets: one cell from a keypoint the heatmap is exp(-1 / (2 σ²))."""
    from grmpose.train import TargetCollate

    kpts = np.zeros((1, 17, 3), np.float32)
    kpts[0, :, :2] = 40.0  # input px -> map cell 10 at stride 4
    kpts[0, :, 2] = 2
    sample = {
        "image": torch.zeros(3, 64, 64),
        "keypoints": torch.from_numpy(kpts),
        "centers": torch.tensor([[40.0, 40.0, 1.0]]),
        "sizes": torch.tensor([50.0]),
        "mask": torch.ones(16, 16),
        "matrix": torch.zeros(2, 3),
        "image_id": 0,
    }
    heat = TargetCollate(16, center_sigma=4.0, sigma=sigma)([sample])["targets"]["heatmaps"][0]
    assert heat[0, 10, 10].item() == pytest.approx(1.0)
    assert heat[0, 10, 11].item() == pytest.approx(np.exp(-1.0 / (2 * sigma**2)), rel=1e-5)
    assert heat[17, 10, 11].item() == pytest.approx(
        np.exp(-1.0 / (2 * 4.0**2)), rel=1e-5
    )  # the centre keeps 4


def test_kaiming_init_draws_hidden_convs_by_fan_out_and_keeps_the_outputs_small():
    """He's rule: std sqrt(2 / (out_channels * kernel area)); the heads' last convs keep DEKR's
    N(0, 0.001) and the adaptive convolutions' A/t predictors stay zero."""
    from grmpose.model.init_weights import kaiming_init

    model = tiny(1.0)
    zero_before = {m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and not m.weight.any()}
    assert zero_before  # the A/t predictors
    keep = model.prediction_layers()
    kaiming_init(model, keep)
    big = [
        m for m in model.modules()
        if isinstance(m, torch.nn.Conv2d) and m.weight.numel() >= 4096 and m not in zero_before
    ]  # fmt: skip
    assert big and not (set(big) & keep)
    for m in big:
        fan_out = m.weight.shape[0] * m.weight.shape[2] * m.weight.shape[3]
        assert m.weight.std().item() == pytest.approx((2.0 / fan_out) ** 0.5, rel=0.1)
    for m in keep:
        assert m.weight.std().item() < 0.002
    assert all(not m.weight.any() for m in zero_before)


def test_init_option_rejects_unknown_rules():
    from grmpose.train import TrainConfig

    with pytest.raises(ValueError, match="--init must be one of dekr, kaiming"):
        TrainConfig(data="d", out="o", init="xavier")


def test_heatmap_pck_counts_joints_found_inside_the_person_box():
    from grmpose.heatmap_pck import found_joints

    # one person, labelled joints 0 (2, 2) and 1 (12, 2) and 2 (2, 12); joint 3 unlabelled.
    kpts = np.array([[[2, 2, 2], [12, 2, 2], [2, 12, 2], [20, 20, 0]]], dtype=np.float64)
    heat = np.zeros((4, 32, 32))
    heat[0, 2, 3] = 1.0  # 1 px off; the diagonal is 14.1, so the radius is 1.41: found
    heat[1, 5, 12] = 1.0  # 3 px off: not found
    heat[1, 30, 30] = 5.0  # a brighter peak outside the padded box is not looked at
    heat[2, 12, 2] = 1.0  # exact
    heat[2, 2, 2] = 0.5
    found, labelled = found_joints(heat, kpts)
    assert labelled.tolist() == [1, 1, 1, 0]
    assert found.tolist() == [1, 0, 1, 0]
    # a person with fewer than three labelled joints is skipped
    found, labelled = found_joints(heat, kpts[:, [0, 1, 3]])
    assert labelled.sum() == 0


def test_heatmap_pck_is_one_for_the_target_heatmaps_and_drops_when_shifted(demo_level_data):
    from grmpose.heatmap_pck import heatmap_pck
    from grmpose.targets import build_targets

    ann, images, spec = resolve_dataset(str(demo_level_data), "train")
    # one person: with several, another's peak inside the person's box may rightly be the maximum
    record = next(r for r in load_coco_keypoints(ann, images, spec) if len(r.keypoints) == 1)
    sample = PoseDataset([record], spec, SIZE, augment=False)[0]
    heat = build_targets(sample["keypoints"].numpy(), (SIZE // 4, SIZE // 4))["heatmaps"]

    class Fixed(torch.nn.Module):
        def __init__(self, maps):
            super().__init__()
            self.maps = torch.nn.Parameter(maps[None], requires_grad=False)

        def forward(self, x):
            return self.maps, None, None

    right = heatmap_pck(Fixed(heat), [record], spec, SIZE)
    assert right["pck"] == 1.0 and right["joints"] > 0
    shifted = heatmap_pck(Fixed(torch.roll(heat, shifts=4, dims=2)), [record], spec, SIZE)
    assert shifted["pck"] < 0.5


def test_default_workers_are_none_on_the_cpu_and_two_on_cuda():
    from grmpose.train import TrainConfig, default_workers

    assert default_workers(torch.device("cpu")) == 0
    assert default_workers(torch.device("cuda", 0)) == 2
    assert TrainConfig(data="d", out="o").workers is None
    with pytest.raises(ValueError, match="--workers must be 0 or more"):
        TrainConfig(data="d", out="o", workers=-1)


def test_heatmap_loss_focal_trains_sigmoid_maps_and_resume_keeps_them(demo_level_data, tmp_path, capsys):
    """``grmpose train --heatmap-loss focal``: the checkpoint's model has sigmoid heatmaps (values in
    (0, 1), logged heatmap term from the focal loss); resuming it without the flag keeps them, and
    asking for the MSE on it is refused with one line naming the flag."""
    from grmpose.checkpoint import load_model
    from grmpose.cli import main

    base = ["train", "--data", str(demo_level_data), "--preset", "tiny", "--input-size", "64", "--batch-size", "2",
            "--val-every", "0", "--workers", "0", "--quiet", "--log-every", "1"]  # fmt: skip
    out = tmp_path / "focal"
    assert main([*base, "--out", str(out), "--max-steps", "2", "--heatmap-loss", "focal"]) == 0
    model, config, _ = load_model(out / "last.safetensors")
    assert config.heatmap_activation == "sigmoid"
    with torch.no_grad():
        heat = model(torch.randn(1, 3, SIZE, SIZE))[0]
    assert heat.min() > 0 and heat.max() < 1
    steps = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    # the focal term starts near 1 per joint (MSE terms are ~1e-2)
    assert max(r["heatmap"] for r in steps if "heatmap" in r) > 0.1
    assert main([*base, "--out", str(out), "--max-steps", "3", "--resume", str(out / "last.pt")]) == 0
    assert load_model(out / "last.safetensors")[1].heatmap_activation == "sigmoid"
    capsys.readouterr()
    assert main([*base, "--out", str(out), "--max-steps", "4", "--resume", str(out / "last.pt"),
                 "--heatmap-loss", "mse"]) != 0  # fmt: skip
    err = capsys.readouterr().err
    assert "--heatmap-loss mse: " in err and "was trained with --heatmap-loss focal" in err
    mse = tmp_path / "mse"
    assert main([*base, "--out", str(mse), "--max-steps", "1"]) == 0
    assert load_model(mse / "last.safetensors")[1].heatmap_activation == "none"
