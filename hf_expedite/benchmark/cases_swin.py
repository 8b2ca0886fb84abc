"""Swin-style benchmark cases at real architecture sizes (random weights; the expedited model shares them).

* Mask2Former's Swin-L backbone (embed 192, depths [2, 2, 18, 2], heads [6, 12, 24, 48], window 12) at the paper's
  1152x1152 input with each official setting (``expedite-algorithm.md`` 5.3 reports backbone-only GFLOPs there:
  937 -> 663 / 705 / 769 / 620), and at 768x768, whose stage maps (192, 96, 48, 24) are window multiples exactly like
  1152's (288, 144, 72, 36), so its FLOPs ratio equals the 1152 one at under half the time.
* End-to-end Mask2Former (Swin-L, COCO-panoptic head: 200 queries, 133 classes) at 768x768, with the backbone
  reported on its own.
* UperNet on Swin-B (``openmmlab/upernet-swin-base``: embed 128, depths [2, 2, 18, 2], heads [4, 8, 16, 32], window
  12; 512 channels, 150 ADE20K classes) at its 512x512 ADE20K crop, default preset, the backbone reported on its own.
* Swinv2-B (embed 128, depths [2, 2, 18, 2], heads [4, 8, 16, 32], window 12) at 768x768 with the default preset.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers import (
    Mask2FormerConfig,
    Mask2FormerForUniversalSegmentation,
    SwinBackbone,
    SwinConfig,
    Swinv2Config,
    Swinv2Model,
    UperNetConfig,
    UperNetForSemanticSegmentation,
)

from ..models.mask2former import ExpeditedMask2FormerForUniversalSegmentation, expedite_mask2former_config
from ..models.swin import ExpeditedSwinBackbone, expedite_swin_config
from ..models.swinv2 import ExpeditedSwinv2Model, expedite_swinv2_config
from ..models.upernet import ExpeditedUperNetForSemanticSegmentation, expedite_upernet_config
from ..presets import get_preset
from .case import BenchmarkCase, paired
from .photos import photo_batch

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
STAGES = ["stage1", "stage2", "stage3", "stage4"]
SWIN_LARGE = dict(embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48], window_size=12, image_size=384)
SWIN_BASE = dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=12, image_size=384)
SWINV2_BASE = dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=12)
M2F_COCO_PANOPTIC_HEAD = dict(num_queries=200, num_labels=133)


class FeatureMaps(nn.Module):
    """A backbone whose output is its feature maps flattened into one tensor, so the benchmark can compare outputs."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor]:
        maps = self.backbone(pixel_values=pixel_values).feature_maps
        return (torch.cat([feature_map.flatten(1) for feature_map in maps], dim=1),)


def _photos(resolution: int) -> dict[str, torch.Tensor]:
    return {"pixel_values": photo_batch(resolution, resolution, mean=IMAGENET_MEAN, std=IMAGENET_STD)}


def swin_large_backbone_case(preset: str, resolution: int) -> BenchmarkCase:
    """Mask2Former's Swin-L backbone alone (all four feature maps), vanilla vs one official preset."""
    config = SwinConfig(**SWIN_LARGE, out_features=STAGES, drop_path_rate=0.0)
    settings = get_preset("mask2former", preset).settings
    vanilla, expedited = paired(SwinBackbone(config), ExpeditedSwinBackbone(expedite_swin_config(config, **settings)))
    return BenchmarkCase(
        f"m2f-swin-l-backbone-{resolution}-{preset}",
        FeatureMaps(vanilla),
        FeatureMaps(expedited),
        _photos(resolution),
        f"Mask2Former Swin-L backbone, {resolution}x{resolution}, {preset} (alpha "
        f"{settings['clustering_location']}, 12x12 -> 8x8 per window)",
        notes=f"published (backbone, fvcore, 1152x1152): {get_preset('mask2former', preset).published}",
    )


def mask2former_case(resolution: int, preset: str = "coco-panoptic") -> BenchmarkCase:
    """End-to-end Mask2Former with a Swin-L backbone and the COCO-panoptic head sizes; the backbone reported alone."""
    backbone = SwinConfig(**SWIN_LARGE, out_features=STAGES, drop_path_rate=0.0)
    config = Mask2FormerConfig(backbone_config=backbone, **M2F_COCO_PANOPTIC_HEAD)
    settings = get_preset("mask2former", preset).settings
    vanilla, expedited = paired(
        Mask2FormerForUniversalSegmentation(config),
        ExpeditedMask2FormerForUniversalSegmentation(expedite_mask2former_config(config, **settings)),
    )
    return BenchmarkCase(
        f"m2f-swin-l-{resolution}-{preset}",
        vanilla,
        expedited,
        _photos(resolution),
        f"Mask2Former Swin-L end to end (200 queries, 133 classes), {resolution}x{resolution}, {preset}",
        backbone=lambda model: model.model.pixel_level_module.encoder,
        notes="primary output: class logits",
    )


def upernet_case(resolution: int) -> BenchmarkCase:
    """UperNet Swin-B (ADE20K head: 512 channels, 150 classes, auxiliary head), default preset (block 10, 12 -> 8)."""
    backbone = SwinConfig(**SWIN_BASE, out_features=STAGES, drop_path_rate=0.0)
    config = UperNetConfig(backbone_config=backbone, num_labels=150, auxiliary_in_channels=512)
    vanilla, expedited = paired(
        UperNetForSemanticSegmentation(config),
        ExpeditedUperNetForSemanticSegmentation(expedite_upernet_config(config)),
    )
    return BenchmarkCase(
        f"upernet-swin-b-{resolution}",
        vanilla,
        expedited,
        _photos(resolution),
        f"UperNet Swin-B window 12 (150 classes), {resolution}x{resolution}, default preset (alpha 10, 12x12 -> 8x8 "
        "per window)",
        backbone=lambda model: model.backbone,
    )


def swinv2_case(resolution: int) -> BenchmarkCase:
    """Swinv2-B, window 12 at every stage (image_size = the input), default preset (block 10, 12 -> 8)."""
    config = Swinv2Config(**SWINV2_BASE, image_size=resolution, drop_path_rate=0.0)
    vanilla, expedited = paired(
        Swinv2Model(config, add_pooling_layer=False),
        ExpeditedSwinv2Model(expedite_swinv2_config(config), add_pooling_layer=False),
    )
    return BenchmarkCase(
        f"swinv2-b-w12-{resolution}",
        vanilla,
        expedited,
        _photos(resolution),
        f"Swinv2-B window 12, {resolution}x{resolution}, default preset (alpha 10, 12x12 -> 8x8 per window)",
    )


OFFICIAL = ("coco-panoptic", "coco-instance", "ade20k-panoptic", "ade20k-semantic")

CASES: dict[str, Callable[[], BenchmarkCase]] = {
    **{
        f"m2f-swin-l-backbone-1152-{preset}": (lambda preset=preset: swin_large_backbone_case(preset, 1152))
        for preset in OFFICIAL
    },
    "m2f-swin-l-backbone-768-coco-panoptic": lambda: swin_large_backbone_case("coco-panoptic", 768),
    "m2f-swin-l-768-coco-panoptic": lambda: mask2former_case(768),
    "swinv2-b-w12-768": lambda: swinv2_case(768),
    "upernet-swin-b-512": lambda: upernet_case(512),
}

# The paper's Mask2Former table (backbone-only at 1152x1152), measured by ``scripts/benchmark.py --suite paper``.
PAPER_CASES = tuple(f"m2f-swin-l-backbone-1152-{preset}" for preset in OFFICIAL)
