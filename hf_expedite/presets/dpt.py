"""Presets for DPT (DPT-Large, DPT-Hybrid, DPT with a DINOv2 backbone), from the official Expedit-DPT settings.

The official code (``expedite-algorithm.md`` 3.2, 4.2, 5.2) runs the hybrid R50 + ViT-B/16 (12 blocks) with ``-l p``,
which clusters *after* block index ``p``: ``p + 1`` blocks run at full resolution, so ``clustering_location = p + 1``
(the README's alpha is ``p``). Its temperature ``tau = 1.0`` is an inverse temperature, i.e. a divisor of 1.0 here. It
reconstructs every hooked block output by copying the centre of each token's hard label (``reconstruction_mode="hard"``;
``k`` is unused) and clusters once, staying reduced to the end of the encoder (``reconstruction_location=None``).

The named settings fix the cluster grid for the official inputs (NYUv2 480x640 -> 30x40 tokens, KITTI 352x1216 ->
22x76 tokens); smaller inputs fail with a clear error. ``default`` adapts the grid to any input instead.
The README's KITTI row alpha=6 with 28x28 clusters is not expressible: 28 cluster rows exceed the 22 token rows, and
clustering here only reduces.
"""

from __future__ import annotations

from typing import Any

from . import Preset

OFFICIAL_DPT = {
    "clustering_iterations": 5,
    "clustering_temperature": 1.0,
    "clustering_window_size": 5,
    "reconstruction_temperature": 1.0,
    "reconstruction_normalization": "l1",
    "reconstruction_mode": "hard",
}


def encoder_depth(config: Any) -> int:
    """Number of transformer blocks clustering is counted in: the config's own, or its DINOv2 ``backbone_config``'s
    (DPT-DINOv2, Depth Anything; the hybrid's BiT backbone config does not count)."""
    backbone = getattr(config, "backbone_config", None)
    if backbone is not None and not getattr(config, "is_hybrid", False):
        return backbone.num_hidden_layers
    return config.num_hidden_layers


def adaptive_default(depth: int) -> dict[str, Any]:
    """The official NYUv2 schedule scaled to ``depth`` blocks (7 of 12 at full resolution), 70% of tokens per side.

    Reconstruction is the paper's k-NN average with the official temperature: the settings that have a config default
    keep it, so a config filled from this preset and one built with it as overrides agree.
    """
    return {
        **OFFICIAL_DPT,
        "reconstruction_mode": "knn",
        "clustering_location": max(1, round(depth * 7 / 12)),
        "cluster_ratio": 0.7,
    }


def _hybrid(location: int, clusters: int) -> dict[str, Any]:
    return {**OFFICIAL_DPT, "clustering_location": location, "num_clusters": [clusters, clusters]}


PRESETS = {
    "default": Preset(
        lambda config: adaptive_default(encoder_depth(config)),
        "Official DPT clustering (tau 1) after 7/12 of the blocks, k-NN reconstruction (k 20, tau 1, L1); the cluster "
        "grid keeps 70% of the token grid per side, so any input size works.",
    ),
    "nyu": Preset(
        _hybrid(7, 28),
        "DPT-Hybrid, NYUv2 480x640 (30x40 tokens -> 28x28 clusters after 7 blocks).",
        source="Expedit-DPT EVALUATION.md, NYUv2 (-l 6, 28x28)",
        published="none for this grid (the README's alpha=6 row uses 24x24: nyu-alpha6-24x24)",
    ),
    "kitti": Preset(
        _hybrid(5, 16),
        "DPT-Hybrid, KITTI 352x1216 kb-crop (22x76 tokens -> 16x16 clusters after 5 blocks).",
        source="Expedit-DPT EVALUATION.md, KITTI (-l 4, 16x16); same as the README row alpha=4, 16x16",
        published="810.0 -> 613.6 GFLOPs, 12.55 -> 17.14 FPS, RMSE 2.573 -> 2.660",
    ),
    "nyu-alpha6-24x24": Preset(
        _hybrid(7, 24),
        "DPT-Hybrid, NYUv2 480x640 (30x40 tokens -> 24x24 clusters after 7 blocks).",
        source="Expedit-DPT README, NYUv2 row alpha=6, 24x24",
        published="560.2 -> 504.2 GFLOPs, 18.66 -> 19.19 FPS, RMSE 0.357 -> 0.360",
    ),
    "nyu-alpha4-16x16": Preset(
        _hybrid(5, 16),
        "DPT-Hybrid, NYUv2 480x640 (30x40 tokens -> 16x16 clusters after 5 blocks).",
        source="Expedit-DPT README, NYUv2 row alpha=4, 16x16",
        published="560.2 -> 439.2 GFLOPs, 18.66 -> 22.08 FPS, RMSE 0.357 -> 0.362",
    ),
    "nyu-alpha2-14x14": Preset(
        _hybrid(3, 14),
        "DPT-Hybrid, NYUv2 480x640 (30x40 tokens -> 14x14 clusters after 3 blocks).",
        source="Expedit-DPT README, NYUv2 row alpha=2, 14x14",
        published="560.2 -> 395.0 GFLOPs, 18.66 -> 26.02 FPS, RMSE 0.357 -> 0.364",
    ),
    "kitti-alpha4-20x20": Preset(
        _hybrid(5, 20),
        "DPT-Hybrid, KITTI 352x1216 (22x76 tokens -> 20x20 clusters after 5 blocks).",
        source="Expedit-DPT README, KITTI row alpha=4, 20x20",
        published="810.0 -> 631.8 GFLOPs, 12.55 -> 16.41 FPS, RMSE 2.573 -> 2.625",
    ),
}
