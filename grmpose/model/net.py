"""The whole grmpose network: backbone -> (GRM) -> heads.

``GRMPoseNet(images)`` takes B x 3 x H x W normalised RGB images (H, W multiples of 32) and returns
three tensors at stride 4, the same in training and inference:

    heatmaps  B x (K+1) x H/4 x W/4   (raw, or a sigmoid's for heatmap_activation="sigmoid"; channel K is the person centre)
    offsets   B x 2K x H/4 x W/4      (channel 2k: x, 2k+1: y; pixel - keypoint, in map pixels)
    tags      B x K x H/4 x W/4       (one associative-embedding value per keypoint)
"""

from __future__ import annotations

import torch
from torch import nn

from grmpose.config import ModelConfig, get_preset
from grmpose.model.backbone import HRBackbone
from grmpose.model.grm import GRM
from grmpose.model.heads import HeatmapTagHead, OffsetHead
from grmpose.model.init_weights import init_weights
from grmpose.model.upsample import upsample
from grmpose.runtime import capturing_graph
from grmpose.spec import KeypointSpec, get_spec


class GRMPoseNet(nn.Module):
    def __init__(self, config: ModelConfig, num_keypoints: int) -> None:
        super().__init__()
        self.config = config
        self.num_keypoints = num_keypoints
        c = config.width
        self.backbone = HRBackbone(c, config.blocks, config.modules, config.stem_channels, config.use_mfa)
        p3_channels = sum(self.backbone.widths)  # 15C
        self.grm = GRM(c, p3_channels) if config.use_grm else None
        head_in = self.grm.out_channels if self.grm is not None else p3_channels
        self.heatmap_head = HeatmapTagHead(
            head_in, config.head_channels, num_keypoints, config.heatmap_activation
        )
        self.offset_head = OffsetHead(
            head_in, config.offset_channels_per_kpt, config.offset_blocks, num_keypoints, config.offset_unit
        )
        # DEKR's initialisation (convs N(0, 0.001), BN 1/0, then each module's special_init());
        # grmpose.load_pretrained overwrites the backbone with ImageNet weights afterwards.
        init_weights(self)

    def prediction_layers(self) -> set[nn.Module]:
        """The last convolutions of the heads (heatmaps, tags, offsets)."""
        return {self.heatmap_head.heatmap, self.heatmap_head.tag, self.offset_head.offset}

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The heads' input: the backbone's stride-4 maps (p3: every branch upsampled and joined), through
        the GRM with p1 and p2 when the model has it."""
        p1, p2, stage4 = self.backbone(images)
        ups = [stage4[0]] + [upsample(y, 2**i, "bilinear") for i, y in enumerate(stage4[1:], start=1)]
        p3 = torch.cat(ups, dim=1)
        return self.grm(p1, p2, p3) if self.grm is not None else p3

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # concrete shapes only: a trace or a graph capture sees symbolic ones
        if not (torch.jit.is_tracing() or capturing_graph()):
            if images.dim() != 4 or images.shape[1] != 3 or images.shape[2] % 32 or images.shape[3] % 32:
                raise ValueError(
                    f"images must be B x 3 x H x W with H and W multiples of 32, got {tuple(images.shape)}"
                )
        feats = self.features(images)
        heatmaps, tags = self.heatmap_head(feats)
        offsets = self.offset_head(feats)
        return heatmaps, offsets, tags


def build_model(preset: str | ModelConfig = "grmpose-w32", spec: str | KeypointSpec = "coco") -> GRMPoseNet:
    """Build the network for a preset name (or a ``ModelConfig``) and a keypoint spec."""
    config = get_preset(preset) if isinstance(preset, str) else preset
    return GRMPoseNet(config, get_spec(spec).num_keypoints)
