# Copyright 2026 The hf_expedite authors. Licensed under the Apache License, Version 2.0 (see pyproject.toml).
"""Expedited Swinv2: ``Swinv2Model`` / ``Swinv2Backbone`` that cluster inside the attention windows of one stage.

Same design as :mod:`hf_expedite.models.swin` (class-swapped stages, blocks and attention; per-call state in the stage).
The clustered blocks' position bias is the layer's continuous-position-bias MLP evaluated on the clustered window's
relative offsets expressed in original-patch units (multiplied by K / k), with the layer's own normalisation and
log-spacing. Swinv2 adds the shifted-window mask twice (-200 instead of -100); the clustered path does the same, so a
clustered window equal to the attention window reproduces the vanilla blocks.

DPT with a Swinv2 backbone (``Intel/dpt-swinv2-*``): ``DPTNeck`` skips its reassemble stage only when
``backbone_config.model_type == "swinv2"``, so with an ``expedited_swinv2`` backbone a DPT model must call
:func:`drop_dpt_reassemble_stage` in its ``__init__`` before ``post_init`` (see that function).
"""

from __future__ import annotations

import math

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoBackbone, AutoModel, Swinv2Backbone, Swinv2Config, Swinv2Model
from transformers.models.swinv2.modeling_swinv2 import (
    Swinv2Attention,
    Swinv2Layer,
    Swinv2SelfAttention,
    Swinv2Stage,
)

from ..loading import StrictLoadingMixin
from ..registry import mirror_conversion_mapping, register_config, register_model
from ..settings import WindowedExpediteSettings, convert_config
from ..windows import (
    checked_span,
    finalize_windowed_settings,
    relative_position_index,
    run_windowed_blocks,
    shifted_window_attention,
    stage_windows,
)


@strict
class ExpeditedSwinv2Config(WindowedExpediteSettings, Swinv2Config):
    """``Swinv2Config`` plus the (windowed) Expedite settings; loads any Swinv2 ``config.json``."""

    model_type = "expedited_swinv2"

    def __post_init__(self, **kwargs):
        kwargs.pop("model_type", None)  # a hub config says "swinv2": it must not shadow ours
        super().__post_init__(**kwargs)
        finalize_windowed_settings(self, "swinv2", stage_windows(self, clamp_to_image=True))


def expedite_swinv2_config(config: Swinv2Config, **settings) -> ExpeditedSwinv2Config:
    """The expedited version of a Swinv2 config (vanilla or already expedited), with ``settings`` applied."""
    return convert_config(ExpeditedSwinv2Config, config, Swinv2Config, **settings)


def is_swinv2_family(config: object) -> bool:
    """Whether a (backbone) config is Swinv2, vanilla or expedited."""
    return getattr(config, "model_type", None) in ("swinv2", ExpeditedSwinv2Config.model_type)


def drop_dpt_reassemble_stage(model: nn.Module) -> None:
    """Give a DPT model with an expedited Swinv2 backbone the neck vanilla DPT builds for Swinv2.

    ``DPTNeck`` decides on ``backbone_config.model_type == "swinv2"`` whether the backbone is hierarchical; an
    ``expedited_swinv2`` backbone gets a ViT reassemble stage that the checkpoint lacks and the forward cannot use.
    Call this in the ``__init__`` of a ``DPTForDepthEstimation`` / ``DPTForSemanticSegmentation`` subclass after
    ``super().__init__`` and before ``post_init``; it does nothing for other backbones.
    """
    if is_swinv2_family(getattr(model.config, "backbone_config", None)):
        model.neck.reassemble_stage = None


class ExpeditedSwinv2SelfAttention(Swinv2SelfAttention):
    """``Swinv2SelfAttention`` that can attend in a clustered window (``expedite_window``)."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool | None = False,
        expedite_window: int | None = None,
    ) -> tuple[torch.Tensor, ...]:
        if expedite_window is None:
            return super().forward(hidden_states, attention_mask, output_attentions)
        batch_size, length, _ = hidden_states.shape
        shape = (batch_size, length, self.num_attention_heads, self.attention_head_size)
        query = self.query(hidden_states).view(shape).transpose(1, 2)
        key = self.key(hidden_states).view(shape).transpose(1, 2)
        value = self.value(hidden_states).view(shape).transpose(1, 2)
        scores = nn.functional.normalize(query, dim=-1) @ nn.functional.normalize(key, dim=-1).transpose(-2, -1)
        scores = scores * torch.clamp(self.logit_scale, max=math.log(1.0 / 0.01)).exp()
        scores = scores + self.clustered_window_bias(expedite_window).unsqueeze(0)
        if attention_mask is not None:  # added twice, as vanilla Swinv2 does
            num_windows = attention_mask.shape[0]
            mask = attention_mask.unsqueeze(1).unsqueeze(0)
            scores = scores.view(batch_size // num_windows, num_windows, self.num_attention_heads, length, length)
            scores = (scores + mask + mask).view(-1, self.num_attention_heads, length, length)
        probs = self.dropout(nn.functional.softmax(scores, dim=-1))
        context = (probs @ value).permute(0, 2, 1, 3).reshape(batch_size, length, self.all_head_size)
        return (context, probs) if output_attentions else (context,)

    def clustered_window_bias(self, window: int) -> torch.Tensor:
        """``(heads, window**2, window**2)`` continuous position bias for a clustered ``window``.

        Offsets between clusters are scaled by K / k into original-patch units, then normalised by the layer's own
        divisor (pretrained window - 1, else window - 1), spread to [-8, 8] and log-spaced like the layer's table.
        """
        original = self.window_size[0]
        weight = self.continuous_position_bias_mlp[0].weight
        offsets = torch.arange(-(window - 1), window, dtype=torch.float32, device=weight.device) * (original / window)
        table = torch.stack(torch.meshgrid(offsets, offsets, indexing="ij")).permute(1, 2, 0).unsqueeze(0)
        reference = self.pretrained_window_size if self.pretrained_window_size[0] > 0 else self.window_size
        if self.pretrained_window_size[0] > 0 or original > 1:
            table = table / table.new_tensor([reference[0] - 1, reference[1] - 1])
        table = table * 8
        table = torch.sign(table) * torch.log2(torch.abs(table) + 1.0) / math.log2(8)
        bias_table = self.continuous_position_bias_mlp(table.to(weight.dtype)).view(-1, self.num_attention_heads)
        index = relative_position_index(window, weight.device).reshape(-1)
        bias = bias_table[index].view(window * window, window * window, -1).permute(2, 0, 1).contiguous()
        return 16 * torch.sigmoid(bias)


class ExpeditedSwinv2Attention(Swinv2Attention):
    """``Swinv2Attention`` passing ``expedite_window`` to its self-attention."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool | None = False,
        expedite_window: int | None = None,
    ) -> tuple[torch.Tensor, ...]:
        if expedite_window is None:
            return super().forward(hidden_states, attention_mask, output_attentions)
        self_outputs = self.self(hidden_states, attention_mask, output_attentions, expedite_window=expedite_window)
        return (self.output(self_outputs[0], hidden_states),) + self_outputs[1:]


class ExpeditedSwinv2Layer(Swinv2Layer):
    """``Swinv2Layer`` that can run on the clustered map: window, shift and mask shift come as int kwargs."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        input_dimensions: tuple[int, int],
        output_attentions: bool | None = False,
        expedite_window: int | None = None,
        expedite_shift: int = 0,
        expedite_mask_shift: int = 0,
    ) -> tuple[torch.Tensor, ...]:
        if expedite_window is None:
            return super().forward(hidden_states, input_dimensions, output_attentions)
        height, width = input_dimensions
        batch_size, _, channels = hidden_states.shape
        shortcut = hidden_states

        def attend(windows: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
            outputs = self.attention(windows, mask, output_attentions, expedite_window=expedite_window)
            return outputs[0], outputs[1:]

        attention_map, attentions = shifted_window_attention(
            hidden_states.view(batch_size, height, width, channels),
            expedite_window,
            expedite_shift,
            expedite_mask_shift,
            attend,
        )
        attention_states = self.layernorm_before(attention_map.reshape(batch_size, height * width, channels))
        hidden_states = shortcut + self.drop_path(attention_states)
        layer_output = self.output(self.intermediate(hidden_states))
        layer_output = hidden_states + self.drop_path(self.layernorm_after(layer_output))
        return (layer_output,) + attentions


class ExpeditedSwinv2Stage(Swinv2Stage):
    """``Swinv2Stage`` that clusters windows before a block and reconstructs before the stage output.

    Only the stage holding ``clustering_location`` does (``expedite_stage_index`` is set by the class swap).
    """

    expedite_stage_index: int

    def forward(
        self,
        hidden_states: torch.Tensor,
        input_dimensions: tuple[int, int],
        output_attentions: bool | None = False,
    ) -> tuple[torch.Tensor, ...]:
        config = self.config
        span = checked_span(config, stage_windows(config, clamp_to_image=True)) if config.expedite else None
        if span is None or span.stage != self.expedite_stage_index:
            return super().forward(hidden_states, input_dimensions, output_attentions)

        def call_block(block, states, grid, window_kwargs):
            outputs = block(states, grid, output_attentions, **window_kwargs)
            return outputs[0], outputs[1:]

        window = self.blocks[span.start].window_size  # fixed at init from config.image_size
        shifts = [block.shift_size > 0 for block in self.blocks]
        hidden_states, attentions = run_windowed_blocks(
            self.blocks, hidden_states, input_dimensions, span, window, shifts, config, call_block
        )
        height, width = input_dimensions
        before_downsampling = hidden_states
        if self.downsample is not None:
            hidden_states = self.downsample(before_downsampling, input_dimensions)
            output_dimensions = (height, width, (height + 1) // 2, (width + 1) // 2)
        else:
            output_dimensions = (height, width, height, width)
        stage_outputs = (hidden_states, before_downsampling, output_dimensions)
        return stage_outputs + attentions if output_attentions else stage_outputs


def expedite_swinv2_stages(stages: nn.ModuleList) -> None:
    """Class-swap every stage, block and attention in place, before the first forward (each stage learns its index).

    Stages other than the clustering one, and blocks outside the clustered span, run the vanilla forward; swapping
    them all lets the settings on the config change after construction.
    """
    for index, stage in enumerate(stages):
        stage.__class__ = ExpeditedSwinv2Stage
        stage.expedite_stage_index = index
        for block in stage.blocks:
            block.__class__ = ExpeditedSwinv2Layer
            block.attention.__class__ = ExpeditedSwinv2Attention
            block.attention.self.__class__ = ExpeditedSwinv2SelfAttention


class ExpeditedSwinv2Model(StrictLoadingMixin, Swinv2Model):
    """``Swinv2Model`` with windowed Expedite in one stage; every hidden state has the vanilla shape."""

    config_class = ExpeditedSwinv2Config

    def __init__(self, config: ExpeditedSwinv2Config, add_pooling_layer: bool = True, use_mask_token: bool = False):
        super().__init__(config, add_pooling_layer=add_pooling_layer, use_mask_token=use_mask_token)
        expedite_swinv2_stages(self.encoder.layers)


class ExpeditedSwinv2Backbone(StrictLoadingMixin, Swinv2Backbone):
    """``Swinv2Backbone`` with windowed Expedite in one stage; every feature map has the vanilla shape."""

    config_class = ExpeditedSwinv2Config

    def __init__(self, config: ExpeditedSwinv2Config):
        super().__init__(config)
        expedite_swinv2_stages(self.encoder.layers)


# Swinv2 keeps its legacy weight names in transformers 5.24 (no conversion mapping): these mirror nothing today and
# follow transformers if it adds one, keyed like vanilla.
mirror_conversion_mapping(ExpeditedSwinv2Config.model_type, "swinv2")
mirror_conversion_mapping("ExpeditedSwinv2Model", "Swinv2Model")
mirror_conversion_mapping("ExpeditedSwinv2Backbone", "Swinv2Backbone")
register_config(ExpeditedSwinv2Config)
register_model(AutoModel, ExpeditedSwinv2Config, ExpeditedSwinv2Model)
register_model(AutoBackbone, ExpeditedSwinv2Config, ExpeditedSwinv2Backbone)
