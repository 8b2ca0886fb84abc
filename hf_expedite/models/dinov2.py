# Copyright 2026 The hf_expedite authors. Licensed under the Apache License, Version 2.0 (see pyproject.toml).
"""Expedited DINOv2 backbones (plain and with register tokens), for Depth Anything and DPT with a DINOv2 backbone.

The backbones are swapped in through ``config.backbone_config`` (:func:`expedite_dinov2_config`): the parent model
keeps its vanilla class and weight names, ``load_backbone`` builds :class:`ExpeditedDinov2Backbone` (or the register
variant) from the expedited backbone config. Clustering happens inside the encoder; every hidden state the backbone
turns into a feature map (``out_features``) or returns to a caller is reconstructed to the full ``P + N`` tokens with
the weights computed at the clustering point, the others stay reduced. CLS and register tokens (``P = 1 +
num_register_tokens``) are carried through untouched.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch
from torch import nn
from huggingface_hub.dataclasses import strict
from transformers import AutoBackbone, Dinov2Config, Dinov2WithRegistersConfig, PreTrainedConfig
from transformers.modeling_outputs import BackboneOutput, BaseModelOutput
from transformers.models.dinov2.modeling_dinov2 import Dinov2Attention, Dinov2Backbone, Dinov2Encoder
from transformers.models.dinov2_with_registers.modeling_dinov2_with_registers import (
    Dinov2WithRegistersAttention,
    Dinov2WithRegistersBackbone,
    Dinov2WithRegistersEncoder,
)

from ..compat import capture_outputs, merge_with_config_defaults, takes_transformers_kwargs
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
from .vit import token_grid

READ_HIDDEN_STATES_KWARG = "expedite_read_hidden_states"
"""Private forward kwarg of the expedited DPT models and DINOv2 backbones: the indices of the hidden states the caller
will read. Heads whose forward forces ``output_hidden_states=True`` (``filter_output_hidden_states``) pass it so that
reduced states nobody reads are not reconstructed; without it, ``output_hidden_states`` decides."""


@strict
class ExpeditedDinov2Config(ExpediteSettings, Dinov2Config):
    """``Dinov2Config`` plus the Expedite settings (``clustering_location`` counts the DINOv2 blocks)."""

    model_type = "expedited_dinov2"

    def __post_init__(self, **kwargs):
        kwargs.pop("model_type", None)  # a hub config says "dinov2": it must not shadow ours
        super().__post_init__(**kwargs)
        finalize_settings(self, "dinov2", self.num_hidden_layers)


@strict
class ExpeditedDinov2WithRegistersConfig(ExpediteSettings, Dinov2WithRegistersConfig):
    """``Dinov2WithRegistersConfig`` plus the Expedite settings; the register tokens are never clustered."""

    model_type = "expedited_dinov2_with_registers"

    def __post_init__(self, **kwargs):
        kwargs.pop("model_type", None)
        super().__post_init__(**kwargs)
        finalize_settings(self, "dinov2", self.num_hidden_layers)


EXPEDITED_BACKBONE_CONFIGS: dict[str, type[PreTrainedConfig]] = {
    "dinov2": ExpeditedDinov2Config,
    "dinov2_with_registers": ExpeditedDinov2WithRegistersConfig,
    ExpeditedDinov2Config.model_type: ExpeditedDinov2Config,
    ExpeditedDinov2WithRegistersConfig.model_type: ExpeditedDinov2WithRegistersConfig,
}
"""Backbone ``model_type`` (vanilla or expedited) -> expedited backbone config class."""


def expedite_dinov2_config(config: PreTrainedConfig, **settings: Any) -> PreTrainedConfig:
    """The expedited version of a DINOv2 backbone config (vanilla or already expedited), with ``settings`` applied.

    ``Dinov2Config`` -> :class:`ExpeditedDinov2Config`, ``Dinov2WithRegistersConfig`` ->
    :class:`ExpeditedDinov2WithRegistersConfig`; settings left unset come from the ``dinov2`` default preset. Any other
    backbone raises a ``ValueError`` naming the supported ones.
    """
    config_class = EXPEDITED_BACKBONE_CONFIGS.get(getattr(config, "model_type", None))
    if config_class is None:
        raise ValueError(
            f"Expedite does not support a backbone of type {getattr(config, 'model_type', type(config).__name__)!r}; "
            "supported backbones: dinov2, dinov2_with_registers."
        )
    return rebuilt(config_class, config, **settings)


def expedited_token_grid(pixel_values: torch.Tensor, patch_size: int | list[int]) -> tuple[int, int]:
    """The patch-token grid to cluster; an input smaller than one patch raises a ``ValueError`` saying so."""
    grid = token_grid(pixel_values, patch_size)
    if min(grid) < 1:
        raise ValueError(
            f"The input ({pixel_values.shape[-2]} x {pixel_values.shape[-1]} pixels) is smaller than one patch "
            f"({patch_size}): it has no token to cluster."
        )
    return grid


def _run_encoder(
    encoder: Dinov2Encoder | Dinov2WithRegistersEncoder,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None,
    grid: tuple[int, int] | None,
    wanted: Collection[int] | None,
    kwargs: dict[str, Any],
) -> BaseModelOutput:
    config = encoder.config
    if config.expedite and grid is None:
        raise ValueError("The expedited DINOv2 encoder needs the patch-token grid; run it through its backbone.")
    mask_for = phase_masks(config, attention_mask, hidden_states.shape[1])  # transformers' own mask: full length
    hidden_states = run_expedited_layers(
        encoder.layer,
        hidden_states,
        lambda layer, states: layer(states, mask_for(states), **kwargs),
        config,
        grid,
        encoder.hidden_states_tap,
        wanted,
        num_prefix_tokens=1 + getattr(config, "num_register_tokens", 0),
    )
    return BaseModelOutput(last_hidden_state=hidden_states)


class _ExpeditedEncoderMixin(EagerCaptureHooksMixin):
    """The expedited layer loop for a DINOv2 encoder class; hidden states are recorded full resolution from a tap.

    ``expedite_grid`` (the patch-token grid) and ``expedite_wanted`` (hidden-state indices to reconstruct, ``None`` =
    all) come from the backbone. Attentions recorded after clustering are over ``P + M`` tokens.
    """

    def __init__(self, config: ExpeditedDinov2Config | ExpeditedDinov2WithRegistersConfig):
        super().__init__(config)
        self.hidden_states_tap = HiddenStatesTap()
        self.install_capture_hooks()

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        expedite_grid: tuple[int, int] | None = None,
        expedite_wanted: Collection[int] | None = None,
        **kwargs,
    ) -> BaseModelOutput:
        return _run_encoder(self, hidden_states, attention_mask, expedite_grid, expedite_wanted, kwargs)


class ExpeditedDinov2Encoder(_ExpeditedEncoderMixin, Dinov2Encoder):
    """``Dinov2Encoder`` running the expedited layer loop (see :class:`_ExpeditedEncoderMixin`)."""

    config_class = ExpeditedDinov2Config
    _can_record_outputs = {"hidden_states": HIDDEN_STATES_RECORDER, "attentions": Dinov2Attention}


class ExpeditedDinov2WithRegistersEncoder(_ExpeditedEncoderMixin, Dinov2WithRegistersEncoder):
    """``Dinov2WithRegistersEncoder`` running the expedited layer loop (see :class:`_ExpeditedEncoderMixin`)."""

    config_class = ExpeditedDinov2WithRegistersConfig
    _can_record_outputs = {"hidden_states": HIDDEN_STATES_RECORDER, "attentions": Dinov2WithRegistersAttention}


def _expedite_kwargs(
    backbone: Dinov2Backbone | Dinov2WithRegistersBackbone, pixel_values: torch.Tensor, kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The backbone's forward kwargs plus the token grid and the hidden states to reconstruct for its encoder."""
    kwargs = dict(kwargs)
    consumed = {backbone.stage_names.index(stage) for stage in backbone.out_features}
    kwargs["expedite_wanted"] = wanted_hidden_states(backbone, kwargs, consumed)
    if backbone.config.expedite:
        kwargs["expedite_grid"] = expedited_token_grid(pixel_values, backbone.config.patch_size)
    return kwargs


def wanted_hidden_states(model: nn.Module, kwargs: dict[str, Any], consumed: Collection[int]) -> set[int] | None:
    """The hidden states to reconstruct (``None``: all): those the caller reads (a head's
    ``READ_HIDDEN_STATES_KWARG``, popped from ``kwargs``, else ``output_hidden_states``) and the ``consumed`` ones
    the model itself turns into outputs."""
    read = kwargs.pop(READ_HIDDEN_STATES_KWARG, None)
    if read is None:
        asked = kwargs.get("output_hidden_states", model.config.output_hidden_states)
        read = requested_hidden_states(model, asked, model.config.num_hidden_layers)
    return None if read is None else set(read) | set(consumed)


class _ExpeditedBackboneMixin:
    """A DINOv2 backbone whose encoder (``encoder_class``) clusters patch tokens; outputs keep vanilla shapes."""

    encoder_class: type[nn.Module]

    def __init__(self, config: ExpeditedDinov2Config | ExpeditedDinov2WithRegistersConfig):
        super().__init__(config)
        self.encoder = self.encoder_class(config)
        self.post_init()

    @takes_transformers_kwargs
    def forward(
        self, pixel_values: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs
    ) -> BackboneOutput:
        if self.config.expedite and attention_mask is not None:
            raise ValueError(
                "An `attention_mask` over the patch tokens cannot be combined with token clustering (the tokens it "
                "masks no longer exist after clustering). Pass no mask, or use expedite=False."
            )
        return super().forward(pixel_values, attention_mask, **_expedite_kwargs(self, pixel_values, kwargs))


class ExpeditedDinov2Backbone(StrictLoadingMixin, _ExpeditedBackboneMixin, Dinov2Backbone):
    """``Dinov2Backbone`` whose encoder clusters patch tokens; feature maps and hidden states keep vanilla shapes."""

    config_class = ExpeditedDinov2Config
    encoder_class = ExpeditedDinov2Encoder


class ExpeditedDinov2WithRegistersBackbone(StrictLoadingMixin, _ExpeditedBackboneMixin, Dinov2WithRegistersBackbone):
    """``Dinov2WithRegistersBackbone`` whose encoder clusters patch tokens (CLS and registers carried through)."""

    config_class = ExpeditedDinov2WithRegistersConfig
    encoder_class = ExpeditedDinov2WithRegistersEncoder


mirror_conversion_mapping("ExpeditedDinov2Backbone", "Dinov2Backbone")
mirror_conversion_mapping("ExpeditedDinov2WithRegistersBackbone", "Dinov2WithRegistersBackbone")
register_config(ExpeditedDinov2Config)
register_config(ExpeditedDinov2WithRegistersConfig)
register_model(AutoBackbone, ExpeditedDinov2Config, ExpeditedDinov2Backbone)
register_model(AutoBackbone, ExpeditedDinov2WithRegistersConfig, ExpeditedDinov2WithRegistersBackbone)
