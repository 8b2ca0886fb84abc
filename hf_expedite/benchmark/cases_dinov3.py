"""DINOv3 benchmark cases at real architecture sizes (random weights; the expedited model shares them).

* DINOv3 ViT-L/16 (``facebook/dinov3-vitl16-pretrain-lvd1689m``: 24 blocks of width 1024, 16 heads, 4 registers,
  rotary positions) as a backbone at 512x512 (32x32 tokens), the four feature maps a dense head reads (after blocks
  6, 12, 18 and 24), default preset: clustering after 14 blocks to 70% of the grid per side (22x22).
"""

from __future__ import annotations

from collections.abc import Callable

from transformers import DINOv3ViTBackbone, DINOv3ViTConfig

from ..models.dinov3 import ExpeditedDINOv3ViTBackbone, expedite_dinov3_vit_config
from .case import BenchmarkCase, paired
from .cases_swin import IMAGENET_MEAN, IMAGENET_STD, FeatureMaps
from .photos import photo_batch

DINOV3_LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                    patch_size=16, num_register_tokens=4)  # fmt: skip


def dinov3_case(resolution: int) -> BenchmarkCase:
    """The DINOv3 ViT-L/16 backbone (four feature maps), vanilla vs the default preset."""
    config = DINOv3ViTConfig(**DINOV3_LARGE, image_size=resolution, out_indices=[6, 12, 18, 24])
    expedited_config = expedite_dinov3_vit_config(config)
    vanilla, expedited = paired(DINOv3ViTBackbone(config), ExpeditedDINOv3ViTBackbone(expedited_config))
    tokens = resolution // 16
    clusters = round(tokens * expedited_config.cluster_ratio)
    return BenchmarkCase(
        f"dinov3-vit-l16-{resolution}",
        FeatureMaps(vanilla),
        FeatureMaps(expedited),
        {"pixel_values": photo_batch(resolution, resolution, mean=IMAGENET_MEAN, std=IMAGENET_STD)},
        f"DINOv3 ViT-L/16 backbone (4 feature maps), {resolution}x{resolution} ({tokens}x{tokens} tokens), default "
        f"preset (alpha {expedited_config.clustering_location}, {clusters}x{clusters})",
    )


CASES: dict[str, Callable[[], BenchmarkCase]] = {"dinov3-vit-l16-512": lambda: dinov3_case(512)}
