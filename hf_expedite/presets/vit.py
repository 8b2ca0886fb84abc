"""Presets for plain ViT encoders (Segmenter-style, ViT-L/16), from the official Expedit-Segmenter configs (4.1, 5.1).

Official ``location = p`` clusters after block index p, so ``clustering_location = p + 1``; official (inverse)
temperature 0.02 is 50 here. The official code normalises reconstruction weights with L2 (``"l2"``).
The official top-k, 20, is the default ``reconstruction_k`` (capped at the grid), so the presets leave it unset.
"""

from __future__ import annotations

from typing import Any

from . import Preset

_SEGMENTER = {
    "clustering_iterations": 5,
    "clustering_temperature": 50.0,
    "clustering_window_size": 5,
    "reconstruction_temperature": 50.0,
    "reconstruction_normalization": "l2",
    "reconstruction_mode": "knn",
}


def _default(config: Any) -> dict[str, Any]:
    """The ADE20K setting scaled to any depth and input: cluster after 5/12 of the blocks, keep 70% per side."""
    return {
        **_SEGMENTER,
        "reconstruction_normalization": "l1",
        "clustering_location": max(1, round(config.num_hidden_layers * 5 / 12)),
        "cluster_ratio": 0.7,
    }


def _eomt_default(config: Any) -> dict[str, Any]:
    """The ViT default placed among EoMT's plain blocks: cluster after 5/12 of all the blocks (10 of EoMT-L's 24, as
    Segmenter ViT-L/16 on ADE20K), at most one block before the query blocks, where reconstruction happens."""
    plain = config.num_hidden_layers - config.num_blocks
    return {**_default(config), "clustering_location": max(0, min(plain - 1, _default(config)["clustering_location"]))}


EOMT_PRESETS = {
    "default": Preset(
        _eomt_default,
        "The ViT default among the plain blocks (5/12 of the depth, 70% of the tokens per side, L1 weights); "
        "reconstruction before the query blocks.",
    ),
}

PRESETS = {
    "default": Preset(_default, "ADE20K setting scaled to the depth; 70% of the tokens per side; L1 weights."),
    "segmenter-ade20k": Preset(
        {**_SEGMENTER, "clustering_location": 10, "num_clusters": [28, 28]},
        "ViT-L/16 Segmenter, ADE20K 640x640 (40x40 tokens -> 28x28).",
        source="Expedit-Segmenter segmenter-hourglass-vit-l16 ADE20K config (location 9)",
        published="658.98 -> 443.84 GFLOPs, 6.55 -> 9.51 FPS, mIoU 51.82 -> 51.56",
    ),
    "segmenter-cityscapes": Preset(
        {**_SEGMENTER, "clustering_location": 12, "num_clusters": [32, 32]},
        "ViT-L/16 Segmenter, Cityscapes 768x768 (48x48 tokens -> 32x32).",
        source="Expedit-Segmenter segmenter-hourglass-vit-l16 Cityscapes config (location 11)",
        published="995.6 -> 691.0 GFLOPs, 4.20 -> 5.89 FPS, mIoU 79.14 -> 78.38",
    ),
    "segmenter-pascal-context": Preset(
        {**_SEGMENTER, "clustering_location": 14, "num_clusters": [20, 20]},
        "ViT-L/16 Segmenter, Pascal Context 480x480 (30x30 tokens -> 20x20).",
        source="Expedit-Segmenter segmenter-hourglass-vit-l16 Pascal Context config (location 13)",
        published="338.7 -> 251.2 GFLOPs, 14.7 -> 18.2 FPS, mIoU 58.07 -> 58.27",
    ),
}
