# Copyright 2026 The hf_expedite authors. Licensed under the Apache License, Version 2.0 (see pyproject.toml).
"""Expedited Swin (v1): ``SwinBackbone`` that clusters inside the attention windows of one stage.

The stages, blocks and attentions are class-swapped (``__class__`` of plain ``nn.Module``s, before the first forward,
so parameters, weight names and output-recording hooks stay): the stage holding ``clustering_location`` runs
:func:`hf_expedite.windows.run_windowed_blocks`, the clustered blocks take the window, shift and mask shift as int
kwargs and attend with the loaded relative-position-bias table bilinearly resized to the clustered window, computed
per call. Everything else, and everything with ``expedite=False``, runs the vanilla forward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoBackbone, SwinBackbone, SwinConfig
from transformers.models.swin.modeling_swin import SwinAttention, SwinLayer, SwinStage

from ..compat import ALL_ATTENTION_FUNCTIONS, eager_attention_forward
from ..loading import StrictLoadingMixin
from ..registry import mirror_conversion_mapping, register_config, register_model
from ..settings import SettingsOnSubConfig, WindowedExpediteSettings, convert_config
from ..windows import (
    checked_span,
    finalize_windowed_settings,
    relative_position_index,
    resize_relative_position_table,
    run_windowed_blocks,
    shifted_window_attention,
    stage_windows,
)


@strict
class ExpeditedSwinConfig(WindowedExpediteSettings, SwinConfig):
    """``SwinConfig`` plus the (windowed) Expedite settings; loads any Swin ``config.json``."""

    model_type = "expedited_swin"

    def __post_init__(self, **kwargs):
        kwargs.pop("model_type", None)  # a hub config says "swin": it must not shadow ours
        super().__post_init__(**kwargs)
        finalize_windowed_settings(self, "swin", stage_windows(self))


def expedite_swin_config(config: SwinConfig, **settings) -> ExpeditedSwinConfig:
    """The expedited version of a Swin config (vanilla or already expedited), with ``settings`` applied."""
    return convert_config(ExpeditedSwinConfig, config, SwinConfig, **settings)


SUPPORTED_BACKBONES = ("swin", ExpeditedSwinConfig.model_type)


class SwinBackboneSettings(SettingsOnSubConfig):
    """Config mixin of a model built on a Swin ``backbone_config`` (Mask2Former, UperNet): the backbone config is
    always an :class:`ExpeditedSwinConfig` and holds the Expedite settings (``config.backbone_config.
    clustering_location``, ...), see :class:`~hf_expedite.settings.SettingsOnSubConfig`; another backbone raises a
    ``ValueError``."""

    sub_config_classes = (ExpeditedSwinConfig,)

    def expedite_sub_config(self, backbone: Any, **settings: Any) -> ExpeditedSwinConfig:
        if backbone.model_type not in SUPPORTED_BACKBONES:
            head = self.model_type.removeprefix("expedited_")
            raise ValueError(
                f"Expedite supports {head} with a Swin backbone (model_type {' or '.join(SUPPORTED_BACKBONES)}); "
                f"this config's backbone is {backbone.model_type!r}."
            )
        return expedite_swin_config(backbone, **settings)


class ExpeditedSwinAttention(SwinAttention):
    """``SwinAttention`` that can attend in a clustered window (``expedite_window``) with a resized bias table."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        expedite_window: int | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if expedite_window is None:
            return super().forward(hidden_states, attention_mask, **kwargs)
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        bias = self.clustered_window_bias(expedite_window)
        if attention_mask is not None:  # (num_windows, n, n) -> (batch * num_windows, 1, n, n)
            num_windows, length = attention_mask.shape[0], input_shape[1]
            attention_mask = attention_mask[None, :, None].expand(input_shape[0] // num_windows, -1, -1, -1, -1)
            bias = bias + attention_mask.reshape(-1, 1, length, length)
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            bias,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            **kwargs,
        )
        return self.o_proj(attn_output.reshape(*input_shape, -1).contiguous()), attn_weights

    def clustered_window_bias(self, window: int) -> torch.Tensor:
        """``(1, heads, window**2, window**2)`` bias: the loaded table bilinearly resized to a ``window`` window."""
        module = self.relative_position_bias
        table = resize_relative_position_table(module.relative_position_bias_table, module.window_size[0], window)
        index = relative_position_index(window, table.device).reshape(-1)
        return table[index].reshape(window * window, window * window, -1).permute(2, 0, 1).unsqueeze(0)


class ExpeditedSwinLayer(SwinLayer):
    """``SwinLayer`` that can run on the clustered map: window, shift and mask shift come as int kwargs."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        input_dimensions: tuple[int, int],
        always_partition: bool = False,
        expedite_window: int | None = None,
        expedite_shift: int = 0,
        expedite_mask_shift: int = 0,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if expedite_window is None:
            return super().forward(hidden_states, input_dimensions, always_partition=always_partition, **kwargs)
        # The clustered map is a multiple of the window: no padding, and never the small-input clamp.
        height, width = input_dimensions
        batch_size, _, channels = hidden_states.shape
        shortcut = hidden_states
        hidden_map = self.layernorm_before(hidden_states).view(batch_size, height, width, channels)

        def attend(windows: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
            output, weights = self.attention(windows, mask, expedite_window=expedite_window, **kwargs)
            return self.dropout(output), weights

        attention_map, attn_weights = shifted_window_attention(
            hidden_map, expedite_window, expedite_shift, expedite_mask_shift, attend
        )
        hidden_states = shortcut + self.drop_path(attention_map.reshape(batch_size, height * width, channels))
        residual = hidden_states
        hidden_states = self.mlp(self.layernorm_after(hidden_states))
        return self.dropout(hidden_states) + residual, attn_weights


class ExpeditedSwinStage(SwinStage):
    """``SwinStage`` that clusters windows before a block and reconstructs before the stage output.

    Only the stage holding ``clustering_location`` does (``expedite_stage_index`` is set by the class swap).
    """

    expedite_stage_index: int

    def forward(
        self,
        hidden_states: torch.Tensor,
        input_dimensions: tuple[int, int],
        always_partition: bool = False,
        output_hidden_states_before_downsampling: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        config = self.config
        span = checked_span(config, stage_windows(config, clamp_to_image=False)) if config.expedite else None
        if span is None or span.stage != self.expedite_stage_index:
            return super().forward(
                hidden_states,
                input_dimensions,
                always_partition=always_partition,
                output_hidden_states_before_downsampling=output_hidden_states_before_downsampling,
                **kwargs,
            )

        def call_block(block, states, grid, window_kwargs):
            return block(states, grid, always_partition=always_partition, **window_kwargs, **kwargs)

        shifts = [index % 2 == 1 for index in range(len(self.blocks))]  # SwinStage shifts every odd block
        hidden_states, last_attn_weights = run_windowed_blocks(
            self.blocks, hidden_states, input_dimensions, span, config.window_size, shifts, config, call_block
        )
        before_downsampling = hidden_states
        if self.downsample is not None:
            hidden_states = self.downsample(before_downsampling, input_dimensions)
        reshaped = self.get_reshaped_hidden_states(
            hidden_states, before_downsampling, *input_dimensions, output_hidden_states_before_downsampling
        )
        return hidden_states, reshaped, last_attn_weights


def expedite_swin_stages(stages: nn.ModuleList) -> None:
    """Class-swap every stage, block and attention in place, before the first forward (each stage learns its index).

    Stages other than the clustering one, and blocks outside the clustered span, run the vanilla forward; swapping
    them all lets the settings on the config change after construction.
    """
    for index, stage in enumerate(stages):
        stage.__class__ = ExpeditedSwinStage
        stage.expedite_stage_index = index
        for block in stage.blocks:
            block.__class__ = ExpeditedSwinLayer
            block.attention.__class__ = ExpeditedSwinAttention


class ExpeditedSwinBackbone(StrictLoadingMixin, SwinBackbone):
    """``SwinBackbone`` with windowed Expedite in one stage; every feature map has the vanilla shape."""

    config_class = ExpeditedSwinConfig

    def __init__(self, config: ExpeditedSwinConfig):
        super().__init__(config)
        expedite_swin_stages(self.swin.encoder.layers)


# transformers keys Swin's renames on the model_type ("swin": the inner SwinModel / SwinEncoder carry our config) and
# on the class name ("SwinBackbone": the missing "swin." prefix of hub backbone checkpoints).
mirror_conversion_mapping(ExpeditedSwinConfig.model_type, "swin")
mirror_conversion_mapping("ExpeditedSwinBackbone", "SwinBackbone")
register_config(ExpeditedSwinConfig)
register_model(AutoBackbone, ExpeditedSwinConfig, ExpeditedSwinBackbone)
