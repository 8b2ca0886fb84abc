"""ViT benchmark cases at real architecture sizes (random weights; the expedited model shares them)."""

from __future__ import annotations

from collections.abc import Callable

from transformers import ViTConfig, ViTModel

from ..models.vit import ExpeditedViTModel, expedite_vit_config
from .case import BenchmarkCase, paired
from .photos import photo_batch

VIT_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, patch_size=16)
VIT_LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, patch_size=16)


def vit_case(
    name: str, sizes: dict, resolution: int | tuple[int, int], settings: dict, description: str, batch_size: int = 1
):
    """A vanilla ``ViTModel`` at ``resolution`` (square, or (height, width)) and its expedited twin (same weight
    tensors) on photographs."""
    height, width = (resolution, resolution) if isinstance(resolution, int) else resolution
    config = ViTConfig(**sizes, image_size=resolution if isinstance(resolution, int) else [height, width])
    vanilla, expedited = paired(
        ViTModel(config, add_pooling_layer=False),
        ExpeditedViTModel(expedite_vit_config(config, **settings), add_pooling_layer=False),
    )
    inputs = {"pixel_values": photo_batch(height, width, batch_size)}
    return BenchmarkCase(name, vanilla, expedited, inputs, description)


def _segmenter_ade20k(alpha: int, clusters: int) -> BenchmarkCase:
    """The paper's Segmenter ViT-L/16 ADE20K rows (640x640, 40x40 tokens); the encoder only."""
    name = f"vit-l16-640-ade20k-a{alpha}-{clusters}x{clusters}"
    settings = {"clustering_location": alpha, "num_clusters": [clusters, clusters]}
    description = f"ViT-L/16 640x640 (Segmenter ADE20K), alpha={alpha}, {clusters}x{clusters} clusters"
    return vit_case(name, VIT_LARGE, 640, settings, description)


def _half_grid(family: str, sizes: dict, alpha: int, height: int, width: int) -> BenchmarkCase:
    """High-resolution scaling: the cluster grid half the token grid per side (M = N / 4), clustering after
    ``alpha`` blocks."""
    tokens = (height // 16, width // 16)
    clusters = [tokens[0] // 2, tokens[1] // 2]
    size = f"{height}" if height == width else f"{height}x{width}"
    description = (
        f"{family}, {height}x{width} ({tokens[0]}x{tokens[1]} tokens), clustering after {alpha} blocks to "
        f"{clusters[0]}x{clusters[1]}"
    )
    settings = {"clustering_location": alpha, "num_clusters": clusters}
    return vit_case(f"{family.lower().replace('/', '')}-{size}", sizes, (height, width), settings, description)


CASES: dict[str, Callable[[], BenchmarkCase]] = {
    "vit-b16-512": lambda: vit_case(
        "vit-b16-512",
        VIT_BASE,
        512,
        {"clustering_location": 4, "num_clusters": [16, 16]},
        "ViT-B/16, 512x512 (32x32 tokens), clustering after 4 blocks to 16x16",
    ),
    "vit-l16-640-ade20k": lambda: _segmenter_ade20k(10, 28),
    "vit-b16-768": lambda: _half_grid("ViT-B/16", VIT_BASE, 4, 768, 768),
    "vit-b16-1024": lambda: _half_grid("ViT-B/16", VIT_BASE, 4, 1024, 1024),
    "vit-b16-1024x2048": lambda: _half_grid("ViT-B/16", VIT_BASE, 4, 1024, 2048),
    "vit-l16-1024": lambda: _half_grid("ViT-L/16", VIT_LARGE, 10, 1024, 1024),
    "vit-l16-1024x2048": lambda: _half_grid("ViT-L/16", VIT_LARGE, 10, 1024, 2048),
    "vit-l16-640-ade20k-a16-28x28": lambda: _segmenter_ade20k(16, 28),
    "vit-l16-640-ade20k-a8-20x20": lambda: _segmenter_ade20k(8, 20),
}

# Speed-up against resolution (``scripts/benchmark.py --suite scaling``): ViT-B/16, the cluster grid half the tokens'.
SCALING_CASES = ("vit-b16-512", "vit-b16-768", "vit-b16-1024", "vit-b16-1024x2048")

# The paper's settings for this family, measured by ``scripts/benchmark.py --suite paper``.
PAPER_CASES = ("vit-l16-640-ade20k-a16-28x28", "vit-l16-640-ade20k", "vit-l16-640-ade20k-a8-20x20")
