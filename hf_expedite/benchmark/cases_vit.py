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


def _segmenter_ade20k(alpha: int, clusters: int) -> BenchmarkCase:
    """The paper's Segmenter ViT-L/16 ADE20K rows (640x640, 40x40 tokens); the encoder only."""
    name = f"vit-l16-640-ade20k-a{alpha}-{clusters}x{clusters}"
    settings = {"clustering_location": alpha, "num_clusters": [clusters, clusters]}
    description = f"ViT-L/16 640x640 (Segmenter ADE20K), alpha={alpha}, {clusters}x{clusters} clusters"
    return vit_case(name, VIT_LARGE, 640, settings, description)


CASES: dict[str, Callable[[], BenchmarkCase]] = {
    "vit-b16-512": lambda: vit_case(
        "vit-b16-512",
        VIT_BASE,
        512,
        {"clustering_location": 4, "num_clusters": [16, 16]},
        "ViT-B/16, 512x512 (32x32 tokens), clustering after 4 blocks to 16x16",
    ),
    "vit-l16-640-ade20k": lambda: _segmenter_ade20k(10, 28),
    "vit-l16-640-ade20k-a16-28x28": lambda: _segmenter_ade20k(16, 28),
    "vit-l16-640-ade20k-a8-20x20": lambda: _segmenter_ade20k(8, 20),
}

# The paper's settings for this family, measured by ``scripts/benchmark.py --suite paper``.
PAPER_CASES = ("vit-l16-640-ade20k-a16-28x28", "vit-l16-640-ade20k", "vit-l16-640-ade20k-a8-20x20")
