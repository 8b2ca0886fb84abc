# Copyright 2026 The hf_expedite authors. Licensed under the Apache License, Version 2.0 (see pyproject.toml).
"""Expedited subclasses of transformers models, one module per architecture.

Importing a module registers its classes with transformers (Auto classes, weight-name conversions).
"""

from .vit import ExpeditedViTConfig, ExpeditedViTForImageClassification, ExpeditedViTModel
from .dpt import ExpeditedDPTConfig, ExpeditedDPTForDepthEstimation, ExpeditedDPTForSemanticSegmentation
from .dpt import ExpeditedDPTModel
from .dinov2 import ExpeditedDinov2Backbone, ExpeditedDinov2Config
from .dinov2 import ExpeditedDinov2WithRegistersBackbone, ExpeditedDinov2WithRegistersConfig
from .dinov3 import ExpeditedDINOv3ViTBackbone, ExpeditedDINOv3ViTConfig, ExpeditedDINOv3ViTModel
from .swin import ExpeditedSwinBackbone, ExpeditedSwinConfig
from .swinv2 import ExpeditedSwinv2Backbone, ExpeditedSwinv2Config, ExpeditedSwinv2Model
from .depth_anything import ExpeditedDepthAnythingConfig, ExpeditedDepthAnythingForDepthEstimation
from .mask2former import ExpeditedMask2FormerConfig, ExpeditedMask2FormerForUniversalSegmentation
from .eomt import ExpeditedEomtConfig, ExpeditedEomtForUniversalSegmentation
from .eomt import ExpeditedEomtDinov3Config, ExpeditedEomtDinov3ForUniversalSegmentation
from .sam import ExpeditedSamConfig, ExpeditedSamModel, ExpeditedSamVisionConfig, ExpeditedSamVisionModel
from .sam import ExpeditedSamHQConfig, ExpeditedSamHQModel, ExpeditedSamHQVisionConfig, ExpeditedSamHQVisionModel
from .upernet import ExpeditedUperNetConfig, ExpeditedUperNetForSemanticSegmentation

__all__ = [
    "ExpeditedViTConfig",
    "ExpeditedViTForImageClassification",
    "ExpeditedViTModel",
    "ExpeditedDPTConfig",
    "ExpeditedDPTForDepthEstimation",
    "ExpeditedDPTForSemanticSegmentation",
    "ExpeditedDPTModel",
    "ExpeditedDepthAnythingConfig",
    "ExpeditedDepthAnythingForDepthEstimation",
    "ExpeditedDinov2Backbone",
    "ExpeditedDinov2Config",
    "ExpeditedDinov2WithRegistersBackbone",
    "ExpeditedDinov2WithRegistersConfig",
    "ExpeditedDINOv3ViTBackbone",
    "ExpeditedDINOv3ViTConfig",
    "ExpeditedDINOv3ViTModel",
    "ExpeditedSwinBackbone",
    "ExpeditedSwinConfig",
    "ExpeditedSwinv2Backbone",
    "ExpeditedSwinv2Config",
    "ExpeditedSwinv2Model",
    "ExpeditedMask2FormerConfig",
    "ExpeditedMask2FormerForUniversalSegmentation",
    "ExpeditedEomtConfig",
    "ExpeditedEomtForUniversalSegmentation",
    "ExpeditedEomtDinov3Config",
    "ExpeditedEomtDinov3ForUniversalSegmentation",
    "ExpeditedSamConfig",
    "ExpeditedSamModel",
    "ExpeditedSamVisionConfig",
    "ExpeditedSamVisionModel",
    "ExpeditedSamHQConfig",
    "ExpeditedSamHQModel",
    "ExpeditedSamHQVisionConfig",
    "ExpeditedSamHQVisionModel",
    "ExpeditedUperNetConfig",
    "ExpeditedUperNetForSemanticSegmentation",
]
