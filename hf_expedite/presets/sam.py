"""Presets for the SAM image encoder, from the official Expedit-SAM code (``expedite-algorithm.md`` 3.4, 4.5, 5.4).

SAM clusters **before** block ``hourglass_clustering_location`` (the number of blocks run before clustering, used as
is) every 14 x 14 attention window of the zero-padded 70 x 70 token map to k x k tokens (``hourglass_num_cluster``
= k * k), and reconstructs after the last block, before the neck. The official temperature is an inverse one shared
by clustering and reconstruction: the scripts' 0.005 is 200 here (the module default 0.01 is 100); iterations 5,
locality window 5, top-20 reconstruction with L2 weights (``F.normalize``; the neck's LayerNorm removes the scale).
The official rows are ViT-H (32 blocks); published speeds are automatic mask generation on a V100 (16 GB), points
per side 12, points per batch 144, baseline 1.27 img/s.
"""

from __future__ import annotations

from typing import Any

from . import Preset

_SPEEDS = {(18, 11): "1.40 (1.10x)", (14, 10): "1.52 (1.19x)", (8, 10): "1.64 (1.30x)", (8, 9): "1.82 (1.44x)",
           (6, 9): "1.89 (1.49x)"}  # fmt: skip


def _official(location: int, clustered: int, temperature: float = 200.0) -> dict[str, Any]:
    return {
        "clustering_location": location,
        "clustered_window_size": clustered,
        "clustering_iterations": 5,
        "clustering_temperature": temperature,
        "clustering_window_size": 5,
        "reconstruction_k": 20,
        "reconstruction_temperature": temperature,
        "reconstruction_normalization": "l2",
        "reconstruction_mode": "knn",
    }


def _vision(config: Any) -> Any:
    """The vision encoder config of a SAM config (or the vision config itself)."""
    return getattr(config, "vision_config", None) or config


def _default(config: Any) -> dict[str, Any]:
    """The scripts' default (block 6 of ViT-H's 32, 14 -> 10 per window, temperature 200) scaled to any depth and
    window, with L1 weights; a clustering location or window already set is kept."""
    vision = _vision(config)
    location = getattr(vision, "clustering_location", None)
    if location is None:
        location = max(1, round(vision.num_hidden_layers * 6 / 32))
    clustered = getattr(vision, "clustered_window_size", None) or max(1, round(vision.window_size * 10 / 14))
    return {
        **_official(location, clustered),
        "reconstruction_k": min(20, clustered * clustered),
        "reconstruction_normalization": "l1",
    }


PRESETS = {
    "default": Preset(
        _default,
        "The official scripts' setting scaled to the depth (clustering after 6/32 of the blocks, window 14 -> 10, "
        "temperature 200, top-20), L1 weights.",
    ),
    **{
        f"vit-h-{location}-{clustered * clustered}": Preset(
            _official(location, clustered),
            f"SAM ViT-H: cluster before block {location}, 14x14 -> {clustered}x{clustered} per window "
            f"({clustered * clustered} clusters).",
            source=f"Expedit-SAM README speed table (hourglass_clustering_location {location}, "
            f"hourglass_num_cluster {clustered * clustered}), scripts' temperature 0.005",
            published=f"automatic mask generation, V100: 1.27 -> {speed} img/s",
        )
        for (location, clustered), speed in _SPEEDS.items()
    },
}
