"""hf_expedite: Expedite (token clustering + reconstruction) for Hugging Face vision transformers.

Importing the package registers every ``expedited_*`` model type with transformers' Auto classes.
"""

from . import compat  # noqa: F401  (first: checks the transformers version)
from .models import *  # noqa: F403
from .models import __all__ as _model_classes
from .ops import TokenReconstruction, cluster_tokens
from .presets import get_preset, list_presets
from .settings import ExpediteSettings, WindowedExpediteSettings, expedite_settings

__version__ = "0.1.0"

__all__ = [
    *_model_classes,
    "ExpediteSettings",
    "TokenReconstruction",
    "WindowedExpediteSettings",
    "cluster_tokens",
    "expedite_settings",
    "get_preset",
    "list_presets",
]

from .auto import (  # noqa: E402
    AutoBackbone,
    AutoModel,
    AutoModelForDepthEstimation,
    AutoModelForImageClassification,
    AutoModelForMaskGeneration,
    AutoModelForSemanticSegmentation,
    AutoModelForUniversalSegmentation,
)
from .calibration import Calibration, calibrate  # noqa: E402
from .conversion import expedite, expedite_config, supported_model_types  # noqa: E402
from .patching import patch_transformers, patched_transformers, unpatch_transformers  # noqa: E402

__all__ += [
    "AutoBackbone",
    "AutoModel",
    "AutoModelForDepthEstimation",
    "AutoModelForImageClassification",
    "AutoModelForMaskGeneration",
    "AutoModelForSemanticSegmentation",
    "AutoModelForUniversalSegmentation",
    "Calibration",
    "calibrate",
    "expedite",
    "expedite_config",
    "patch_transformers",
    "patched_transformers",
    "supported_model_types",
    "unpatch_transformers",
]
