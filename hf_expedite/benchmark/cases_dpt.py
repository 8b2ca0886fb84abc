"""DPT and Depth Anything benchmark cases at real architecture sizes (random weights; the expedited model shares them).

* DPT-Large (``Intel/dpt-large``: ViT-L/16, 384x384, neck reading blocks 5/11/17/23) with the ``default`` preset.
* DPT-Hybrid (``Intel/dpt-hybrid-midas``: BiT R50 stages + ViT-B/16, neck reading BiT stages 1-2 and blocks 8/11) at
  the NYUv2 input 480x640 with the paper's NYUv2 row alpha=6, 24x24 hard (560.2 -> 504.2 GFLOPs). transformers'
  ``DPTForDepthEstimation`` only runs the hybrid at its 384x384 ``image_size`` (embedding size check, square neck), so
  the baseline is the expedited class with ``expedite=False``: the unmodified transformers modules, bit-identical to
  the vanilla model wherever that runs.
* Depth Anything V2 Small (``depth-anything/Depth-Anything-V2-Small-hf``: DINOv2-S/14, neck reading blocks 3/6/9/12,
  fusion 64) at 518x518 with the ``default`` preset.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, DPTConfig, DPTForDepthEstimation

from ..models.depth_anything import ExpeditedDepthAnythingForDepthEstimation, expedite_depth_anything_config
from ..models.dpt import ExpeditedDPTForDepthEstimation, expedite_dpt_config
from ..presets import get_preset
from .case import BenchmarkCase
from .photos import photo_batch


def dpt_large_config() -> DPTConfig:
    """``Intel/dpt-large``: ViT-L/16 at 384x384."""
    return DPTConfig(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        backbone_out_indices=[5, 11, 17, 23],
        neck_hidden_sizes=[256, 512, 1024, 1024],
    )


def dpt_hybrid_config() -> DPTConfig:
    """``Intel/dpt-hybrid-midas``: BiT (bottleneck, depths 3/4/9) + ViT-B/16."""
    return DPTConfig(
        is_hybrid=True,
        reassemble_factors=[1, 1, 1, 0.5],
        neck_hidden_sizes=[256, 512, 768, 768],
        backbone_featmap_shape=[1, 1024, 24, 24],
        use_batch_norm_in_fusion_residual=False,
    )


def depth_anything_v2_small_config() -> DepthAnythingConfig:
    """``depth-anything/Depth-Anything-V2-Small-hf``: DINOv2-S/14 at 518x518."""
    backbone = {
        "model_type": "dinov2",
        "hidden_size": 384,
        "num_attention_heads": 6,
        "image_size": 518,
        "out_indices": [3, 6, 9, 12],
        "reshape_hidden_states": False,
    }
    return DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=384,
        patch_size=14,
        neck_hidden_sizes=[48, 96, 192, 384],
        fusion_hidden_size=64,
    )


def _twin(vanilla: torch.nn.Module, cls: type, config) -> torch.nn.Module:
    """``cls(config)`` holding ``vanilla``'s very weight tensors (built on the meta device, nothing copied)."""
    with torch.device("meta"):
        expedited = cls(config)
    expedited.load_state_dict(vanilla.state_dict(), assign=True)
    return expedited.eval()


def dpt_large_384() -> BenchmarkCase:
    config = dpt_large_config()
    vanilla = DPTForDepthEstimation(config).eval()
    expedited = _twin(vanilla, ExpeditedDPTForDepthEstimation, expedite_dpt_config(config))
    settings = f"clustering after {expedited.config.clustering_location} blocks, 70% of the tokens per side"
    return BenchmarkCase(
        "dpt-large-384",
        vanilla,
        expedited,
        {"pixel_values": photo_batch(384, 384)},
        f"DPT-Large (ViT-L/16) depth, 384x384 (24x24 tokens -> 17x17), default preset: {settings}",
        backbone=lambda model: model.dpt,
    )


def dpt_hybrid_nyu_480x640() -> BenchmarkCase:
    config = dpt_hybrid_config()
    vanilla = ExpeditedDPTForDepthEstimation(expedite_dpt_config(config, expedite=False)).eval()
    nyu = get_preset("dpt", "nyu-alpha6-24x24").resolve(config)
    expedited = _twin(vanilla, ExpeditedDPTForDepthEstimation, expedite_dpt_config(config, **nyu))
    return BenchmarkCase(
        "dpt-hybrid-nyu-480x640",
        vanilla,
        expedited,
        {"pixel_values": photo_batch(480, 640)},
        "DPT-Hybrid (BiT R50 + ViT-B/16) depth, NYUv2 480x640 (30x40 tokens -> 24x24 after 7 blocks, hard)",
        backbone=lambda model: model.dpt,
        notes="paper: 560.2 -> 504.2 GFLOPs; baseline = expedite=False (transformers' hybrid only runs 384x384)",
    )


def depth_anything_v2_small_518() -> BenchmarkCase:
    config = depth_anything_v2_small_config()
    vanilla = DepthAnythingForDepthEstimation(config).eval()
    expedited = _twin(vanilla, ExpeditedDepthAnythingForDepthEstimation, expedite_depth_anything_config(config))
    location = expedited.config.backbone_config.clustering_location
    return BenchmarkCase(
        "depth-anything-v2-small-518",
        vanilla,
        expedited,
        {"pixel_values": photo_batch(518, 518, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))},
        f"Depth Anything V2 Small (DINOv2-S/14), 518x518 (37x37 tokens -> 26x26 after {location} blocks), default",
        backbone=lambda model: model.backbone,
    )


CASES: dict[str, Callable[[], BenchmarkCase]] = {
    "dpt-large-384": dpt_large_384,
    "dpt-hybrid-nyu-480x640": dpt_hybrid_nyu_480x640,
    "depth-anything-v2-small-518": depth_anything_v2_small_518,
}

# The paper's settings for this family, measured by ``scripts/benchmark.py --suite paper``.
PAPER_CASES = ("dpt-hybrid-nyu-480x640",)
