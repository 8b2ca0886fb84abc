# Copyright 2026 The hf_expedite authors. Licensed under the Apache License, Version 2.0 (see pyproject.toml).
"""Expedited EoMT (Encoder-only Mask Transformer): ``EomtForUniversalSegmentation`` and its DINOv3 variant
``EomtDinov3ForUniversalSegmentation``, clustering their patch tokens.

EoMT is a plain ViT (DINOv2 or DINOv3 with register tokens) whose last ``num_blocks`` blocks also carry
``num_queries`` query tokens: before each of them the model predicts masks from the full ``grid_size`` patch map and
restricts every query's attention to its mask. So clustering happens in the plain blocks (``clustering_location``
counts them, an integer in ``0 .. num_hidden_layers - num_blocks - 1``) and the reconstruction at the latest where
the query blocks begin (``reconstruction_location`` ``None`` = there): the query blocks, their masked attention and
every mask prediction run on the vanilla full-resolution tokens. CLS and register tokens are carried through. In the
DINOv3 variant the cluster tokens get the rotary positions of their cells' centres
(:func:`hf_expedite.models.dinov3.cluster_rotary_embeddings`).

The layer loop is the model's own, written out once for both settings (transformers' ``forward`` inlines it):
with ``expedite=False`` it runs exactly the parent's operations, so the outputs are bit-identical. Hidden states are
recorded full resolution from a :class:`~hf_expedite.encoder.HiddenStatesTap`; attentions recorded in the reduced
phase are over ``P + M`` tokens.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from transformers import (
    AutoModelForUniversalSegmentation,
    EomtConfig,
    EomtDinov3Config,
    EomtDinov3ForUniversalSegmentation,
    EomtForUniversalSegmentation,
)
from transformers.models.eomt.modeling_eomt import EomtAttention, EomtForUniversalSegmentationOutput
from transformers.models.eomt_dinov3.modeling_eomt_dinov3 import (
    EomtDinov3Attention,
    EomtDinov3ForUniversalSegmentationOutput,
)

from ..compat import capture_outputs, merge_with_config_defaults, takes_transformers_kwargs
from ..encoder import (
    HIDDEN_STATES_RECORDER,
    EagerCaptureHooksMixin,
    HiddenStatesTap,
    requested_hidden_states,
    run_expedited_layers,
)
from ..loading import StrictLoadingMixin
from ..registry import mirror_conversion_mapping, register_config, register_model
from ..settings import ExpediteSettings, cluster_grid, convert_config, finalize_settings
from .dinov3 import RotaryEmbeddings, cluster_rotary_embeddings

PLAIN_BLOCKS_UNIT = "plain blocks (before the query blocks)"


def plain_blocks(config: EomtConfig | EomtDinov3Config) -> int:
    """The number of blocks before the query tokens join: where clustering and reconstruction can go."""
    return config.num_hidden_layers - config.num_blocks


class _PlainBlockSettings(ExpediteSettings):
    """The Expedite settings of an EoMT config: ``clustering_location`` counts the plain blocks."""

    def __post_init__(self, **kwargs):
        kwargs.pop("model_type", None)  # a hub config says the vanilla type: it must not shadow ours
        super().__post_init__(**kwargs)
        finalize_settings(self, "eomt", plain_blocks(self), PLAIN_BLOCKS_UNIT)


@strict
class ExpeditedEomtConfig(_PlainBlockSettings, EomtConfig):
    """``EomtConfig`` plus the Expedite settings (``clustering_location`` counts the plain blocks)."""

    model_type = "expedited_eomt"


@strict
class ExpeditedEomtDinov3Config(_PlainBlockSettings, EomtDinov3Config):
    """``EomtDinov3Config`` plus the Expedite settings (``clustering_location`` counts the plain blocks)."""

    model_type = "expedited_eomt_dinov3"


def expedite_eomt_config(config: EomtConfig, **settings: Any) -> ExpeditedEomtConfig:
    """The expedited version of an EoMT config (vanilla or already expedited), with ``settings`` applied."""
    return convert_config(ExpeditedEomtConfig, config, EomtConfig, **settings)


def expedite_eomt_dinov3_config(config: EomtDinov3Config, **settings: Any) -> ExpeditedEomtDinov3Config:
    """The expedited version of an EoMT-DINOv3 config (vanilla or already expedited), with ``settings`` applied."""
    return convert_config(ExpeditedEomtDinov3Config, config, EomtDinov3Config, **settings)


class _ExpeditedEomtMixin(EagerCaptureHooksMixin):
    """The expedited forward of both EoMT variants. Each variant defines what differs in its parent's forward:
    ``_embed(pixel_values)`` -> (tokens, rotary positions or None), ``_num_prefix_tokens()``, ``_run_layer(layer,
    states, mask, positions)`` and ``_additive(allowed, dtype)`` (the boolean query mask made additive)."""

    output_class: type

    def __init__(self, config: ExpeditedEomtConfig | ExpeditedEomtDinov3Config):
        super().__init__(config)
        self.hidden_states_tap = HiddenStatesTap()
        self.install_capture_hooks()

    @takes_transformers_kwargs
    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        pixel_values: torch.Tensor,
        mask_labels: list[torch.Tensor] | None = None,
        class_labels: list[torch.Tensor] | None = None,
        patch_offsets: list[torch.Tensor] | None = None,
        **kwargs,
    ) -> EomtForUniversalSegmentationOutput | EomtDinov3ForUniversalSegmentationOutput:
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values")
        config = self.config
        first_query_block = plain_blocks(config)
        hidden_states, positions = self._embed(pixel_values)
        full_length = hidden_states.shape[1]
        cluster_positions = None
        if config.expedite and positions is not None:
            cluster_positions = cluster_rotary_embeddings(
                self.rope_embeddings, self.grid_size, cluster_grid(config, self.grid_size), positions[0].dtype,
                positions[0].device,
            )  # fmt: skip

        def call_plain_block(layer: torch.nn.Module, states: torch.Tensor) -> torch.Tensor:
            at = positions if states.shape[1] == full_length else cluster_positions
            return self._run_layer(layer, states, None, at)

        asked = kwargs.get("output_hidden_states", config.output_hidden_states)
        hidden_states = run_expedited_layers(
            self.layers[:first_query_block],
            hidden_states,
            call_plain_block,
            config,
            self.grid_size,
            self.hidden_states_tap,
            requested_hidden_states(self, asked, config.num_hidden_layers),
            num_prefix_tokens=self._num_prefix_tokens(),
        )
        masks_per_layer, classes_per_layer = [], []
        attention_mask = None
        recorded = hidden_states  # the last state the tap saw (the embeddings when no plain block ran)
        for index in range(first_query_block, config.num_hidden_layers):
            block = index - first_query_block
            if block == 0:
                queries = self.query.weight[None].expand(hidden_states.shape[0], -1, -1).to(hidden_states.device)
                hidden_states = torch.cat((queries, hidden_states), dim=1)
            if self.training or self.attn_mask_probs[block] > 0:
                attention_mask = None  # freed before the next one is built (a (B, heads, T, T) float each)
                masks, classes = self.predict(self.layernorm(hidden_states))
                masks_per_layer.append(masks)
                classes_per_layer.append(classes)
                attention_mask = self._query_attention_mask(hidden_states, masks, block)
            hidden_states = self._run_layer(self.layers[index], hidden_states, attention_mask, positions)
            recorded = self.hidden_states_tap(recorded, hidden_states)
        sequence_output = self.layernorm(hidden_states)
        masks, classes = self.predict(sequence_output)
        masks_per_layer.append(masks)
        classes_per_layer.append(classes)
        loss = None
        if mask_labels is not None and class_labels is not None:
            loss = 0.0
            for layer_masks, layer_classes in zip(masks_per_layer, classes_per_layer):
                loss_dict = self.get_loss_dict(layer_masks, layer_classes, mask_labels, class_labels, None)
                loss += self.get_loss(loss_dict)
        return self.output_class(
            loss=loss,
            masks_queries_logits=masks,
            class_queries_logits=classes,
            last_hidden_state=sequence_output,
            patch_offsets=patch_offsets,
        )

    def _query_attention_mask(self, hidden_states: torch.Tensor, masks: torch.Tensor, block: int) -> torch.Tensor:
        """EoMT's masked attention before query block ``block``: each query sees the patch tokens its predicted mask
        (resized to the token grid) covers, everything else attends freely; additive, one copy per head."""
        batch, length = hidden_states.shape[:2]
        num_queries = self.config.num_queries
        first_patch = num_queries + self._num_prefix_tokens()
        allowed = torch.ones(batch, length, length, device=hidden_states.device, dtype=torch.bool)
        on_grid = F.interpolate(masks, size=self.grid_size, mode="bilinear")
        allowed[:, :num_queries, first_patch:] = on_grid.view(batch, num_queries, -1) > 0
        allowed = self._disable_attention_mask(
            allowed,
            prob=self.attn_mask_probs[block],
            num_query_tokens=num_queries,
            encoder_start_tokens=first_patch,
            device=allowed.device,
        )
        allowed = allowed[:, None].expand(-1, self.config.num_attention_heads, -1, -1)
        return self._additive(allowed, hidden_states.dtype)


class ExpeditedEomtForUniversalSegmentation(StrictLoadingMixin, _ExpeditedEomtMixin, EomtForUniversalSegmentation):
    """``EomtForUniversalSegmentation`` whose plain blocks run on clustered patch tokens (see the module docstring).

    Outputs (class and mask logits, ``last_hidden_state``, hidden states) have the vanilla shapes, so the image
    processor's ``post_process_{panoptic,instance,semantic}_segmentation`` and the ``image-segmentation`` pipeline work
    unchanged.
    """

    config_class = ExpeditedEomtConfig
    output_class = EomtForUniversalSegmentationOutput
    _can_record_outputs = {"hidden_states": HIDDEN_STATES_RECORDER, "attentions": EomtAttention}

    def _embed(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.embeddings(pixel_values), None

    def _num_prefix_tokens(self) -> int:
        return self.embeddings.num_prefix_tokens

    def _run_layer(self, layer, states, mask, positions):
        return layer(states, mask)

    def _additive(self, allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return allowed.float().masked_fill(~allowed, -1e9)


class ExpeditedEomtDinov3ForUniversalSegmentation(
    StrictLoadingMixin, _ExpeditedEomtMixin, EomtDinov3ForUniversalSegmentation
):
    """``EomtDinov3ForUniversalSegmentation`` whose plain blocks run on clustered patch tokens, the cluster tokens at
    their cells' rotary positions (see the module docstring); outputs keep the vanilla shapes."""

    config_class = ExpeditedEomtDinov3Config
    output_class = EomtDinov3ForUniversalSegmentationOutput
    _can_record_outputs = {"hidden_states": HIDDEN_STATES_RECORDER, "attentions": EomtDinov3Attention}

    def _embed(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, RotaryEmbeddings]:
        hidden_states = self.dropout(self.embeddings(pixel_values))
        return hidden_states, self.rope_embeddings(pixel_values.to(hidden_states.dtype))

    def _num_prefix_tokens(self) -> int:
        return self.num_prefix_tokens

    def _run_layer(self, layer, states, mask, positions):
        return layer(states, attention_mask=mask, position_embeddings=positions)

    def _additive(self, allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return allowed.to(dtype).masked_fill(~allowed, torch.finfo(dtype).min)


# EoMT has no weight-name conversion of its own in transformers 5.24; these follow transformers if it adds one.
for _config, _model, _vanilla_type, _vanilla_class in (
    (ExpeditedEomtConfig, ExpeditedEomtForUniversalSegmentation, "eomt", "EomtForUniversalSegmentation"),
    (ExpeditedEomtDinov3Config, ExpeditedEomtDinov3ForUniversalSegmentation, "eomt_dinov3",
     "EomtDinov3ForUniversalSegmentation"),
):  # fmt: skip
    mirror_conversion_mapping(_config.model_type, _vanilla_type)
    mirror_conversion_mapping(_model.__name__, _vanilla_class)
    register_config(_config)
    register_model(AutoModelForUniversalSegmentation, _config, _model)
