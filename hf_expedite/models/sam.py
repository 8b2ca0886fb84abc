# Copyright 2026 The hf_expedite authors. Licensed under the Apache License, Version 2.0 (see pyproject.toml).
"""Expedited SAM and SAM-HQ: the image encoder of ``SamModel`` / ``SamHQModel`` (and their vision models) clustering
inside its attention windows.

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

SAM-HQ's mask decoder also reads the output of every global block (``intermediate_embeddings``; its HQ features use
the first): those are reconstructed to the full map too. The settings live on the vision config
(``config.vision_config`` of a ``SamConfig`` / ``SamHQConfig``), so prompts, the prompt encoder, the mask decoder and
``pipeline("mask-generation")`` are the vanilla ones. Hidden states are recorded full resolution from a
:class:`~hf_expedite.encoder.HiddenStatesTap` (reduced ones reconstructed where read).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch
from huggingface_hub.dataclasses import strict
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskGeneration,
    SamConfig,
    SamHQConfig,
    SamHQModel,
    SamHQVisionConfig,
    SamHQVisionModel,
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
from transformers.models.sam_hq.modeling_sam_hq import (
    SamHQVisionAttention,
    SamHQVisionEncoder,
    SamHQVisionEncoderOutput,
    SamHQVisionLayer,
)

from ..compat import SubConfigSpec, capture_outputs, merge_with_config_defaults
from ..encoder import HIDDEN_STATES_RECORDER, EagerCaptureHooksMixin, HiddenStatesTap, requested_hidden_states
from ..loading import StrictLoadingMixin
from ..registry import mirror_conversion_mapping, register_config, register_model
from ..settings import SettingsOnSubConfig, WindowedExpediteSettings, convert_config
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


class _SamVisionSettings(WindowedExpediteSettings):
    """The windowed Expedite settings of a SAM vision config (``clustering_location`` counts the encoder blocks)."""

    def __post_init__(self, **kwargs):
        kwargs.pop("model_type", None)  # a hub config says the vanilla type: it must not shadow ours
        super().__post_init__(**kwargs)
        fill_windowed_settings(self, "sam")
        validate_when_expedited(self, lambda: check_sam_settings(self))


@strict
class ExpeditedSamVisionConfig(_SamVisionSettings, SamVisionConfig):
    """``SamVisionConfig`` plus the windowed Expedite settings."""

    model_type = "expedited_sam_vision_model"


@strict
class ExpeditedSamHQVisionConfig(_SamVisionSettings, SamHQVisionConfig):
    """``SamHQVisionConfig`` plus the windowed Expedite settings."""

    model_type = "expedited_sam_hq_vision_model"


def expedite_sam_vision_config(config: SamVisionConfig, **settings: Any) -> ExpeditedSamVisionConfig:
    """The expedited version of a SAM vision config (vanilla or already expedited), with ``settings`` applied."""
    return convert_config(ExpeditedSamVisionConfig, config, SamVisionConfig, **settings)


def expedite_sam_hq_vision_config(config: SamHQVisionConfig, **settings: Any) -> ExpeditedSamHQVisionConfig:
    """The expedited version of a SAM-HQ vision config (vanilla or already expedited), with ``settings`` applied."""
    return convert_config(ExpeditedSamHQVisionConfig, config, SamHQVisionConfig, **settings)


class _VisionSettings(SettingsOnSubConfig):
    """A SAM config whose ``vision_config`` is always the expedited vision config, holding the settings (see
    :class:`~hf_expedite.settings.SettingsOnSubConfig`)."""

    settings_sub_config = "vision_config"
    sub_config_classes = (WindowedExpediteSettings,)


def _vision_spec(config_class: type) -> SubConfigSpec:
    """A dict saying the vanilla vision type builds the vanilla config, which ``__post_init__`` then converts."""
    return SubConfigSpec(config_class=AutoConfig, model_type=config_class.model_type)


@strict
class ExpeditedSamConfig(_VisionSettings, SamConfig):
    """``SamConfig`` whose ``vision_config`` is an :class:`ExpeditedSamVisionConfig`, holding the settings."""

    model_type = "expedited_sam"
    sub_configs_defaults = {**SamConfig.sub_configs_defaults, "vision_config": _vision_spec(ExpeditedSamVisionConfig)}
    expedite_sub_config = staticmethod(expedite_sam_vision_config)


@strict
class ExpeditedSamHQConfig(_VisionSettings, SamHQConfig):
    """``SamHQConfig`` whose ``vision_config`` is an :class:`ExpeditedSamHQVisionConfig`, holding the settings."""

    model_type = "expedited_sam_hq"
    sub_configs_defaults = {
        **SamHQConfig.sub_configs_defaults,
        "vision_config": _vision_spec(ExpeditedSamHQVisionConfig),
    }
    expedite_sub_config = staticmethod(expedite_sam_hq_vision_config)


def expedite_sam_config(config: SamConfig, **settings: Any) -> ExpeditedSamConfig:
    """The expedited version of a SAM config (vanilla or already expedited): its vision config swapped for an
    :class:`ExpeditedSamVisionConfig` with ``settings`` applied."""
    return convert_config(ExpeditedSamConfig, config, SamConfig, **settings)


def expedite_sam_hq_config(config: SamHQConfig, **settings: Any) -> ExpeditedSamHQConfig:
    """The expedited version of a SAM-HQ config (vanilla or already expedited), as :func:`expedite_sam_config`."""
    return convert_config(ExpeditedSamHQConfig, config, SamHQConfig, **settings)


class _ClusteredWindowLayer:
    """A SAM vision layer that can attend in windows of another size (``expedite_window``) than the one it was built
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


class ExpeditedSamVisionLayer(_ClusteredWindowLayer, SamVisionLayer):
    """``SamVisionLayer`` that can attend in clustered windows."""


class ExpeditedSamHQVisionLayer(_ClusteredWindowLayer, SamHQVisionLayer):
    """``SamHQVisionLayer`` that can attend in clustered windows."""


class _ExpeditedSamEncoder(EagerCaptureHooksMixin):
    """The expedited block loop of a SAM image encoder (see the module docstring); ``layer_class`` is the layer's
    expedited class, swapped in at construction (same parameters and names)."""

    layer_class: type

    def __init__(self, config: ExpeditedSamVisionConfig | ExpeditedSamHQVisionConfig):
        super().__init__(config)
        for layer in self.layers:
            layer.__class__ = self.layer_class
        self.hidden_states_tap = HiddenStatesTap()
        self.install_capture_hooks()

    def _encode(
        self, pixel_values: torch.Tensor | None, kwargs: dict[str, Any], collect: Collection[int] = ()
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The neck's output and the full-resolution states after the blocks in ``collect`` (block indices)."""
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values")
        hidden_states = self.patch_embed(pixel_values)
        if self.pos_embed is not None:
            hidden_states = hidden_states + self.pos_embed
        asked = kwargs.get("output_hidden_states", self.config.output_hidden_states)
        wanted = requested_hidden_states(self, asked, len(self.layers))
        hidden_states, collected = self._run_layers(hidden_states, wanted, set(collect))
        return self.neck(hidden_states), collected

    def _run_layers(
        self, hidden_states: torch.Tensor, wanted: set[int] | None, collect: set[int]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The blocks on a ``(B, H, W, C)`` map, clustering and reconstructing windows as the config says; the tap
        sees the full-resolution state after every block it is asked for (``wanted``, ``None`` = all)."""
        config = self.config
        if config.expedite:
            check_sam_settings(config)  # settings may have been changed on the config since it was built
        alpha = config.clustering_location if config.expedite else -1
        reconstruct_at = config.reconstruction_location or len(self.layers)
        batch, height, width, channels = hidden_states.shape
        clustering: WindowClustering | None = None
        recorded, collected = hidden_states, []
        for index, layer in enumerate(self.layers):
            if index == alpha:
                tokens = hidden_states.reshape(batch, height * width, channels)
                window, clustered = config.window_size, config.clustered_window_size
                reduced, clustering = cluster_windows(
                    tokens, (height, width), window, clustered, config, pad_small_maps=True
                )
                hidden_states = reduced.reshape(batch, *clustering.reduced_grid, channels)
            if clustering is None:
                hidden_states = full = layer(hidden_states)
            else:
                hidden_states = full = layer(hidden_states, expedite_window=config.clustered_window_size)
                read = wanted is None or index + 1 in wanted or index in collect
                if index + 1 == reconstruct_at or read:
                    full = clustering.reconstruct(hidden_states.reshape(batch, -1, channels))
                    full = full.reshape(batch, height, width, channels)
                    if index + 1 == reconstruct_at:
                        hidden_states, clustering = full, None
            if index in collect:
                collected.append(full)
            recorded = self.hidden_states_tap(recorded, full)
        return hidden_states, collected


class ExpeditedSamVisionEncoder(_ExpeditedSamEncoder, SamVisionEncoder):
    """``SamVisionEncoder`` clustering inside its attention windows (see the module docstring)."""

    config_class = ExpeditedSamVisionConfig
    layer_class = ExpeditedSamVisionLayer
    _can_record_outputs = {"hidden_states": HIDDEN_STATES_RECORDER, "attentions": SamVisionAttention}

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(self, pixel_values: torch.Tensor | None = None, **kwargs) -> SamVisionEncoderOutput:
        return SamVisionEncoderOutput(last_hidden_state=self._encode(pixel_values, kwargs)[0])


class ExpeditedSamHQVisionEncoder(_ExpeditedSamEncoder, SamHQVisionEncoder):
    """``SamHQVisionEncoder`` clustering inside its attention windows; the global blocks' outputs it returns as
    ``intermediate_embeddings`` (read by the HQ mask decoder) are reconstructed to the full map."""

    config_class = ExpeditedSamHQVisionConfig
    layer_class = ExpeditedSamHQVisionLayer
    _can_record_outputs = {"hidden_states": HIDDEN_STATES_RECORDER, "attentions": SamHQVisionAttention}

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(self, pixel_values: torch.Tensor | None = None, **kwargs) -> SamHQVisionEncoderOutput:
        global_blocks = [index for index, layer in enumerate(self.layers) if layer.window_size == 0]
        embeddings, intermediate = self._encode(pixel_values, kwargs, global_blocks)
        return SamHQVisionEncoderOutput(last_hidden_state=embeddings, intermediate_embeddings=intermediate)


class ExpeditedSamVisionModel(StrictLoadingMixin, SamVisionModel):
    """``SamVisionModel`` with an :class:`ExpeditedSamVisionEncoder`; the image embeddings keep the vanilla shape."""

    config_class = ExpeditedSamVisionConfig

    def __init__(self, config: ExpeditedSamVisionConfig):
        super().__init__(config)
        self.vision_encoder = ExpeditedSamVisionEncoder(config)
        self.post_init()


class ExpeditedSamHQVisionModel(StrictLoadingMixin, SamHQVisionModel):
    """``SamHQVisionModel`` with an :class:`ExpeditedSamHQVisionEncoder`."""

    config_class = ExpeditedSamHQVisionConfig

    def __init__(self, config: ExpeditedSamHQVisionConfig):
        super().__init__(config)
        self.vision_encoder = ExpeditedSamHQVisionEncoder(config)
        self.post_init()


class ExpeditedSamModel(StrictLoadingMixin, SamModel):
    """``SamModel`` with an :class:`ExpeditedSamVisionEncoder`: prompts (points, boxes, masks), the mask decoder and
    ``pipeline("mask-generation")`` work unchanged on image embeddings of the vanilla shape."""

    config_class = ExpeditedSamConfig

    def __init__(self, config: ExpeditedSamConfig):
        super().__init__(config)
        self.vision_encoder = ExpeditedSamVisionEncoder(config.vision_config)
        self.post_init()


class ExpeditedSamHQModel(StrictLoadingMixin, SamHQModel):
    """``SamHQModel`` with an :class:`ExpeditedSamHQVisionEncoder` (as :class:`ExpeditedSamModel`)."""

    config_class = ExpeditedSamHQConfig

    def __init__(self, config: ExpeditedSamHQConfig):
        super().__init__(config)
        self.vision_encoder = ExpeditedSamHQVisionEncoder(config.vision_config)
        self.post_init()


for _config, _vanilla_type, _model, _vanilla_class, _auto_classes in (
    (ExpeditedSamConfig, "sam", ExpeditedSamModel, "SamModel", (AutoModel, AutoModelForMaskGeneration)),
    (ExpeditedSamVisionConfig, "sam_vision_model", ExpeditedSamVisionModel, "SamVisionModel", (AutoModel,)),
    (ExpeditedSamHQConfig, "sam_hq", ExpeditedSamHQModel, "SamHQModel", (AutoModel, AutoModelForMaskGeneration)),
    (ExpeditedSamHQVisionConfig, "sam_hq_vision_model", ExpeditedSamHQVisionModel, "SamHQVisionModel", (AutoModel,)),
):
    mirror_conversion_mapping(_config.model_type, _vanilla_type)
    mirror_conversion_mapping(_model.__name__, _vanilla_class)
    register_config(_config)
    for _auto_class in _auto_classes:
        register_model(_auto_class, _config, _model)
