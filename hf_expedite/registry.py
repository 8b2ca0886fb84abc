"""Registration of the expedited classes with transformers: weight-name conversions and the Auto classes.

transformers 5 renames checkpoint weights at load time with mappings keyed on the class name (``"ViTModel"``) or the
``model_type`` (``"swin"``), and skips classes defined outside transformers unless they are registered. An expedited
subclass must therefore mirror its parent's mapping under its own key, or the hub weights are silently left random.
Everything here is idempotent, so importing the package twice is harmless.
"""

from __future__ import annotations

from transformers import AutoConfig, PretrainedConfig

from .compat import USER_REGISTERED_MAPPINGS, get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping


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
    """Map ``config_class`` to ``model_class`` in a transformers Auto class (e.g. ``AutoModel``)."""
    auto_class.register(config_class, model_class, exist_ok=True)
