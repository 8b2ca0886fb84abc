# Copyright 2026 The hf_expedite authors. Licensed under the Apache License, Version 2.0 (see pyproject.toml).
"""Expedited UperNet: ``UperNetForSemanticSegmentation`` on an :class:`ExpeditedSwinBackbone`.

UperNet builds its backbone from ``config.backbone_config`` (``load_backbone`` -> ``AutoBackbone``) and reads only its
feature maps, which the expedited Swin backbone returns at the vanilla shapes. So the whole expedited model is the
vanilla one with an expedited Swin backbone config, as for Mask2Former: the settings live on
``config.backbone_config``, setting kwargs given to the UperNet config are forwarded there, the weights keep the hub
layout (``openmmlab/upernet-swin-*``) and a saved config says ``expedited_upernet`` with an ``expedited_swin``
backbone. UperNet checkpoints with another backbone (ConvNeXt) have no tokens to cluster and raise a ``ValueError``.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, AutoModelForSemanticSegmentation, UperNetConfig, UperNetForSemanticSegmentation

from ..compat import SubConfigSpec
from ..loading import StrictLoadingMixin
from ..registry import mirror_conversion_mapping, register_config, register_model
from ..settings import convert_config
from .swin import ExpeditedSwinConfig, SwinBackboneSettings


@strict
class ExpeditedUperNetConfig(SwinBackboneSettings, UperNetConfig):
    """``UperNetConfig`` whose Swin ``backbone_config`` is an :class:`ExpeditedSwinConfig`, holding the settings."""

    model_type = "expedited_upernet"
    sub_configs_defaults = {
        "backbone_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type=ExpeditedSwinConfig.model_type,
            init_kwargs={"out_features": ["stage1", "stage2", "stage3", "stage4"]},
        ),
    }


def expedite_upernet_config(config: UperNetConfig, **settings) -> ExpeditedUperNetConfig:
    """The expedited version of a UperNet config (vanilla or already expedited): its Swin backbone config swapped for
    an :class:`ExpeditedSwinConfig` with ``settings`` applied. Other backbones raise a ``ValueError``."""
    return convert_config(ExpeditedUperNetConfig, config, UperNetConfig, **settings)


class ExpeditedUperNetForSemanticSegmentation(StrictLoadingMixin, UperNetForSemanticSegmentation):
    """``UperNetForSemanticSegmentation`` whose backbone is an :class:`ExpeditedSwinBackbone` (same weight names).

    The logits have the vanilla shape, so ``post_process_semantic_segmentation`` and the ``image-segmentation``
    pipeline work unchanged.
    """

    config_class = ExpeditedUperNetConfig


# UperNet has no weight-name conversion of its own in transformers 5.24 (its Swin backbone's are mirrored in
# hf_expedite.models.swin); these follow transformers if it adds one, keyed like vanilla.
mirror_conversion_mapping(ExpeditedUperNetConfig.model_type, "upernet")
mirror_conversion_mapping("ExpeditedUperNetForSemanticSegmentation", "UperNetForSemanticSegmentation")
register_config(ExpeditedUperNetConfig)
register_model(AutoModelForSemanticSegmentation, ExpeditedUperNetConfig, ExpeditedUperNetForSemanticSegmentation)
