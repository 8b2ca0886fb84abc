# Copyright 2026 The hf_expedite authors. Licensed under the Apache License, Version 2.0 (see pyproject.toml).
"""Expedited DPT: depth estimation and semantic segmentation on all three transformers DPT code paths.

* DPT-Large style (plain ViT encoder) and DPT-Hybrid (BiT stages, untouched, then a ViT encoder):
  :class:`ExpeditedDPTModel` runs the ViT blocks through the shared expedited layer loop. Every hidden state the neck
  reads (``backbone_out_indices``; for the hybrid only its ViT indices) that comes after clustering is reconstructed
  to ``1 + N`` tokens with the weights computed at the clustering point; states nobody reads stay reduced.
* DPT with a DINOv2 ``backbone_config`` (e.g. ``facebook/dpt-dinov2-small-nyu``): the backbone config becomes an
  expedited DINOv2 config and ``load_backbone`` builds the expedited DINOv2 backbone (``models/dinov2.py``).
* Depth Anything (V1/V2): the same expedited DINOv2 backbone under the vanilla head (``models/depth_anything.py``).

Input sizes: the expedited depth model accepts every input whose sides are multiples of the patch size on every path
(it passes the token grid to the neck), where transformers' DPT-Large/Hybrid path only takes square inputs and the
hybrid only its ``image_size``; the official NYUv2 (480x640) and KITTI (352x1216) settings need that. For inputs the
vanilla model accepts, ``expedite=False`` is bit-identical to it. The segmentation model keeps the vanilla (square)
neck.

``pipeline("depth-estimation")`` and ``pipeline("image-segmentation")`` accept the expedited models silently: their
class-name checks see the names :func:`hf_expedite.registry.register_model` enters.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch
from huggingface_hub.dataclasses import strict
from transformers import (
    AutoModel,
    AutoModelForDepthEstimation,
    AutoModelForSemanticSegmentation,
    DPTConfig,
    DPTForDepthEstimation,
    DPTForSemanticSegmentation,
    DPTModel,
)
from transformers.modeling_outputs import BaseModelOutput, DepthEstimatorOutput, SemanticSegmenterOutput
from transformers.models.dpt.modeling_dpt import (
    BaseModelOutputWithPoolingAndIntermediateActivations,
    DPTSelfAttention,
    DPTViTEncoder,
)

from ..compat import (
    can_return_tuple,
    capture_outputs,
    filter_output_hidden_states,
    merge_with_config_defaults,
    takes_transformers_kwargs,
)
from ..encoder import (
    HIDDEN_STATES_RECORDER,
    EagerCaptureHooksMixin,
    HiddenStatesTap,
    requested_hidden_states,
    run_expedited_layers,
)
from ..loading import StrictLoadingMixin
from ..presets.dpt import encoder_depth
from ..registry import mirror_conversion_mapping, register_config, register_model
from ..settings import ExpediteSettings, expedite_settings, finalize_settings, rebuilt, setting_names
from .dinov2 import (
    EXPEDITED_BACKBONE_CONFIGS,
    READ_HIDDEN_STATES_KWARG,
    expedite_dinov2_config,
    expedited_token_grid,
)
from .swinv2 import ExpeditedSwinv2Config, drop_dpt_reassemble_stage, expedite_swinv2_config, is_swinv2_family
from .vit import token_grid


def uses_backbone_config(config: DPTConfig) -> bool:
    """Whether the DPT config takes its features from ``backbone_config`` (not the ViT encoder, not the hybrid)."""
    return config.backbone_config is not None and not config.is_hybrid


@strict
class ExpeditedDPTConfig(ExpediteSettings, DPTConfig):
    """``DPTConfig`` plus the Expedite settings; loads any DPT ``config.json``.

    ``clustering_location`` counts the ViT blocks (the hybrid's BiT stages are not counted), or the DINOv2 blocks when
    the config has a DINOv2 ``backbone_config``. In that case the settings here rule: they are validated against the
    backbone depth and copied into the backbone config, which becomes an expedited DINOv2 config. Any other
    ``backbone_config`` raises a ``ValueError`` naming the supported ones.
    """

    model_type = "expedited_dpt"

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> ExpeditedDPTConfig:
        """Setting kwargs for a Swinv2 backbone (DPT-SwinV2) go to the backbone config, where they live."""
        backbone = config_dict.get("backbone_config")
        if isinstance(backbone, dict) and backbone.get("model_type") in ("swinv2", ExpeditedSwinv2Config.model_type):
            overrides = {name: kwargs.pop(name) for name in list(kwargs) if name in setting_names(windowed=True)}
            backbone = ExpeditedSwinv2Config.from_dict(backbone, **overrides).to_dict()
            config_dict = {**config_dict, "backbone_config": backbone}
        return super().from_dict(config_dict, **kwargs)

    def __post_init__(self, **kwargs):
        kwargs.pop("model_type", None)  # a hub config says "dpt": it must not shadow ours
        super().__post_init__(**kwargs)
        if uses_backbone_config(self) and is_swinv2_family(self.backbone_config):
            # DPT-SwinV2: windowed clustering inside the backbone; its settings are mirrored here for reading.
            self.backbone_config = expedite_swinv2_config(self.backbone_config)
            for name, value in expedite_settings(self.backbone_config).items():
                if hasattr(ExpediteSettings, name):
                    setattr(self, name, value)
            return
        if uses_backbone_config(self):
            _check_backbone(self.backbone_config)
        finalize_settings(self, "dpt", encoder_depth(self))
        if uses_backbone_config(self):
            self.backbone_config = expedite_dinov2_config(self.backbone_config, **expedite_settings(self))


def _check_backbone(backbone_config: Any) -> None:
    if getattr(backbone_config, "model_type", None) not in EXPEDITED_BACKBONE_CONFIGS:
        raise ValueError(
            f"Expedite does not support DPT with a {backbone_config.model_type!r} backbone; supported: the DPT ViT "
            "encoder (DPT-Large style), the hybrid BiT + ViT encoder (DPT-Hybrid), dinov2 / dinov2_with_registers "
            "backbones (DPT-DINOv2, Depth Anything) and swinv2 backbones (DPT-SwinV2)."
        )


def expedite_dpt_config(config: DPTConfig, **settings: Any) -> ExpeditedDPTConfig:
    """The expedited version of a DPT config (vanilla or already expedited), with ``settings`` applied.

    Args:
        config: a ``DPTConfig`` of any path: plain ViT (``Intel/dpt-large``), hybrid (``Intel/dpt-hybrid-midas``),
            with a DINOv2 ``backbone_config`` (``facebook/dpt-dinov2-small-nyu``) or a Swinv2 one
            (``Intel/dpt-swinv2-tiny-256``; the settings then go to the backbone config), or an
            :class:`ExpeditedDPTConfig`.
        **settings: Expedite settings (``clustering_location``, ``num_clusters``, ...); unset ones keep the config's
            value or come from the ``dpt`` default preset (presets: ``hf_expedite.get_preset("dpt", name)``).

    Returns:
        An :class:`ExpeditedDPTConfig` (top-level swap: ``AutoModelForDepthEstimation`` /
        ``AutoModelForSemanticSegmentation`` then build the expedited classes). With a DINOv2 backbone its
        ``backbone_config`` is expedited too; a vanilla DPT config whose backbone config is already expedited keeps
        the backbone's settings unless ``settings`` override them.

    Raises:
        ValueError: an unsupported ``backbone_config`` type, or invalid settings (the message names the field).
    """
    if uses_backbone_config(config) and not is_swinv2_family(config.backbone_config):
        _check_backbone(config.backbone_config)
        if not isinstance(config, ExpeditedDPTConfig) and isinstance(config.backbone_config, ExpediteSettings):
            inherited = expedite_settings(config.backbone_config)
            if settings.keys() & {"num_clusters", "cluster_ratio"}:  # one choice: the caller's replaces the saved one
                inherited = {k: v for k, v in inherited.items() if k not in ("num_clusters", "cluster_ratio")}
            settings = {**inherited, **settings}
    return rebuilt(ExpeditedDPTConfig, config, **settings)


def _call_layer(layer: torch.nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    return layer(hidden_states)  # as vanilla: no kwargs (attentions are recorded by hooks all the same)


class ExpeditedDPTViTEncoder(DPTViTEncoder):
    """``DPTViTEncoder`` running the expedited layer loop; every state goes through a tap at full resolution if read."""

    def __init__(self, config: ExpeditedDPTConfig):
        super().__init__(config)
        self.hidden_states_tap = HiddenStatesTap()

    def forward(
        self, hidden_states: torch.Tensor, grid: tuple[int, int] | None, wanted: Collection[int] | None
    ) -> BaseModelOutput:
        hidden_states = run_expedited_layers(
            self.layer, hidden_states, _call_layer, self.config, grid, self.hidden_states_tap, wanted
        )
        return BaseModelOutput(last_hidden_state=hidden_states)


class ExpeditedDPTModel(EagerCaptureHooksMixin, StrictLoadingMixin, DPTModel):
    """``DPTModel`` (ViT or hybrid embeddings) whose encoder clusters patch tokens after ``clustering_location`` blocks.

    ``last_hidden_state`` and every returned hidden state keep the vanilla ``(B, 1 + N, C)`` shape. Attentions
    recorded after clustering are over ``1 + M`` tokens. The hybrid accepts any input whose sides are multiples of
    the patch size (vanilla: only ``image_size``).
    """

    config_class = ExpeditedDPTConfig
    _can_record_outputs = {"hidden_states": HIDDEN_STATES_RECORDER, "attentions": DPTSelfAttention}

    def __init__(self, config: ExpeditedDPTConfig, add_pooling_layer: bool = True):
        super().__init__(config, add_pooling_layer=add_pooling_layer)
        self.encoder = ExpeditedDPTViTEncoder(config)
        self.post_init()
        self.install_capture_hooks()

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    @takes_transformers_kwargs
    def forward(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPoolingAndIntermediateActivations:
        wanted = kwargs.pop(READ_HIDDEN_STATES_KWARG, None)
        if wanted is None:
            asked = kwargs.get("output_hidden_states", self.config.output_hidden_states)
            wanted = requested_hidden_states(self, asked, self.config.num_hidden_layers)
        grid = expedited_token_grid(pixel_values, self.config.patch_size) if self.config.expedite else None
        if self.config.is_hybrid:  # the BiT features must tile exactly into the resized position embeddings
            patch_size = self.embeddings.patch_size
            if pixel_values.shape[-2] % patch_size or pixel_values.shape[-1] % patch_size:
                raise ValueError(
                    f"DPT-Hybrid needs input sides that are multiples of its patch size {patch_size}, got "
                    f"{tuple(pixel_values.shape[-2:])}."
                )
            embedding_output = self.embeddings(pixel_values, interpolate_pos_encoding=True)
        else:
            embedding_output = self.embeddings(pixel_values)
        hidden_states = self.encoder(embedding_output.last_hidden_states, grid, wanted).last_hidden_state
        sequence_output = self.layernorm(hidden_states)
        return BaseModelOutputWithPoolingAndIntermediateActivations(
            last_hidden_state=sequence_output,
            pooler_output=self.pooler(sequence_output) if self.pooler is not None else None,
            intermediate_activations=embedding_output.intermediate_activations,
        )


def _neck_indices(config: DPTConfig) -> list[int]:
    """The ViT block indices whose outputs the neck reads (the hybrid's first two features are BiT stages)."""
    return list(config.backbone_out_indices[2:] if config.is_hybrid else config.backbone_out_indices)


def _with_read_hidden_states(model: DPTForDepthEstimation | DPTForSemanticSegmentation, kwargs: dict) -> dict:
    """``kwargs`` plus the private list of hidden states somebody reads: the caller's request and the neck's inputs.

    The heads' ``filter_output_hidden_states`` makes the encoder record every hidden state; without this list every
    reduced one would be reconstructed. A caller asking for all hidden states gets all of them reconstructed.
    """
    backbone = getattr(model, "backbone", None)
    depth = backbone.config.num_hidden_layers if backbone is not None else model.config.num_hidden_layers
    asked = kwargs.get("output_hidden_states", model.config.output_hidden_states)
    read = requested_hidden_states(model, asked, depth)
    if read is None:
        return kwargs
    if backbone is None:  # a DINOv2 backbone adds the hidden states it turns into feature maps itself
        read = read | {index + 1 for index in _neck_indices(model.config)}
    return {**kwargs, READ_HIDDEN_STATES_KWARG: read}


def _check_segmentation_config(config: ExpeditedDPTConfig) -> None:
    if uses_backbone_config(config):
        raise ValueError(
            "DPTForSemanticSegmentation has no backbone_config path in transformers (it always builds the ViT "
            "encoder); expedited segmentation supports the DPT-Large style and hybrid configs."
        )


class ExpeditedDPTForDepthEstimation(StrictLoadingMixin, DPTForDepthEstimation):
    """``DPTForDepthEstimation`` on an expedited encoder (ViT / hybrid) or an expedited DINOv2 backbone; same weights.

    ``predicted_depth`` has the vanilla shape. Inputs of any size with sides multiple of the patch size work on every
    path (the token grid is passed to the neck).
    """

    config_class = ExpeditedDPTConfig

    def __init__(self, config: ExpeditedDPTConfig):
        super().__init__(config)
        if self.backbone is None:
            self.dpt = ExpeditedDPTModel(config, add_pooling_layer=False)
        drop_dpt_reassemble_stage(self)
        self.post_init()

    @takes_transformers_kwargs
    def forward(
        self, pixel_values: torch.Tensor, labels: torch.LongTensor | None = None, **kwargs
    ) -> DepthEstimatorOutput:
        if labels is not None:
            raise NotImplementedError("Training is not implemented yet")
        return self._estimate_depth(pixel_values, **_with_read_hidden_states(self, kwargs))

    @can_return_tuple
    @filter_output_hidden_states
    def _estimate_depth(self, pixel_values: torch.Tensor, **kwargs) -> DepthEstimatorOutput:
        if self.backbone is not None:
            outputs = self.backbone.forward_with_filtered_kwargs(pixel_values, **kwargs)
            features = list(outputs.feature_maps)
            patch_size = self.config.backbone_config.patch_size
        else:
            outputs = self.dpt(pixel_values, **kwargs)
            indices = _neck_indices(self.config)
            features = [state for index, state in enumerate(outputs.hidden_states[1:]) if index in indices]
            if self.config.is_hybrid:
                features = [*outputs.intermediate_activations, *features]
            patch_size = self.config.patch_size
        hidden_states = self.neck(features, *token_grid(pixel_values, patch_size))
        return DepthEstimatorOutput(
            predicted_depth=self.head(hidden_states),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


class ExpeditedDPTForSemanticSegmentation(StrictLoadingMixin, DPTForSemanticSegmentation):
    """``DPTForSemanticSegmentation`` on an :class:`ExpeditedDPTModel` (same weight names; square inputs as vanilla)."""

    config_class = ExpeditedDPTConfig

    def __init__(self, config: ExpeditedDPTConfig):
        _check_segmentation_config(config)
        super().__init__(config)
        self.dpt = ExpeditedDPTModel(config, add_pooling_layer=False)
        self.post_init()

    @takes_transformers_kwargs
    def forward(
        self, pixel_values: torch.Tensor | None = None, labels: torch.LongTensor | None = None, **kwargs
    ) -> SemanticSegmenterOutput:
        return super().forward(pixel_values, labels=labels, **_with_read_hidden_states(self, kwargs))


# transformers 5.24 renames no DPT weights (legacy names), so these mirror nothing until a version does.
mirror_conversion_mapping("ExpeditedDPTModel", "DPTModel")
mirror_conversion_mapping("ExpeditedDPTForDepthEstimation", "DPTForDepthEstimation")
mirror_conversion_mapping("ExpeditedDPTForSemanticSegmentation", "DPTForSemanticSegmentation")
mirror_conversion_mapping(ExpeditedDPTConfig.model_type, DPTConfig.model_type)
register_config(ExpeditedDPTConfig)
register_model(AutoModel, ExpeditedDPTConfig, ExpeditedDPTModel)
register_model(AutoModelForDepthEstimation, ExpeditedDPTConfig, ExpeditedDPTForDepthEstimation)
register_model(AutoModelForSemanticSegmentation, ExpeditedDPTConfig, ExpeditedDPTForSemanticSegmentation)
