"""Presets for DINOv2 backbones (with or without register tokens), e.g. inside Depth Anything or a DPT head.

They resolve against a DINOv2 config or a config holding one as ``backbone_config`` (Depth Anything).

No official Expedite setting exists for DINOv2; ``default`` is the DPT default (the official DPT clustering after 7/12
of the blocks, 70% of the tokens per side, see ``presets/dpt.py``), which adapts the cluster grid to every input size.
"""

from __future__ import annotations

from . import Preset
from .dpt import adaptive_default, encoder_depth

PRESETS = {
    "default": Preset(
        lambda config: adaptive_default(encoder_depth(config)),
        "The DPT default: official DPT clustering (tau 1) after 7/12 of the blocks, k-NN reconstruction (k 20, tau 1, "
        "L1), 70% of the tokens per side.",
    ),
}
