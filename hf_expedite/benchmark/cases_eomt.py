"""EoMT benchmark cases at real architecture sizes (random weights; the expedited model shares them).

* EoMT-L at 640x640 (``tue-mps/coco_panoptic_eomt_large_640``: DINOv2-L/16 with 4 registers, 24 blocks, the last 4
  with 200 queries, 133 COCO panoptic classes), 40x40 tokens, default preset: clustering after 10 blocks to 28x28
  (Segmenter ViT-L/16's ADE20K setting at the same input), reconstruction before the query blocks (block 20).
"""

from __future__ import annotations

from collections.abc import Callable

from transformers import EomtConfig, EomtForUniversalSegmentation

from ..models.eomt import ExpeditedEomtForUniversalSegmentation, expedite_eomt_config
from .case import BenchmarkCase, paired
from .photos import photo_batch

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
EOMT_LARGE = dict(
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    patch_size=16,
    num_register_tokens=4,
    num_blocks=4,
    num_queries=200,
    num_labels=133,
    layerscale_value=1e-5,
)


def eomt_case(resolution: int) -> BenchmarkCase:
    """EoMT-L end to end (query blocks and mask predictions included), vanilla vs the default preset."""
    config = EomtConfig(**EOMT_LARGE, image_size=resolution)
    expedited_config = expedite_eomt_config(config)
    vanilla, expedited = paired(
        EomtForUniversalSegmentation(config), ExpeditedEomtForUniversalSegmentation(expedited_config)
    )
    tokens = resolution // 16
    clusters = round(tokens * expedited_config.cluster_ratio)
    return BenchmarkCase(
        f"eomt-l-{resolution}",
        vanilla,
        expedited,
        {"pixel_values": photo_batch(resolution, resolution, mean=IMAGENET_MEAN, std=IMAGENET_STD)},
        f"EoMT-L (200 queries, 133 classes), {resolution}x{resolution} ({tokens}x{tokens} tokens), default preset "
        f"(alpha {expedited_config.clustering_location}, {clusters}x{clusters}, reconstruction before the query "
        "blocks)",
        notes="primary output: class logits",
    )


CASES: dict[str, Callable[[], BenchmarkCase]] = {"eomt-l-640": lambda: eomt_case(640)}
