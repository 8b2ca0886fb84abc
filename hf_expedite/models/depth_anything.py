"""Depth Anything (V1/V2) on an expedited DINOv2 backbone.

The model is the vanilla ``DepthAnythingForDepthEstimation``; only its ``backbone_config`` is expedited
(:func:`~hf_expedite.models.dpt.expedite_depth_anything_config`). Since transformers 5.25 its forward asks the backbone
for every hidden state (``filter_output_hidden_states``) and drops them afterwards unless the caller asked, so the
backbone alone cannot tell which reduced states anybody reads. This subclass tells it: only the neck's feature maps
and what the caller asked for are reconstructed. Loading through ``hf_expedite`` (Auto classes,
:func:`hf_expedite.expedite`) returns it; the vanilla class with an expedited backbone gives the same outputs, with
every state reconstructed.
"""

from __future__ import annotations

import torch
from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation
from transformers.modeling_outputs import DepthEstimatorOutput

from ..encoder import requested_hidden_states
from ..loading import StrictLoadingMixin
from ..registry import mirror_conversion_mapping
from .dinov2 import reading_hidden_states


class ExpeditedDepthAnythingForDepthEstimation(StrictLoadingMixin, DepthAnythingForDepthEstimation):
    """``DepthAnythingForDepthEstimation`` whose expedited backbone reconstructs only the hidden states it must."""

    config_class = DepthAnythingConfig

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.LongTensor | None = None, **kwargs
    ) -> DepthEstimatorOutput:
        asked = kwargs.get("output_hidden_states", self.config.output_hidden_states)
        read = requested_hidden_states(self, asked, self.backbone.config.num_hidden_layers)
        with reading_hidden_states(read):
            return super().forward(pixel_values, labels=labels, **kwargs)


mirror_conversion_mapping("ExpeditedDepthAnythingForDepthEstimation", "DepthAnythingForDepthEstimation")


EXPEDITED_HEADS: dict[type, type] = {DepthAnythingForDepthEstimation: ExpeditedDepthAnythingForDepthEstimation}
"""Vanilla heads (on an expedited backbone) -> the subclass that hf_expedite's loaders build instead."""
