# Copyright 2026 The hf_expedite authors. Licensed under the Apache License, Version 2.0 (see pyproject.toml).
"""Expedited Depth Anything (V1/V2): the vanilla head on an expedited DINOv2 backbone.

:class:`ExpeditedDepthAnythingConfig` is a ``DepthAnythingConfig`` (``model_type`` ``expedited_depth_anything``) whose
``backbone_config`` is an expedited DINOv2 config holding the settings; ``load_backbone`` builds the expedited backbone
and the weight names do not change. Since transformers 5.25 the head's forward asks the backbone for every hidden
state (``filter_output_hidden_states``) and drops them afterwards unless the caller asked, so the backbone alone cannot
tell which reduced states anybody reads: :class:`ExpeditedDepthAnythingForDepthEstimation` tells it (the private
``READ_HIDDEN_STATES_KWARG``, as the expedited DPT heads do), and only the neck's feature maps and what the caller asked
for are reconstructed.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from huggingface_hub.dataclasses import strict
from transformers import AutoModelForDepthEstimation, DepthAnythingConfig, DepthAnythingForDepthEstimation
from transformers.modeling_outputs import DepthEstimatorOutput

from ..compat import SubConfigSpec, takes_transformers_kwargs
from ..encoder import requested_hidden_states
from ..loading import StrictLoadingMixin
from ..registry import mirror_conversion_mapping, register_config, register_model
from ..settings import ExpediteSettings, SettingsOnSubConfig, convert_config
from .dinov2 import READ_HIDDEN_STATES_KWARG, ExpeditedDinov2Config, expedite_dinov2_config


@strict
class ExpeditedDepthAnythingConfig(SettingsOnSubConfig, DepthAnythingConfig):
    """``DepthAnythingConfig`` whose DINOv2 ``backbone_config`` is expedited and holds the settings."""

    model_type = "expedited_depth_anything"
    sub_configs_defaults = {
        "backbone_config": SubConfigSpec(
            config_class=DepthAnythingConfig.sub_configs_defaults["backbone_config"].config_class,
            model_type=ExpeditedDinov2Config.model_type,
            init_kwargs=DepthAnythingConfig.sub_configs_defaults["backbone_config"].init_kwargs,
        ),
    }

    windowed_settings = False
    sub_config_classes = (ExpediteSettings,)
    expedite_sub_config = staticmethod(expedite_dinov2_config)


def expedite_depth_anything_config(config: DepthAnythingConfig, **settings: Any) -> ExpeditedDepthAnythingConfig:
    """The expedited version of a Depth Anything config (V1 or V2, vanilla or already expedited): its DINOv2
    ``backbone_config`` expedited with ``settings`` (defaults: the ``dinov2`` preset family). The input is left alone;
    an unsupported backbone raises a ``ValueError`` naming the supported ones."""
    return convert_config(ExpeditedDepthAnythingConfig, copy.deepcopy(config), DepthAnythingConfig, **settings)


class ExpeditedDepthAnythingForDepthEstimation(StrictLoadingMixin, DepthAnythingForDepthEstimation):
    """``DepthAnythingForDepthEstimation`` on an expedited DINOv2 backbone that reconstructs only what is read."""

    config_class = ExpeditedDepthAnythingConfig

    @takes_transformers_kwargs
    def forward(
        self, pixel_values: torch.Tensor, labels: torch.LongTensor | None = None, **kwargs
    ) -> DepthEstimatorOutput:
        asked = kwargs.get("output_hidden_states", self.config.output_hidden_states)
        read = requested_hidden_states(self, asked, self.backbone.config.num_hidden_layers)
        if read is not None:  # the head passes its kwargs on to the backbone (which adds its feature maps' inputs)
            kwargs[READ_HIDDEN_STATES_KWARG] = read
        return super().forward(pixel_values, labels=labels, **kwargs)


mirror_conversion_mapping("ExpeditedDepthAnythingForDepthEstimation", "DepthAnythingForDepthEstimation")
mirror_conversion_mapping(ExpeditedDepthAnythingConfig.model_type, DepthAnythingConfig.model_type)
register_config(ExpeditedDepthAnythingConfig)
register_model(AutoModelForDepthEstimation, ExpeditedDepthAnythingConfig, ExpeditedDepthAnythingForDepthEstimation)
