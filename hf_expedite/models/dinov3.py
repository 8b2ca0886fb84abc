# Copyright 2026 The hf_expedite authors. Licensed under the Apache License, Version 2.0 (see pyproject.toml).
"""Expedited DINOv3 ViT: ``DINOv3ViTModel`` (``AutoModel``) and ``DINOv3ViTBackbone`` (``AutoBackbone``).

DINOv3 encodes positions with rotary embeddings (RoPE) of each patch centre, applied to the patch tokens only (the
CLS and register tokens are carried through untouched). After clustering, the ``M`` cluster tokens get the RoPE of
their cells' centres: cluster ``(i, j)`` starts as the mean of the tokens of its adaptive-pooling cell (rows
``floor(i H / h) .. ceil((i + 1) H / h)``, columns alike), so it sits at the mean of their centres, in the same
``[-1, 1]`` coordinates the model uses (a cell grid equal to the token grid gives the vanilla positions exactly).
The reduced positions are computed once per forward, from the positions' un-augmented coordinates (in training,
the parent's random shift / jitter / rescale only reaches the full-resolution blocks).

Clustering happens inside the encoder; every hidden state the backbone turns into a feature map or returns to a
caller is reconstructed to the full ``P + N`` tokens with the weights computed at the clustering point.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

import torch
from huggingface_hub.dataclasses import strict
from transformers import AutoBackbone, AutoModel, DINOv3ViTBackbone, DINOv3ViTConfig, DINOv3ViTModel
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.dinov3_vit.modeling_dinov3_vit import (
    DINOv3ViTAttention,
    DINOv3ViTEncoder,
    DINOv3ViTRopePositionEmbedding,
)

from ..compat import capture_outputs, merge_with_config_defaults, takes_transformers_kwargs
from ..encoder import (
    HIDDEN_STATES_RECORDER,
    EagerCaptureHooksMixin,
    HiddenStatesTap,
    run_expedited_layers,
)
from ..loading import StrictLoadingMixin
from ..registry import mirror_conversion_mapping, register_config, register_model
from ..settings import ExpediteSettings, cluster_grid, convert_config, finalize_settings
from .dinov2 import expedited_token_grid, wanted_hidden_states

RotaryEmbeddings = tuple[torch.Tensor, torch.Tensor]


@strict
class ExpeditedDINOv3ViTConfig(ExpediteSettings, DINOv3ViTConfig):
    """``DINOv3ViTConfig`` plus the Expedite settings (``clustering_location`` counts the DINOv3 blocks)."""

    model_type = "expedited_dinov3_vit"

    def __post_init__(self, **kwargs):
        kwargs.pop("model_type", None)  # a hub config says "dinov3_vit": it must not shadow ours
        super().__post_init__(**kwargs)
        finalize_settings(self, "dinov3_vit", self.num_hidden_layers)


def expedite_dinov3_vit_config(config: DINOv3ViTConfig, **settings: Any) -> ExpeditedDINOv3ViTConfig:
    """The expedited version of a DINOv3 ViT config (vanilla or already expedited), with ``settings`` applied."""
    return convert_config(ExpeditedDINOv3ViTConfig, config, DINOv3ViTConfig, **settings)


def cell_centres(tokens: int, cells: int) -> list[float]:
    """Mean patch-centre position (in patches, centres at ``j + 0.5``) of each adaptive-pooling cell along one axis:
    cell ``i`` covers patches ``floor(i * tokens / cells) .. ceil((i + 1) * tokens / cells) - 1``."""
    return [((i * tokens) // cells + -(-(i + 1) * tokens // cells)) / 2 for i in range(cells)]


def cluster_rotary_embeddings(
    rope: DINOv3ViTRopePositionEmbedding,
    grid: tuple[int, int],
    clusters: tuple[int, int],
    dtype: torch.dtype,
    device: torch.device,
) -> RotaryEmbeddings:
    """``(cos, sin)`` of shape ``(h * w, head_dim)`` for the cluster tokens: the model's RoPE at the cell centres."""
    rows = torch.tensor(cell_centres(grid[0], clusters[0]), dtype=torch.float32, device=device) / grid[0]
    cols = torch.tensor(cell_centres(grid[1], clusters[1]), dtype=torch.float32, device=device) / grid[1]
    coords = 2.0 * torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).flatten(0, 1) - 1.0
    angles = (2 * math.pi * coords[:, :, None] * rope.inv_freq.to(device)[None, None, :]).flatten(1, 2).tile(2)
    return torch.cos(angles).to(dtype), torch.sin(angles).to(dtype)


class ExpeditedDINOv3ViTEncoder(EagerCaptureHooksMixin, DINOv3ViTEncoder):
    """``DINOv3ViTEncoder`` running the expedited layer loop; hidden states are recorded full resolution from a tap.

    ``expedite_grid`` (the patch-token grid), ``expedite_cluster_positions`` (the cluster tokens' RoPE) and
    ``expedite_wanted`` (hidden-state indices to reconstruct, ``None`` = all) come from the model. Attentions recorded
    after clustering are over ``P + M`` tokens.
    """

    config_class = ExpeditedDINOv3ViTConfig
    _can_record_outputs = {"hidden_states": HIDDEN_STATES_RECORDER, "attentions": DINOv3ViTAttention}

    def __init__(self, config: ExpeditedDINOv3ViTConfig):
        super().__init__(config)
        self.hidden_states_tap = HiddenStatesTap()
        self.install_capture_hooks()

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: RotaryEmbeddings | None = None,
        expedite_grid: tuple[int, int] | None = None,
        expedite_cluster_positions: RotaryEmbeddings | None = None,
        expedite_wanted: Collection[int] | None = None,
        **kwargs,
    ) -> BaseModelOutput:
        config = self.config
        if config.expedite and (expedite_grid is None or expedite_cluster_positions is None):
            raise ValueError("The expedited DINOv3 encoder needs the token grid and the cluster positions; run it "
                             "through ExpeditedDINOv3ViTModel or ExpeditedDINOv3ViTBackbone.")  # fmt: skip
        full_length = hidden_states.shape[1]

        def call_layer(layer: torch.nn.Module, states: torch.Tensor) -> torch.Tensor:
            positions = position_embeddings if states.shape[1] == full_length else expedite_cluster_positions
            return layer(states, position_embeddings=positions, **kwargs)

        prefix = 1 + config.num_register_tokens
        hidden_states = run_expedited_layers(
            self.layer, hidden_states, call_layer, config, expedite_grid, self.hidden_states_tap, expedite_wanted,
            num_prefix_tokens=prefix,
        )  # fmt: skip
        return BaseModelOutput(last_hidden_state=hidden_states)


class _ExpeditedDINOv3Mixin:
    """A DINOv3 model or backbone whose encoder (``self.model``) clusters patch tokens; outputs keep vanilla shapes."""

    def __init__(self, config: ExpeditedDINOv3ViTConfig):
        super().__init__(config)
        self.model = ExpeditedDINOv3ViTEncoder(config)
        self.post_init()

    def _expedite_kwargs(self, pixel_values: torch.Tensor, kwargs: dict[str, Any], consumed: set[int]) -> dict:
        """The forward kwargs plus what the encoder needs: the token grid, the cluster positions, the states read."""
        kwargs = dict(kwargs)
        kwargs["expedite_wanted"] = wanted_hidden_states(self, kwargs, consumed)
        if self.config.expedite:
            grid = expedited_token_grid(pixel_values, self.config.patch_size)
            dtype = self.embeddings.patch_embeddings.weight.dtype  # the parent casts the pixels (and RoPE) to it
            clusters = cluster_grid(self.config, grid)
            kwargs["expedite_grid"] = grid
            kwargs["expedite_cluster_positions"] = cluster_rotary_embeddings(
                self.rope_embeddings, grid, clusters, dtype, pixel_values.device
            )
        return kwargs


class ExpeditedDINOv3ViTModel(StrictLoadingMixin, _ExpeditedDINOv3Mixin, DINOv3ViTModel):
    """``DINOv3ViTModel`` whose encoder clusters patch tokens; ``last_hidden_state`` and hidden states keep vanilla
    shapes, the pooled output is the CLS token (never clustered)."""

    config_class = ExpeditedDINOv3ViTConfig

    @takes_transformers_kwargs
    def forward(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None = None, **kwargs):
        return super().forward(pixel_values, bool_masked_pos, **self._expedite_kwargs(pixel_values, kwargs, set()))


class ExpeditedDINOv3ViTBackbone(StrictLoadingMixin, _ExpeditedDINOv3Mixin, DINOv3ViTBackbone):
    """``DINOv3ViTBackbone`` whose encoder clusters patch tokens; feature maps and hidden states keep vanilla shapes."""

    config_class = ExpeditedDINOv3ViTConfig

    @takes_transformers_kwargs
    def forward(self, pixel_values: torch.Tensor, **kwargs):
        # The parent reads every stage's hidden state (the last is normalised into `last_hidden_state`).
        consumed = {self.stage_names.index(stage) for stage in self.out_features} | {len(self.stage_names) - 1}
        return super().forward(pixel_values, **self._expedite_kwargs(pixel_values, kwargs, consumed))


mirror_conversion_mapping(ExpeditedDINOv3ViTConfig.model_type, "dinov3_vit")
mirror_conversion_mapping("ExpeditedDINOv3ViTModel", "DINOv3ViTModel")
mirror_conversion_mapping("ExpeditedDINOv3ViTBackbone", "DINOv3ViTBackbone")
register_config(ExpeditedDINOv3ViTConfig)
register_model(AutoModel, ExpeditedDINOv3ViTConfig, ExpeditedDINOv3ViTModel)
register_model(AutoBackbone, ExpeditedDINOv3ViTConfig, ExpeditedDINOv3ViTBackbone)
