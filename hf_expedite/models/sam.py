# Copyright 2026 The hf_expedite authors. Licensed under the Apache License, Version 2.0 (see pyproject.toml).
"""Expedited SAM: the image encoder of ``SamModel`` / ``SamVisionModel`` clustering inside its attention windows.

SAM's encoder is a ViT on a 64 x 64 token map (1024 x 1024 input) with 14 x 14 window attention in most blocks and
global attention in ``global_attn_indexes``. As the official Expedit-SAM code does (``expedite-algorithm.md`` 3.4):

* before block ``clustering_location`` the map is zero-padded to multiples of the window K (64 -> 70), cut into K x K
  windows and each window clustered to k x k tokens (``clustered_window_size``), giving a (70 / K * k)-sided map
  (50 x 50 for k = 10), with :func:`hf_expedite.windows.cluster_windows`, the Swin code path;
* the windowed blocks after it attend in k x k windows, which are exactly the original windows (no more padding);
  the global blocks attend over the whole clustered map. SAM's attention resizes its decomposed relative-position
  tables to any window or map (``get_rel_pos`` interpolates linearly: 27 -> 19 for k = 10, 127 -> 99 for a 50 x 50
  map), as in the official code. The padding clusters are real tokens for every later block, global ones included
  (the official behaviour);
* after block ``reconstruction_location`` (``None``: the last) each window is reconstructed to K * K tokens, the map
  un-partitioned and the padding cropped, so the neck and the image embeddings keep the vanilla 64 x 64 shape.

The settings live on the vision config (``config.vision_config`` of a ``SamConfig``), so prompts, the prompt
encoder, the mask decoder and ``pipeline("mask-generation")`` are the vanilla ones. Hidden states are recorded full
resolution from a :class:`~hf_expedite.encoder.HiddenStatesTap` (reduced ones reconstructed where read).
"""

from __future__ import annotations

from typing import Any

import torch
from huggingface_hub.dataclasses import strict
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskGeneration,
    SamConfig,
    SamModel,
    SamVisionConfig,
    SamVisionModel,
)
from transformers.models.sam.modeling_sam import (
    SamVisionAttention,
    SamVisionEncoder,
    SamVisionEncoderOutput,
    SamVisionLayer,
)

from ..compat import SubConfigSpec, capture_outputs, merge_with_config_defaults
from ..encoder import HIDDEN_STATES_RECORDER, EagerCaptureHooksMixin, HiddenStatesTap, requested_hidden_states
from ..loading import StrictLoadingMixin
from ..registry import mirror_conversion_mapping, register_config, register_model
from ..settings import LoadsVanillaConfigs, WindowedExpediteSettings, convert_config, setting_names
from ..settings import validate_settings, validate_when_expedited
from ..windows import WindowClustering, check_clustered_window, cluster_windows, fill_windowed_settings


def check_sam_settings(config: WindowedExpediteSettings) -> None:
    """Validate the settings of a SAM vision config (``ValueError`` naming the field and its valid range)."""
    check_clustered_window(config)
    validate_settings(config, config.num_hidden_layers, "SAM encoder blocks")
    if config.clustered_window_size > config.window_size:
        raise ValueError(
            f"Invalid Expedite setting `clustered_window_size={config.clustered_window_size!r}`: the attention window "
            f"after clustering must lie in 1..{config.window_size} (the encoder's window)."
        )
    if config.official_shift_mask:
        raise ValueError("Invalid Expedite setting `official_shift_mask=True`: SAM's windows are never shifted.")


@strict
class ExpeditedSamVisionConfig(WindowedExpediteSettings, SamVisionConfig):
    """``SamVisionConfig`` plus the windowed Expedite settings (``clustering_location`` counts the encoder blocks)."""

    model_type = "expedited_sam_vision_model"

    def __post_init__(self, **kwargs):
        kwargs.pop("model_type", None)  # a hub config says "sam_vision_model": it must not shadow ours
        super().__post_init__(**kwargs)
        fill_windowed_settings(self, "sam")
        validate_when_expedited(self, lambda: check_sam_settings(self))


@strict
class ExpeditedSamConfig(LoadsVanillaConfigs, SamConfig):
    """``SamConfig`` whose ``vision_config`` is an :class:`ExpeditedSamVisionConfig`, holding the settings; setting
    kwargs given to it (``from_pretrained(repo, clustering_location=8)``) are forwarded to the vision config."""

    model_type = "expedited_sam"
    sub_configs_defaults = {
        **SamConfig.sub_configs_defaults,
        # A dict saying "sam_vision_model" builds the vanilla config, which __post_init__ converts with the settings.
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type=ExpeditedSamVisionConfig.model_type),
    }

    def __post_init__(self, **kwargs: Any) -> None:
        kwargs.pop("model_type", None)
        settings = {name: kwargs.pop(name) for name in setting_names() if name in kwargs}
        super().__post_init__(**kwargs)
        if settings or not isinstance(self.vision_config, ExpeditedSamVisionConfig):
            self.vision_config = expedite_sam_vision_config(self.vision_config, **settings)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> ExpeditedSamConfig:
        """Route Expedite setting kwargs to the vision config."""
        config_dict = {**config_dict, **{name: kwargs.pop(name) for name in setting_names() if name in kwargs}}
        return super().from_dict(config_dict, **kwargs)


def expedite_sam_vision_config(config: SamVisionConfig, **settings: Any) -> ExpeditedSamVisionConfig:
    """The expedited version of a SAM vision config (vanilla or already expedited), with ``settings`` applied."""
    return convert_config(ExpeditedSamVisionConfig, config, SamVisionConfig, **settings)


def expedite_sam_config(config: SamConfig, **settings: Any) -> ExpeditedSamConfig:
    """The expedited version of a SAM config (vanilla or already expedited): its vision config swapped for an
    :class:`ExpeditedSamVisionConfig` with ``settings`` applied."""
    return convert_config(ExpeditedSamConfig, config, SamConfig, **settings)


class ExpeditedSamVisionLayer(SamVisionLayer):
    """``SamVisionLayer`` that can attend in windows of another size (``expedite_window``) than the one it was built
    with; global-attention layers (window 0) ignore it."""

    def forward(self, hidden_states: torch.Tensor, expedite_window: int | None = None) -> torch.Tensor:
        if expedite_window is None or self.window_size == 0:
            return super().forward(hidden_states)
        residual = hidden_states
        hidden_states = self.layer_norm1(hidden_states)
        height, width = hidden_states.shape[1:3]
        windows, padded = self.window_partition(hidden_states, expedite_window)
        windows, _ = self.attn(hidden_states=windows)
        hidden_states = residual + self.window_unpartition(windows, expedite_window, padded, (height, width))
        return hidden_states + self.mlp(self.layer_norm2(hidden_states))


class ExpeditedSamVisionEncoder(EagerCaptureHooksMixin, SamVisionEncoder):
    """``SamVisionEncoder`` clustering inside its attention windows (see the module docstring)."""

    config_class = ExpeditedSamVisionConfig
    _can_record_outputs = {"hidden_states": HIDDEN_STATES_RECORDER, "attentions": SamVisionAttention}

    def __init__(self, config: ExpeditedSamVisionConfig):
        super().__init__(config)
        for layer in self.layers:  # same parameters and names; only the forward takes a window
            layer.__class__ = ExpeditedSamVisionLayer
        self.hidden_states_tap = HiddenStatesTap()
        self.install_capture_hooks()

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(self, pixel_values: torch.Tensor | None = None, **kwargs) -> SamVisionEncoderOutput:
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values")
        hidden_states = self.patch_embed(pixel_values)
        if self.pos_embed is not None:
            hidden_states = hidden_states + self.pos_embed
        asked = kwargs.get("output_hidden_states", self.config.output_hidden_states)
        hidden_states = self._run_layers(hidden_states, requested_hidden_states(self, asked, len(self.layers)))
        return SamVisionEncoderOutput(last_hidden_state=self.neck(hidden_states))

    def _run_layers(self, hidden_states: torch.Tensor, wanted: set[int] | None) -> torch.Tensor:
        """The blocks on a ``(B, H, W, C)`` map, clustering and reconstructing windows as the config says; the tap
        sees the full-resolution state after every block it is asked for (``wanted``, ``None`` = all)."""
        config = self.config
        if config.expedite:
            check_sam_settings(config)  # settings may have been changed on the config since it was built
        alpha = config.clustering_location if config.expedite else -1
        reconstruct_at = config.reconstruction_location or len(self.layers)
        batch, height, width, channels = hidden_states.shape
        clustering: WindowClustering | None = None
        recorded = hidden_states
        for index, layer in enumerate(self.layers):
            if index == alpha:
                tokens = hidden_states.reshape(batch, height * width, channels)
                reduced, clustering = cluster_windows(
                    tokens, (height, width), config.window_size, config.clustered_window_size, config, pad_small_maps=True
                )
                hidden_states = reduced.reshape(batch, *clustering.reduced_grid, channels)
            if clustering is None:
                hidden_states = full = layer(hidden_states)
            else:
                hidden_states = full = layer(hidden_states, expedite_window=config.clustered_window_size)
                if index + 1 == reconstruct_at or wanted is None or index + 1 in wanted:
                    full = clustering.reconstruct(hidden_states.reshape(batch, -1, channels))
                    full = full.reshape(batch, height, width, channels)
                    if index + 1 == reconstruct_at:
                        hidden_states, clustering = full, None
            recorded = self.hidden_states_tap(recorded, full)
        return hidden_states


class ExpeditedSamVisionModel(StrictLoadingMixin, SamVisionModel):
    """``SamVisionModel`` with an :class:`ExpeditedSamVisionEncoder`; the image embeddings keep the vanilla shape."""

    config_class = ExpeditedSamVisionConfig

    def __init__(self, config: ExpeditedSamVisionConfig):
        super().__init__(config)
        self.vision_encoder = ExpeditedSamVisionEncoder(config)
        self.post_init()


class ExpeditedSamModel(StrictLoadingMixin, SamModel):
    """``SamModel`` with an :class:`ExpeditedSamVisionEncoder`: prompts (points, boxes, masks), the mask decoder and
    ``pipeline("mask-generation")`` work unchanged on image embeddings of the vanilla shape."""

    config_class = ExpeditedSamConfig

    def __init__(self, config: ExpeditedSamConfig):
        super().__init__(config)
        self.vision_encoder = ExpeditedSamVisionEncoder(config.vision_config)
        self.post_init()


mirror_conversion_mapping(ExpeditedSamConfig.model_type, "sam")
mirror_conversion_mapping(ExpeditedSamVisionConfig.model_type, "sam_vision_model")
mirror_conversion_mapping("ExpeditedSamModel", "SamModel")
mirror_conversion_mapping("ExpeditedSamVisionModel", "SamVisionModel")
register_config(ExpeditedSamVisionConfig)
register_config(ExpeditedSamConfig)
register_model(AutoModel, ExpeditedSamConfig, ExpeditedSamModel)
register_model(AutoModelForMaskGeneration, ExpeditedSamConfig, ExpeditedSamModel)
register_model(AutoModel, ExpeditedSamVisionConfig, ExpeditedSamVisionModel)
