"""Expedited Mask2Former: ``Mask2FormerForUniversalSegmentation`` on an :class:`ExpeditedSwinBackbone`.

Mask2Former builds its backbone from ``config.backbone_config`` (``load_backbone`` -> ``AutoBackbone``), so the whole
expedited model is the vanilla one with an expedited Swin backbone config. :class:`ExpeditedMask2FormerConfig` is a
``Mask2FormerConfig`` whose ``backbone_config`` is always an :class:`ExpeditedSwinConfig`: the Expedite settings live
on the backbone config (``config.backbone_config.clustering_location``, ...). Setting kwargs given to the Mask2Former
config (``ExpeditedMask2FormerConfig(clustering_location=10)``, ``from_pretrained(repo, expedite=False)``) are
forwarded to its backbone config. Saved configs say ``expedited_mask2former`` with an ``expedited_swin`` backbone and
reload after ``import hf_expedite``; the weights keep the hub layout.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import (
    AutoConfig,
    AutoModelForUniversalSegmentation,
    Mask2FormerConfig,
    Mask2FormerForUniversalSegmentation,
)

from ..compat import SubConfigSpec
from ..loading import StrictLoadingMixin
from ..registry import mirror_conversion_mapping, register_config, register_model
from ..settings import LoadsVanillaConfigs, convert_config, setting_names
from .swin import ExpeditedSwinConfig, expedite_swin_config

SUPPORTED_BACKBONES = ("swin", ExpeditedSwinConfig.model_type)


@strict
class ExpeditedMask2FormerConfig(LoadsVanillaConfigs, Mask2FormerConfig):
    """``Mask2FormerConfig`` whose Swin ``backbone_config`` is an :class:`ExpeditedSwinConfig`, holding the settings."""

    model_type = "expedited_mask2former"
    backbones_supported = [ExpeditedSwinConfig.model_type]
    sub_configs_defaults = {
        "backbone_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type=ExpeditedSwinConfig.model_type,
            init_kwargs=Mask2FormerConfig.sub_configs_defaults["backbone_config"].init_kwargs,
        ),
    }

    def __post_init__(self, **kwargs):
        kwargs.pop("model_type", None)  # a hub config says "mask2former": it must not shadow ours
        settings = {name: kwargs.pop(name) for name in setting_names() if name in kwargs}
        super().__post_init__(**kwargs)
        backbone = self.backbone_config
        if backbone.model_type not in SUPPORTED_BACKBONES:
            raise ValueError(
                f"Expedite supports Mask2Former with a Swin backbone (model_type {' or '.join(SUPPORTED_BACKBONES)}); "
                f"this config's backbone is {backbone.model_type!r}."
            )
        if settings or not isinstance(backbone, ExpeditedSwinConfig):
            self.backbone_config = expedite_swin_config(backbone, **settings)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> ExpeditedMask2FormerConfig:
        """Route Expedite setting kwargs (``from_pretrained(repo, clustering_location=10)``) to the backbone config."""
        config_dict = {**config_dict, **{name: kwargs.pop(name) for name in setting_names() if name in kwargs}}
        return super().from_dict(config_dict, **kwargs)


def expedite_mask2former_config(config: Mask2FormerConfig, **settings) -> ExpeditedMask2FormerConfig:
    """The expedited version of a Mask2Former config (vanilla or already expedited): its Swin backbone config swapped
    for an :class:`ExpeditedSwinConfig` with ``settings`` applied. Other backbones raise a ``ValueError``."""
    return convert_config(ExpeditedMask2FormerConfig, config, Mask2FormerConfig, **settings)


class ExpeditedMask2FormerForUniversalSegmentation(StrictLoadingMixin, Mask2FormerForUniversalSegmentation):
    """``Mask2FormerForUniversalSegmentation`` whose backbone is an :class:`ExpeditedSwinBackbone` (same weight names).

    Outputs (class and mask logits, encoder/pixel-decoder states) have the vanilla shapes, so the image processor's
    ``post_process_{panoptic,instance,semantic}_segmentation`` and the ``image-segmentation`` pipeline work unchanged.
    """

    config_class = ExpeditedMask2FormerConfig


# Mask2Former has no weight-name conversion of its own in transformers 5.24 (its Swin backbone's are mirrored in
# hf_expedite.models.swin); these follow transformers if it adds one, keyed like vanilla.
mirror_conversion_mapping(ExpeditedMask2FormerConfig.model_type, "mask2former")
mirror_conversion_mapping("ExpeditedMask2FormerForUniversalSegmentation", "Mask2FormerForUniversalSegmentation")
register_config(ExpeditedMask2FormerConfig)
register_model(
    AutoModelForUniversalSegmentation, ExpeditedMask2FormerConfig, ExpeditedMask2FormerForUniversalSegmentation
)
