"""ImageNet-pretrained HRNet weights: official names and shapes in, the official network's features out.

``RefHRNet`` below is a minimal HRNet written for this test after the structure and module names of
HRNet-Image-Classification's ``lib/models/cls_hrnet.py`` (stem conv1/bn1/conv2/bn2, ``layer1`` of
Bottlenecks, ``transition1..3``, ``stage2..4`` of modules with ``branches`` and ``fuse_layers``, and
the ImageNet head ``incre_modules``/``downsamp_modules``/``final_layer``/``classifier``). Its
state dict therefore has the official checkpoints' keys and shapes; it is saved to a file and
loaded with ``grmpose.load_pretrained``, and our backbone must then compute what it computes.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from grmpose import build_model, load_pretrained
from grmpose.checkpoint import CheckpointError
from grmpose.cli import main as cli_main
from grmpose.config import FULL_BLOCKS, ModelConfig
from grmpose.data.synthetic import synth_main
from grmpose.model.mfa import MFABlock
from grmpose.model.net import GRMPoseNet


# ------------------------------------------------------------------ the reference (cls_hrnet names)
def ref_conv3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


class RefBasic(nn.Module):
    """cls_hrnet BasicBlock: conv1 bn1 relu conv2 bn2 (+x) relu."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = ref_conv3(c, c), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = ref_conv3(c, c), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + x)


class RefBottleneck(nn.Module):
    """cls_hrnet Bottleneck: 1x1, 3x3, 1x1 (x4) with conv{1,2,3}/bn{1,2,3} and an optional downsample."""

    def __init__(self, cin: int, planes: int) -> None:
        super().__init__()
        cout = 4 * planes
        self.conv1, self.bn1 = nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = ref_conv3(planes, planes), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout)) if cin != cout else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class RefModule(nn.Module):
    """cls_hrnet HighResolutionModule: ``branches.{b}`` of 4 BasicBlocks, ``fuse_layers.{i}.{j}``."""

    def __init__(self, widths: list[int]) -> None:
        super().__init__()
        n = len(widths)
        self.branches = nn.ModuleList(nn.Sequential(*[RefBasic(c) for _ in range(4)]) for c in widths)
        rows = []
        for i in range(n):
            row: list[nn.Module | None] = []
            for j in range(n):
                if j > i:  # conv1x1, BN, nearest upsampling
                    row.append(
                        nn.Sequential(
                            nn.Conv2d(widths[j], widths[i], 1, bias=False),
                            nn.BatchNorm2d(widths[i]),
                            nn.Upsample(scale_factor=2 ** (j - i), mode="nearest"),
                        )
                    )
                elif j == i:
                    row.append(None)
                else:  # i - j stride-2 3x3 steps; ReLU after all but the last; the last changes width
                    steps = [
                        nn.Sequential(
                            ref_conv3(widths[j], widths[j], 2), nn.BatchNorm2d(widths[j]), nn.ReLU()
                        )
                        for _ in range(i - j - 1)
                    ]
                    steps.append(nn.Sequential(ref_conv3(widths[j], widths[i], 2), nn.BatchNorm2d(widths[i])))
                    row.append(nn.Sequential(*steps))
            rows.append(nn.ModuleList(row))
        self.fuse_layers = nn.ModuleList(rows)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        out = []
        for row in self.fuse_layers:  # output i = relu(sum_j f_ij(x_j)), f_ii the identity
            out.append(torch.relu(sum(x if f is None else f(x) for f, x in zip(row, xs))))
        return out


def ref_conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(ref_conv3(cin, cout, stride), nn.BatchNorm2d(cout), nn.ReLU())


class RefHRNet(nn.Module):
    """HRNet-W{width} for ImageNet after cls_hrnet.py: stem, layer1, stages 2-4, classification head."""

    def __init__(self, width: int, modules: tuple[int, int, int] = (1, 4, 3)) -> None:
        super().__init__()
        w = [width * 2**i for i in range(4)]
        self.conv1, self.bn1 = ref_conv3(3, 64, 2), nn.BatchNorm2d(64)
        self.conv2, self.bn2 = ref_conv3(64, 64, 2), nn.BatchNorm2d(64)
        self.layer1 = nn.Sequential(RefBottleneck(64, 64), *[RefBottleneck(256, 64) for _ in range(3)])
        # transition1: both stage-2 branches from layer1's 256 channels
        self.transition1 = nn.ModuleList(
            [ref_conv_bn_relu(256, w[0], 1), nn.Sequential(ref_conv_bn_relu(256, w[1], 2))]
        )
        self.stage2 = nn.Sequential(*[RefModule(w[:2]) for _ in range(modules[0])])
        # transitions 2 and 3: existing branches pass through (None), the new one from the newest
        self.transition2 = nn.ModuleList([None, None, nn.Sequential(ref_conv_bn_relu(w[1], w[2], 2))])
        self.stage3 = nn.Sequential(*[RefModule(w[:3]) for _ in range(modules[1])])
        self.transition3 = nn.ModuleList([None, None, None, nn.Sequential(ref_conv_bn_relu(w[2], w[3], 2))])
        self.stage4 = nn.Sequential(*[RefModule(w) for _ in range(modules[2])])
        # ImageNet head: only its names and shapes matter here (no counterpart in a pose model)
        head = [32, 64, 128, 256]
        self.incre_modules = nn.ModuleList(nn.Sequential(RefBottleneck(c, h)) for c, h in zip(w, head))
        self.downsamp_modules = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(4 * head[i], 4 * head[i + 1], 3, 2, 1), nn.BatchNorm2d(4 * head[i + 1]), nn.ReLU()
            )
            for i in range(3)
        )
        self.final_layer = nn.Sequential(nn.Conv2d(1024, 2048, 1), nn.BatchNorm2d(2048), nn.ReLU())
        self.classifier = nn.Linear(2048, 1000)

    def layer1_features(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.layer1(x)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four stage-4 outputs (strides 4, 8, 16, 32)."""
        x = self.layer1_features(x)
        ys = self.stage2([t(x) for t in self.transition1])
        ys = self.stage3([*ys, self.transition2[2](ys[-1])])
        return self.stage4([*ys, self.transition3[3](ys[-1])])


def randomize_bn_(module: nn.Module, seed: int) -> nn.Module:
    """Non-trivial BN affine parameters and running statistics (so swapped BNs would show)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return module


def make_identity_(block: nn.Module) -> None:
    """A residual block whose last BN outputs 0 is relu(0 + x) = x on the non-negative inputs it gets."""
    bn = block.bn2 if isinstance(block, RefBasic) else block.fuse_out[1]
    with torch.no_grad():
        bn.weight.zero_()
        bn.bias.zero_()


@pytest.fixture(scope="module")
def ref_w32() -> RefHRNet:
    torch.manual_seed(0)
    return randomize_bn_(RefHRNet(32), seed=1).eval()


@pytest.fixture(scope="module")
def ref_w32_file(ref_w32, tmp_path_factory) -> Path:
    """The reference's state dict saved as the official checkpoint is (a plain dict of tensors)."""
    path = tmp_path_factory.mktemp("imagenet") / "hrnet_w32-36af842e.pth"
    torch.save(ref_w32.state_dict(), path)
    return path


def assert_same_features(ours: list[torch.Tensor], ref: list[torch.Tensor]) -> None:
    assert len(ours) == len(ref) == 4
    for a, b in zip(ours, ref):
        assert a.shape == b.shape
        scale = b.abs().max().item()
        assert scale > 1e-3  # the features are not trivially zero
        assert (a - b).abs().max().item() <= 1e-5 * max(1.0, scale)


# ------------------------------------------------------------------ tests
def test_dekr_w32_computes_the_official_hrnet_w32(ref_w32, ref_w32_file, caplog):
    # the reference has HRNet-W32-C's size in HRNet-Image-Classification's README: 41.2 M parameters
    assert abs(sum(p.numel() for p in ref_w32.parameters()) - 41.2e6) < 0.05e6
    path = ref_w32_file
    model = build_model("dekr-w32")
    with caplog.at_level("INFO", logger="grmpose.pretrained"):
        report = load_pretrained(model, path)
    head = ("incre_modules.", "downsamp_modules.", "final_layer.", "classifier.")
    official = list(ref_w32.state_dict())
    # every backbone tensor is loaded; exactly the ImageNet head is skipped; nothing keeps its init
    assert set(report.skipped) == {k for k in official if k.startswith(head)}
    assert set(report.loaded) == {k for k in official if not k.startswith(head)}
    assert report.kept == ()
    assert "loaded" in caplog.text and "classifier" in caplog.text
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _, _, ours = model.eval().backbone(x)
        assert_same_features(ours, ref_w32(x))


def test_light_backbone_loads_the_subset_it_has(ref_w32, ref_w32_file):
    """grmpose-w32: the official network with the blocks the light table drops (and the block MFA
    replaces) made identities must equal our light backbone with MFA made an identity. The file
    holds the unmodified tensors: the modified blocks are exactly those that must be skipped."""
    ref = copy.deepcopy(ref_w32)
    light = ((4,), (0, 4), (0, 0, 4), (0, 0, 0, 4))
    for n, stage in ((2, ref.stage2), (3, ref.stage3), (4, ref.stage4)):
        for module in stage:
            for b, branch in enumerate(module.branches):
                for k, block in enumerate(branch):
                    if k >= light[n - 1][b] or (n == 4 and b == 3 and k == 3):
                        make_identity_(block)
    path = ref_w32_file
    model = build_model("grmpose-w32")
    report = load_pretrained(model, path)

    official = ref.state_dict()
    dropped = {k for k in official if ".branches." in k and not in_newest_branch(k)}
    mfa = {k for k in official if k.startswith("stage4.") and ".branches.3.3." in k}
    head = {
        k
        for k in official
        if k.startswith(("incre_modules.", "downsamp_modules.", "final_layer.", "classifier."))
    }
    # stage 2 keeps branch 1's blocks only, stage 3 branch 2's, stage 4 branch 3's (minus MFA's)
    assert "stage2.0.branches.0.0.conv1.weight" in report.skipped
    assert "stage2.0.branches.1.0.conv1.weight" in report.loaded
    assert "stage3.3.branches.1.2.bn2.running_var" in report.skipped
    assert "stage3.3.branches.2.2.bn2.running_var" in report.loaded
    assert set(report.skipped) == dropped | mfa | head
    # the model's tensors left at their initialisation are exactly those of the MFA blocks
    mfa_keys = {
        f"backbone.{name}.{t}"
        for name, m in model.backbone.named_modules()
        if isinstance(m, MFABlock)
        for t in m.state_dict()
        if not t.endswith("num_batches_tracked")
    }
    assert set(report.kept) == mfa_keys
    for m in model.modules():
        if isinstance(m, MFABlock):
            make_identity_(m)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        _, _, ours = model.eval().backbone(x)
        assert_same_features(ours, ref(x))


def in_newest_branch(key: str) -> bool:
    """``stage{n}.{m}.branches.{b}...`` with b = n - 1: the only branch the light table gives blocks."""
    stage = int(key[len("stage")])
    return int(key.split(".branches.")[1].split(".")[0]) == stage - 1


def small_full_model(width: int) -> GRMPoseNet:
    config = ModelConfig(
        width=width, input_size=64, blocks=FULL_BLOCKS, modules=(1, 1, 1, 1), use_grm=False, use_mfa=False,
        head_channels=8, offset_channels_per_kpt=4, offset_blocks=1,
    )  # fmt: skip
    return GRMPoseNet(config, num_keypoints=3)


def test_shape_mismatch_is_refused_and_nothing_is_loaded(ref_w32, tmp_path):
    """W32 weights (stem, stage 1 and transition1 of the official file) given to an HRNet-W16."""
    path = tmp_path / "hrnet_w32_part.pth"
    prefixes = ("conv", "bn", "layer1.", "transition1.")
    torch.save({k: v for k, v in ref_w32.state_dict().items() if k.startswith(prefixes)}, path)
    model = small_full_model(width=16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_pretrained(model, path)
    msg = str(err.value)
    assert "\n" not in msg
    assert "transition1.0.0.weight" in msg and "(32, 256, 3, 3)" in msg and "(16, 256, 3, 3)" in msg
    # conv1 (64 x 3 x 3 x 3) fits and comes first in the file, yet it was not copied
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())


def test_pickled_code_is_never_run(tmp_path):
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 3, 3), "extra": Payload()}, path)
    with pytest.raises(CheckpointError, match="pickled Python objects") as err:
        load_pretrained(small_full_model(16), path)
    assert "\n" not in str(err.value)
    assert not marker.exists()


def test_safetensors_with_module_prefix(ref_w32, tmp_path):
    """A DataParallel-saved ("module.") state dict in a .safetensors file, W32 stem and stage 1 only."""
    state = {
        f"module.{k}": v.contiguous()
        for k, v in ref_w32.state_dict().items()
        if k.startswith(("conv", "bn", "layer1."))
    }
    path = tmp_path / "stem.safetensors"
    save_file(state, str(path))
    model = small_full_model(width=16)  # stem and layer1 do not depend on the width
    report = load_pretrained(model, path)
    assert set(report.loaded) == {k.removeprefix("module.") for k in state}
    assert report.skipped == ()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours = model.eval().backbone.layer1(model.backbone.stem(x))
        assert torch.allclose(ours, ref_w32.layer1_features(x), atol=1e-5)
    assert report.kept  # everything after layer1 keeps its initialisation


def test_files_without_official_names_or_tensors(tmp_path):
    model = small_full_model(16)
    ours = tmp_path / "ours.safetensors"
    save_file({"backbone.stem.0.0.weight": torch.zeros(64, 3, 3, 3)}, str(ours))
    with pytest.raises(CheckpointError, match="no tensor with the official HRNet"):
        load_pretrained(model, ours)
    with pytest.raises(CheckpointError, match="not found"):
        load_pretrained(model, tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_pretrained(model, garbage)


# ------------------------------------------------------------------ grmpose train --pretrained
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    synth_main(str(out), "coco", images=2, seed=1, val_images=1, image_size=64, max_people=2)
    return out


def train_args(data: Path, out: Path, pretrained: Path) -> list[str]:
    return [
        "train", "--preset", "tiny", "--data", str(data), "--out", str(out), "--pretrained", str(pretrained),
        "--max-steps", "1", "--batch-size", "1", "--input-size", "64", "--workers", "0", "--val-every", "0",
        "--lr", "1e-12", "--quiet",
    ]  # fmt: skip


def test_train_cli_starts_from_the_pretrained_backbone(tiny_data, tmp_path):
    """tiny's stem conv is 32 x 3 x 3 x 3: an official-named tensor of that shape full of 0.5 must be
    in the trained weights (one step at lr 1e-12 moves it by about 1e-12), not DEKR's N(0, 0.001)."""
    path = tmp_path / "stem.pth"
    torch.save({"conv1.weight": torch.full((32, 3, 3, 3), 0.5), "classifier.weight": torch.zeros(2, 2)}, path)
    assert cli_main(train_args(tiny_data, tmp_path / "run", path)) == 0
    weights = load_file(str(tmp_path / "run" / "last.safetensors"))
    assert torch.allclose(weights["backbone.stem.0.0.weight"], torch.full((32, 3, 3, 3), 0.5), atol=1e-6)
    assert weights["backbone.stem.1.0.weight"].abs().max() < 0.01  # not in the file: DEKR's init


def test_train_cli_refuses_weights_of_another_width_in_one_line(ref_w32, tiny_data, tmp_path, capsys):
    path = tmp_path / "hrnet_w32_stem.pth"
    torch.save({k: v for k, v in ref_w32.state_dict().items() if k.startswith(("conv1.", "bn1."))}, path)
    assert cli_main(train_args(tiny_data, tmp_path / "run", path)) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "conv1.weight" in err and "(64, 3, 3, 3)" in err and "(32, 3, 3, 3)" in err
