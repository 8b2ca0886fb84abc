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
from ..settings import convert_config
from .swin import ExpeditedSwinConfig, SwinBackboneSettings


@strict
class ExpeditedMask2FormerConfig(SwinBackboneSettings, Mask2FormerConfig):
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
