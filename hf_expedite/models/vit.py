# Copyright 2026 The hf_expedite authors. Licensed under the Apache License, Version 2.0 (see pyproject.toml).
"""Expedited ViT: ``ViTModel`` / ``ViTForImageClassification`` with clustering and reconstruction in the layer loop."""

from __future__ import annotations

import torch
from huggingface_hub.dataclasses import strict
from transformers import AutoModel, AutoModelForImageClassification, ViTConfig, ViTForImageClassification, ViTModel
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.vit.modeling_vit import ViTAttention

from ..compat import (
    capture_outputs,
    create_bidirectional_mask,
    merge_with_config_defaults,
    takes_transformers_kwargs,
)
from ..encoder import (
    HIDDEN_STATES_RECORDER,
    EagerCaptureHooksMixin,
    HiddenStatesTap,
    phase_masks,
    requested_hidden_states,
    run_expedited_layers,
)
from ..loading import StrictLoadingMixin
from ..registry import mirror_conversion_mapping, register_config, register_model
from ..settings import ExpediteSettings, finalize_settings, rebuilt


@strict
class ExpeditedViTConfig(ExpediteSettings, ViTConfig):
    """``ViTConfig`` plus the Expedite settings; loads any ViT ``config.json``."""

    model_type = "expedited_vit"

    def __post_init__(self, **kwargs):
        kwargs.pop("model_type", None)  # a hub config says "vit": it must not shadow ours
        super().__post_init__(**kwargs)
        finalize_settings(self, "vit", self.num_hidden_layers)


def expedite_vit_config(config: ViTConfig, **settings) -> ExpeditedViTConfig:
    """The expedited version of a ViT config (vanilla or already expedited), with ``settings`` applied."""
    return rebuilt(ExpeditedViTConfig, config, **settings)


def token_grid(pixel_values: torch.Tensor, patch_size: int | list[int] | tuple[int, int]) -> tuple[int, int]:
    """The patch-token grid of an image batch."""
    patch_h, patch_w = (patch_size, patch_size) if isinstance(patch_size, int) else patch_size
    return pixel_values.shape[-2] // patch_h, pixel_values.shape[-1] // patch_w


class ExpeditedViTModel(EagerCaptureHooksMixin, StrictLoadingMixin, ViTModel):
    """``ViTModel`` that clusters patch tokens after ``clustering_location`` layers and reconstructs them later.

    Hidden states and ``last_hidden_state`` keep the vanilla ``(B, 1 + N, C)`` shape. Attentions recorded inside the
    reduced phase are over ``1 + M`` tokens.
    """

    config_class = ExpeditedViTConfig
    _can_record_outputs = {"hidden_states": HIDDEN_STATES_RECORDER, "attentions": ViTAttention}

    def __init__(self, config: ExpeditedViTConfig, add_pooling_layer: bool = True, use_mask_token: bool = False):
        super().__init__(config, add_pooling_layer=add_pooling_layer, use_mask_token=use_mask_token)
        self.hidden_states_tap = HiddenStatesTap()
        self.install_capture_hooks()

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    @takes_transformers_kwargs
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        bool_masked_pos: torch.BoolTensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        if attention_mask is not None and self.config.expedite:
            raise ValueError(
                "An `attention_mask` over the patch tokens cannot be combined with token clustering (the tokens it "
                "masks no longer exist after clustering). Pass no mask, or load the model with expedite=False."
            )
        expected_dtype = self.embeddings.patch_embeddings.projection.weight.dtype
        if pixel_values.dtype != expected_dtype:
            pixel_values = pixel_values.to(expected_dtype)
        embedding_output = self.embeddings(
            pixel_values, bool_masked_pos=bool_masked_pos, interpolate_pos_encoding=interpolate_pos_encoding
        )
        attention_mask = create_bidirectional_mask(
            config=self.config, inputs_embeds=embedding_output, attention_mask=attention_mask
        )
        mask_for = phase_masks(self.config, attention_mask, embedding_output.shape[1])
        hidden_states = run_expedited_layers(
            self.layers,
            embedding_output,
            lambda layer, states: layer(states, mask_for(states), **kwargs),
            self.config,
            token_grid(pixel_values, self.config.patch_size),
            self.hidden_states_tap,
            requested_hidden_states(
                self, kwargs.get("output_hidden_states", self.config.output_hidden_states), len(self.layers)
            ),
        )
        sequence_output = self.layernorm(hidden_states)
        pooled_output = self.pooler(sequence_output) if self.pooler is not None else None
        return BaseModelOutputWithPooling(last_hidden_state=sequence_output, pooler_output=pooled_output)


class ExpeditedViTForImageClassification(StrictLoadingMixin, ViTForImageClassification):
    """``ViTForImageClassification`` on an :class:`ExpeditedViTModel` (same weight names)."""

    config_class = ExpeditedViTConfig

    def __init__(self, config: ExpeditedViTConfig):
        super().__init__(config)
        self.vit = ExpeditedViTModel(config, add_pooling_layer=False)
        self.post_init()


mirror_conversion_mapping("ExpeditedViTModel", "ViTModel")
register_config(ExpeditedViTConfig)
register_model(AutoModel, ExpeditedViTConfig, ExpeditedViTModel)
register_model(AutoModelForImageClassification, ExpeditedViTConfig, ExpeditedViTForImageClassification)
