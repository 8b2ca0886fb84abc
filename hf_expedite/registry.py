"""Registration of the expedited classes with transformers: weight-name conversions and the Auto classes.

transformers 5 renames checkpoint weights at load time with mappings keyed on the class name (``"ViTModel"``) or the
``model_type`` (``"swin"``), and skips classes defined outside transformers unless they are registered. An expedited
subclass must therefore mirror its parent's mapping under its own key, or the hub weights are silently left random.
Everything here is idempotent, so importing the package twice is harmless.
"""

from __future__ import annotations

from transformers import AutoConfig, PretrainedConfig

from .compat import (
    USER_REGISTERED_MAPPINGS,
    auto_class_names,
    get_checkpoint_conversion_mapping,
    register_checkpoint_conversion_mapping,
)


def mirror_conversion_mapping(expedited_key: str, vanilla_key: str) -> None:
    """Register the weight renames transformers applies for ``vanilla_key`` under ``expedited_key`` too.

    Keys are class names or model types, whichever the vanilla mapping is keyed on. A vanilla key without a mapping
    (legacy weight names) needs nothing.
    """
    if expedited_key in USER_REGISTERED_MAPPINGS:
        return
    mapping = get_checkpoint_conversion_mapping(vanilla_key)
    if mapping is not None:
        register_checkpoint_conversion_mapping(expedited_key, mapping, overwrite=True)


def register_config(config_class: type[PretrainedConfig]) -> None:
    """Make ``AutoConfig`` (and nested ``backbone_config`` dicts) resolve the config's ``model_type``."""
    AutoConfig.register(config_class.model_type, config_class, exist_ok=True)


def register_model(auto_class: type, config_class: type[PretrainedConfig], model_class: type) -> None:
    """Map ``config_class`` to ``model_class`` in a transformers Auto class (e.g. ``AutoModel``).

    The class name is also entered in the Auto class's name table (``MODEL_MAPPING_NAMES`` for ``AutoModel``), which
    transformers consults by name: pipelines then accept the model without an "is not supported" error, and code that
    asks whether a class is a base model or a backbone (the Trainer, transformers' model tests) gets the parent's
    answer. The table's entry is never imported from (only ``CONFIG_MAPPING_NAMES`` types are), so it is inert
    otherwise.
    """
    auto_class.register(config_class, model_class, exist_ok=True)
    auto_class_names(auto_class)[config_class.model_type] = model_class.__name__
