"""SAM benchmark cases at real architecture sizes (random weights; the expedited model shares them).

* SAM ViT-H's image encoder (``facebook/sam-vit-huge``: 32 blocks of width 1280, 16 heads, window 14, global
  attention in blocks 7, 15, 23 and 31) at its 1024 x 1024 input (64 x 64 tokens), neck included: the part of SAM
  Expedite changes (the prompt encoder and mask decoder run on its output, unchanged). Default preset: the official
  scripts' setting, clustering before block 6, every 14 x 14 window of the padded 70 x 70 map to 10 x 10.
"""

from __future__ import annotations

from collections.abc import Callable

from transformers import SamVisionConfig, SamVisionModel

from ..models.sam import ExpeditedSamVisionModel, expedite_sam_vision_config
from ..presets import get_preset
from .case import BenchmarkCase, paired
from .photos import photo_batch

SAM_MEAN, SAM_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SAM_VIT_H = dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, global_attn_indexes=[7, 15, 23, 31])


def sam_case(preset: str = "default") -> BenchmarkCase:
    """SAM ViT-H image encoder at 1024 x 1024, vanilla vs ``preset``."""
    config = SamVisionConfig(**SAM_VIT_H)
    expedited_config = expedite_sam_vision_config(config, **get_preset("sam", preset).resolve(config))
    vanilla, expedited = paired(SamVisionModel(config), ExpeditedSamVisionModel(expedited_config))
    k = expedited_config.clustered_window_size
    return BenchmarkCase(
        f"sam-vit-h-1024{'' if preset == 'default' else '-' + preset}",
        vanilla,
        expedited,
        {"pixel_values": photo_batch(1024, 1024, mean=SAM_MEAN, std=SAM_STD)},
        f"SAM ViT-H image encoder, 1024x1024 (64x64 tokens), {preset} preset (alpha "
        f"{expedited_config.clustering_location}, 14x14 -> {k}x{k} per window)",
        notes=get_preset("sam", preset).published or "",
    )


CASES: dict[str, Callable[[], BenchmarkCase]] = {
    "sam-vit-h-1024": sam_case,
    "sam-vit-h-1024-vit-h-6-81": lambda: sam_case("vit-h-6-81"),
}
