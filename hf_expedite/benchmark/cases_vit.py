"""ViT benchmark cases at real architecture sizes (random weights; the expedited model shares them)."""

from __future__ import annotations

from collections.abc import Callable

from transformers import ViTConfig, ViTModel

from ..models.vit import ExpeditedViTModel, expedite_vit_config
from .case import BenchmarkCase
from .photos import photo_batch

VIT_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, patch_size=16)
VIT_LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, patch_size=16)


def vit_case(name: str, sizes: dict, resolution: int, settings: dict, description: str, batch_size: int = 1):
    """A vanilla ``ViTModel`` at ``resolution`` and its expedited twin (same weight tensors) on photographs."""
    config = ViTConfig(**sizes, image_size=resolution)
    vanilla = ViTModel(config, add_pooling_layer=False).eval()
    expedited = ExpeditedViTModel(expedite_vit_config(config, **settings), add_pooling_layer=False).eval()
    expedited.load_state_dict(vanilla.state_dict(), assign=True)
    inputs = {"pixel_values": photo_batch(resolution, resolution, batch_size)}
    return BenchmarkCase(name, vanilla, expedited, inputs, description)


CASES: dict[str, Callable[[], BenchmarkCase]] = {
    "vit-b16-512": lambda: vit_case(
        "vit-b16-512",
        VIT_BASE,
        512,
        {"clustering_location": 4, "num_clusters": [16, 16]},
        "ViT-B/16, 512x512 (32x32 tokens), clustering after 4 blocks to 16x16",
    ),
    "vit-l16-640-ade20k": lambda: vit_case(
        "vit-l16-640-ade20k",
        VIT_LARGE,
        640,
        {"clustering_location": 10, "num_clusters": [28, 28]},
        "ViT-L/16, 640x640 (40x40 tokens), the paper's ADE20K setting: alpha=10, 28x28",
    ),
}
