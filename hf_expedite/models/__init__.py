"""Expedited subclasses of transformers models, one module per architecture.

Importing a module registers its classes with transformers (Auto classes, weight-name conversions).
"""

from .vit import ExpeditedViTConfig, ExpeditedViTForImageClassification, ExpeditedViTModel
from .dpt import ExpeditedDPTConfig, ExpeditedDPTForDepthEstimation, ExpeditedDPTForSemanticSegmentation
from .dpt import ExpeditedDPTModel
from .dinov2 import ExpeditedDinov2Backbone, ExpeditedDinov2Config
from .dinov2 import ExpeditedDinov2WithRegistersBackbone, ExpeditedDinov2WithRegistersConfig

__all__ = [
    "ExpeditedViTConfig",
    "ExpeditedViTForImageClassification",
    "ExpeditedViTModel",
    *["ExpeditedDPTConfig", "ExpeditedDPTForDepthEstimation", "ExpeditedDPTForSemanticSegmentation"],
    *["ExpeditedDPTModel", "ExpeditedDinov2Backbone", "ExpeditedDinov2Config"],
    *["ExpeditedDinov2WithRegistersBackbone", "ExpeditedDinov2WithRegistersConfig"],
]
