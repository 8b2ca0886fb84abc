"""Expedited subclasses of transformers models, one module per architecture.

Importing a module registers its classes with transformers (Auto classes, weight-name conversions).
"""

from .vit import ExpeditedViTConfig, ExpeditedViTForImageClassification, ExpeditedViTModel

__all__ = [
    "ExpeditedViTConfig",
    "ExpeditedViTForImageClassification",
    "ExpeditedViTModel",
]
