"""From a user's ``expedite=...`` request to an expedited config, and from a loaded vanilla model to its expedited twin.

One table, :data:`CONVERSIONS`, maps every supported ``model_type`` (vanilla and expedited) to the function that builds
the expedited config and to the preset family it uses. Everything else (the shadow Auto classes, the patched
transformers Auto classes, :func:`expedite`, the push script) goes through :func:`parse_request` and
:func:`apply_request`, so an ``expedite=`` value means the same thing everywhere:

- ``False``: the vanilla transformers config (an expedited config is turned back into its vanilla parent);
- ``True``: a vanilla config gets the family's ``default`` preset; an already expedited config keeps its saved settings
  (switched on);
- a preset name: that preset, replacing every saved setting;
- a dict of settings and/or individual setting kwargs: applied over the above (over ``default`` for a vanilla config,
  over the saved settings for an expedited one), kwargs over the dict. Setting kwargs without ``expedite`` imply
  ``expedite=True``.

Every check (names, conflicts, presets, architecture) runs on the config, before any weight is read.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from transformers import PreTrainedConfig, PreTrainedModel

from . import models
from .compat import CONFIG_MAPPING
from .models.dinov2 import expedite_dinov2_config
from .models.dinov3 import expedite_dinov3_vit_config
from .models.depth_anything import expedite_depth_anything_config
from .models.dpt import expedite_dpt_config, uses_backbone_config
from .models.eomt import expedite_eomt_config, expedite_eomt_dinov3_config
from .models.mask2former import expedite_mask2former_config
from .models.sam import (
    expedite_sam_config,
    expedite_sam_hq_config,
    expedite_sam_hq_vision_config,
    expedite_sam_vision_config,
)
from .models.swin import expedite_swin_config
from .models.swinv2 import expedite_swinv2_config, is_swinv2_family
from .models.upernet import expedite_upernet_config
from .models.vit import expedite_vit_config
from .presets import PRESETS, get_preset
from .settings import ExpediteSettings, WindowedExpediteSettings, setting_names

SETTING_NAMES: tuple[str, ...] = setting_names(windowed=True)
"""Every Expedite setting name (``expedite`` itself, the shared ones and the windowed, Swin-only ones)."""

_GRID_CHOICE = ("num_clusters", "cluster_ratio", "clustered_window_size")  # one choice: choosing one drops the others


@dataclass(frozen=True)
class Conversion:
    """How one architecture is expedited: ``convert(config, **settings)`` -> expedited config, and its preset family
    (a name, or a function of the config for architectures whose presets depend on the backbone)."""

    convert: Callable[..., PreTrainedConfig]
    family: str | Callable[[PreTrainedConfig], str]

    def preset_family(self, config: PreTrainedConfig) -> str:
        return self.family(config) if callable(self.family) else self.family


def _is_dpt_swinv2(config: PreTrainedConfig) -> bool:
    return uses_backbone_config(config) and is_swinv2_family(config.backbone_config)


def _dpt_family(config: PreTrainedConfig) -> str:
    """DPT-SwinV2 clusters inside the Swinv2 backbone's windows (Swinv2 presets); every other DPT uses DPT presets."""
    return "swinv2" if _is_dpt_swinv2(config) else "dpt"


def _both(model_type: str, conversion: Conversion) -> dict[str, Conversion]:
    """The entries of a model type whose expedited config has its own type ``expedited_<model_type>``."""
    return {model_type: conversion, f"expedited_{model_type}": conversion}


CONVERSIONS: dict[str, Conversion] = {
    **_both("vit", Conversion(expedite_vit_config, "vit")),
    **_both("dpt", Conversion(expedite_dpt_config, _dpt_family)),  # DPT-Large, -Hybrid, -DINOv2, -SwinV2
    **_both("dinov2", Conversion(expedite_dinov2_config, "dinov2")),  # as a backbone (AutoBackbone)
    **_both("dinov2_with_registers", Conversion(expedite_dinov2_config, "dinov2")),
    **_both("dinov3_vit", Conversion(expedite_dinov3_vit_config, "dinov3_vit")),
    **_both("depth_anything", Conversion(expedite_depth_anything_config, "dinov2")),  # settings on its backbone
    **_both("swin", Conversion(expedite_swin_config, "swin")),  # as a backbone (AutoBackbone)
    **_both("swinv2", Conversion(expedite_swinv2_config, "swinv2")),
    **_both("mask2former", Conversion(expedite_mask2former_config, "mask2former")),  # settings on its Swin backbone
    **_both("eomt", Conversion(expedite_eomt_config, "eomt")),
    **_both("eomt_dinov3", Conversion(expedite_eomt_dinov3_config, "eomt")),
    **_both("sam", Conversion(expedite_sam_config, "sam")),  # settings on its vision config
    "sam_vision_model": Conversion(expedite_sam_vision_config, "sam"),
    "expedited_sam_vision_model": Conversion(expedite_sam_vision_config, "sam"),
    **_both("sam_hq", Conversion(expedite_sam_hq_config, "sam")),
    "sam_hq_vision_model": Conversion(expedite_sam_hq_vision_config, "sam"),
    "expedited_sam_hq_vision_model": Conversion(expedite_sam_hq_vision_config, "sam"),
    **_both("upernet", Conversion(expedite_upernet_config, "upernet")),  # settings on its Swin backbone
}
"""Supported ``model_type`` (vanilla and expedited) -> conversion. The one place an architecture is wired in."""


@dataclass(frozen=True)
class ExpediteRequest:
    """A validated ``expedite=...`` request. ``enabled=False`` asks for the vanilla model; ``preset=None`` with
    ``enabled=True`` means ``default`` for a vanilla config and the saved settings for an expedited one."""

    enabled: bool
    preset: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)


def supported_model_types() -> list[str]:
    """The vanilla ``model_type`` strings that can be expedited."""
    return sorted(name for name in CONVERSIONS if not name.startswith("expedited_"))


def conversion_for(config: PreTrainedConfig) -> Conversion:
    """The conversion of ``config``'s architecture; a ``ValueError`` names the supported ones otherwise."""
    conversion = CONVERSIONS.get(config.model_type)
    if conversion is None:
        raise ValueError(
            f"Expedite does not support model type {config.model_type!r} ({type(config).__name__}). "
            f"Supported model types: {', '.join(supported_model_types())}."
        )
    return conversion


SETTINGS_SUB_CONFIGS = ("backbone_config", "vision_config")
"""Sub-configs that hold the Expedite settings of a composite model (Mask2Former, UperNet, Depth Anything: the
backbone; SAM: the vision encoder)."""


def settings_holder(config: PreTrainedConfig) -> ExpediteSettings | None:
    """The config whose Expedite settings the model runs with: an expedited ``backbone_config`` (Mask2Former, UperNet,
    Depth Anything, DPT with a DINOv2 or Swinv2 backbone) or ``vision_config`` (SAM), else ``config`` itself; None for
    a vanilla config."""
    for key in SETTINGS_SUB_CONFIGS:
        sub_config = getattr(config, key, None)
        if isinstance(sub_config, ExpediteSettings):
            return sub_config
    return config if isinstance(config, ExpediteSettings) else None


def is_expedited(config: PreTrainedConfig) -> bool:
    """Whether ``config`` (or its backbone config) is an expedited config."""
    return settings_holder(config) is not None


def pop_settings(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Remove and return the Expedite setting kwargs from ``kwargs`` (a ``from_pretrained`` call's kwargs).

    A kwarg that is not a setting but is spelled like one (``clustering_locaton``) raises instead of reaching
    transformers, which would fail later with a less helpful error. ``expedite`` is the switch, not popped here.
    """
    for name in kwargs:
        if name not in SETTING_NAMES and difflib.get_close_matches(name, SETTING_NAMES, n=1, cutoff=0.85):
            _unknown_settings([name])
    return {name: kwargs.pop(name) for name in SETTING_NAMES if name != "expedite" and name in kwargs}


def _unknown_settings(names: list[str]) -> None:
    hints = []
    for name in names:
        close = difflib.get_close_matches(name, SETTING_NAMES, n=1, cutoff=0.6)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ValueError(f"Unknown Expedite setting {', '.join(hints)}. Valid settings: {', '.join(SETTING_NAMES)}.")


def _check_settings(settings: Mapping[str, Any]) -> None:
    unknown = [name for name in settings if name not in SETTING_NAMES]
    if unknown:
        _unknown_settings(unknown)
    if settings.get("num_clusters") is not None and settings.get("cluster_ratio") is not None:
        raise ValueError(
            "Set either `num_clusters` (a fixed [h, w] cluster grid) or `cluster_ratio` (a fraction of the token grid "
            f"per side), not both: got num_clusters={settings['num_clusters']}, "
            f"cluster_ratio={settings['cluster_ratio']}."
        )


def parse_request(expedite: Any = None, settings: Mapping[str, Any] | None = None) -> ExpediteRequest | None:
    """Validate an ``expedite=`` value plus setting kwargs; None when nothing is requested (load as saved).

    ``expedite`` is ``None``, a bool, a preset name or a dict of settings; ``settings`` are individual setting kwargs,
    which override the dict (choosing ``num_clusters`` or ``cluster_ratio`` there replaces the dict's grid choice).
    """
    settings = dict(settings or {})
    _check_settings(settings)
    if isinstance(expedite, Mapping):
        _check_settings(expedite)
        replaced = set(_GRID_CHOICE) if settings.keys() & set(_GRID_CHOICE) else set()  # kwargs choose the grid
        settings = {**{k: v for k, v in expedite.items() if k not in replaced}, **settings}
        expedite = True
    if expedite is None:
        return ExpediteRequest(True, settings=settings) if settings else None
    if expedite is False:
        if settings:
            raise ValueError(
                f"expedite=False loads the vanilla model, which takes no Expedite settings; got {sorted(settings)}. "
                "Drop them, or pass expedite=True / a preset name."
            )
        return ExpediteRequest(False)
    if expedite is True:
        return ExpediteRequest(True, settings=settings)
    if expedite == "auto":
        raise ValueError(
            "expedite='auto' chooses the settings by running the model on calibration images: use "
            "hf_expedite.expedite(model, 'auto', target_speedup=...) or AutoModel...from_pretrained(repo, "
            "expedite='auto', target_speedup=...)."
        )
    if isinstance(expedite, str):
        known = {name for presets in PRESETS.values() for name in presets}
        if expedite not in known:
            valid = "; ".join(f"{family}: {', '.join(presets)}" for family, presets in sorted(PRESETS.items()))
            raise ValueError(f"Unknown Expedite preset {expedite!r}. Valid presets per architecture: {valid}.")
        return ExpediteRequest(True, preset=expedite, settings=settings)
    raise TypeError(
        f"`expedite` must be a bool, a preset name or a dict of settings, not {type(expedite).__name__}: {expedite!r}."
    )


def _setting_defaults(holder: ExpediteSettings) -> dict[str, Any]:
    names = setting_names(isinstance(holder, WindowedExpediteSettings))
    return {f.name: f.default for f in fields(type(holder)) if f.name in names}


class _WithSettings:
    """Read-only view of a config (and of its settings-holding sub-config) with some settings replaced, for presets that
    depend on settings already chosen (e.g. the Swin default keeps the stage of a requested ``clustering_location``)."""

    def __init__(self, config: Any, settings: Mapping[str, Any]):
        self._config, self._settings = config, settings

    def __getattr__(self, name: str) -> Any:
        if name in self._settings:
            return self._settings[name]
        value = getattr(self._config, name)
        return _WithSettings(value, self._settings) if name in SETTINGS_SUB_CONFIGS and value is not None else value


def _resolved_settings(config: PreTrainedConfig, request: ExpediteRequest, family: str) -> dict[str, Any]:
    """The settings handed to the conversion: the preset (or the saved settings), then the request's settings."""
    holder = settings_holder(config)
    if holder is not None and request.preset is None:
        return {"expedite": True, **request.settings}
    chosen = {**(_setting_defaults(holder) if holder is not None else {}), **request.settings}  # saved ones reset
    base = get_preset(family, request.preset or "default").resolve(_WithSettings(config, chosen))
    if request.settings.keys() & set(_GRID_CHOICE):
        base = {name: value for name, value in base.items() if name not in _GRID_CHOICE}
    return {**chosen, "expedite": True, **base, **request.settings}


def carry_runtime_attributes(source: PreTrainedConfig, target: PreTrainedConfig) -> None:
    """Copy the attention/experts implementation choices, which ``to_dict`` drops, onto the converted config."""
    for name in ("_attn_implementation_internal", "_experts_implementation_internal"):
        if getattr(source, name, None) is not None:
            setattr(target, name, getattr(source, name))
    for key in getattr(target, "sub_configs", {}):
        sub_source, sub_target = getattr(source, key, None), getattr(target, key, None)
        if isinstance(sub_source, PreTrainedConfig) and isinstance(sub_target, PreTrainedConfig):
            carry_runtime_attributes(sub_source, sub_target)


def vanilla_class(cls: type) -> type:
    """The transformers class an expedited class derives from (``cls`` itself when it is a transformers class)."""
    for klass in cls.__mro__:
        if klass.__module__.startswith("transformers."):
            return klass
    raise TypeError(f"{cls.__name__} does not derive from a transformers class.")


def _vanilla_dict(config_dict: dict[str, Any]) -> dict[str, Any]:
    """A config dict with every expedited (sub-)config turned back into its vanilla parent's."""
    config_dict = {
        key: _vanilla_dict(value) if isinstance(value, dict) and "model_type" in value else value
        for key, value in config_dict.items()
    }
    model_type = config_dict.get("model_type", "")
    if model_type.startswith("expedited_"):
        config_dict = {k: v for k, v in config_dict.items() if k not in SETTING_NAMES}
        config_dict["model_type"] = vanilla_class(CONFIG_MAPPING[model_type]).model_type
    return config_dict


def vanilla_config(config: PreTrainedConfig) -> PreTrainedConfig:
    """The vanilla transformers config of an expedited config (``config`` itself when it is vanilla).

    The settings are dropped and ``architectures`` names the vanilla classes, so the result loads and saves exactly
    like the original transformers checkpoint.
    """
    if not is_expedited(config):
        return config
    config_dict = _vanilla_dict(config.to_dict())
    if config_dict.get("architectures"):
        config_dict["architectures"] = [
            vanilla_class(getattr(models, name)).__name__ if hasattr(models, name) else name
            for name in config_dict["architectures"]
        ]
    vanilla = vanilla_class(type(config)).from_dict(config_dict)
    carry_runtime_attributes(config, vanilla)
    return vanilla


def apply_request(config: PreTrainedConfig, request: ExpediteRequest) -> PreTrainedConfig:
    """The config to load for ``request``: vanilla, or expedited with the requested settings (a new object)."""
    if not request.enabled:
        return vanilla_config(config)
    conversion = conversion_for(config)
    family = conversion.preset_family(config)
    if request.preset is not None:
        get_preset(family, request.preset)  # an unknown name for this architecture lists the valid ones
    expedited = conversion.convert(config, **_resolved_settings(config, request, family))
    holder = settings_holder(expedited)
    allowed = setting_names(isinstance(holder, WindowedExpediteSettings))
    foreign = sorted(name for name in request.settings if name not in allowed)
    if foreign:
        raise ValueError(
            f"Setting(s) {foreign} only apply to windowed (Swin-style) models; {config.model_type} takes: "
            f"{', '.join(allowed)}."
        )
    carry_runtime_attributes(config, expedited)
    return expedited


def expedite_config(config: PreTrainedConfig, expedite: Any = True, **settings: Any) -> PreTrainedConfig:
    """The config ``expedite=...`` (and setting kwargs) asks for; ``config`` itself when nothing is asked."""
    request = parse_request(expedite, settings)
    return config if request is None else apply_request(config, request)


def _counterpart(model: torch.nn.Module, config: PreTrainedConfig) -> type:
    """The model class for ``config`` in ``model``'s role: its own class, expedited subclass or vanilla parent."""
    cls = type(model)
    role = vanilla_class(cls)
    if not is_expedited(config):
        return role
    for name in models.__all__:
        candidate = getattr(models, name)
        if getattr(candidate, "config_class", None) is type(config) and vanilla_class(candidate) is role:
            return candidate
    if type(config) is type(model.config):
        return cls
    raise ValueError(f"hf_expedite has no expedited counterpart of {cls.__name__} for {type(config).__name__}.")


def _calibrated(model: PreTrainedModel, options: dict[str, Any]) -> PreTrainedModel:
    """``expedite(model, "auto", **options)``: calibrate, then expedite with the chosen settings."""
    from .calibration import AUTO_OPTIONS, calibrate

    unknown = sorted(set(options) - set(AUTO_OPTIONS))
    if unknown:
        raise ValueError(
            f"expedite='auto' chooses the settings itself and takes {', '.join(AUTO_OPTIONS)}; got {unknown}."
        )
    calibration = calibrate(
        model,
        target_speedup=options.get("target_speedup"),
        target_flops_ratio=options.get("target_flops_ratio"),
        images=options.get("calibration_images"),
        image_processor=options.get("image_processor"),
    )
    twin = expedite(model, calibration.settings)
    twin.expedite_calibration = calibration
    return twin


def _match_optional_parts(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """Drop from ``target`` the submodules and parameters that ``source`` holds as ``None`` and take the optional
    parameters ``target`` lacks from ``source``: what ``__init__`` flags such as ``add_pooling_layer=False`` or
    ``use_mask_token=True`` decided when ``source`` was built (they are not in the config)."""
    for name, child in list(target._modules.items()):
        source_child = getattr(source, name, child)
        if source_child is None:
            setattr(target, name, None)
        elif child is not None:
            _match_optional_parts(source_child, child)
    for name, parameter in list(target._parameters.items()):
        source_parameter = getattr(source, name, parameter)
        if (parameter is None) != (source_parameter is None):
            target._parameters[name] = source_parameter


def expedite(model: torch.nn.Module, expedite: Any = True, **settings: Any) -> torch.nn.Module:
    """The expedited (or, with ``expedite=False``, vanilla) version of a loaded model, sharing its weight tensors.

    Nothing is copied or reloaded: the new model is built on the meta device and takes the very parameter and buffer
    tensors of ``model`` (``load_state_dict(assign=True)``), so dtype, device and any later in-place weight update are
    shared. Train/eval mode is kept per module. ``model`` itself is not changed; use one of the two at a time if you
    change the weights. Returns ``model`` when nothing is requested. Hooks that accelerate installed for a
    ``device_map`` dispatch are not carried over: load such models with ``from_pretrained(..., expedite=...)``.

    ``expedite="auto"`` chooses the settings for a budget, ``target_speedup=`` or ``target_flops_ratio=``, on
    ``calibration_images=`` (default: the bundled photographs, through ``image_processor=``) with
    :func:`hf_expedite.calibration.calibrate`; the returned model's ``expedite_calibration`` says what was chosen.
    """
    if not isinstance(model, PreTrainedModel):
        raise TypeError(
            f"hf_expedite.expedite expects a transformers model (a PreTrainedModel such as ViTModel or "
            f"DPTForDepthEstimation), got {type(model).__name__}: not a transformers model."
        )
    if expedite == "auto":
        return _calibrated(model, settings)
    request = parse_request(expedite, settings)
    if request is None:
        return model
    config = apply_request(model.config, request)
    cls = _counterpart(model, config)
    with torch.device("meta"):
        twin = cls(config)
    _match_optional_parts(model, twin)
    twin.load_state_dict(model.state_dict(keep_vars=True), strict=True, assign=True)
    state_names = set(model.state_dict())
    old_buffers = dict(model.named_buffers(remove_duplicate=False))
    for name, _ in list(twin.named_buffers(remove_duplicate=False)):  # non-persistent buffers are not in state dicts
        if name not in state_names:
            owner, _, leaf = name.rpartition(".")
            twin.get_submodule(owner)._buffers[leaf] = old_buffers[name]
    modes = {name: module.training for name, module in model.named_modules()}
    for name, module in twin.named_modules():
        module.training = modes.get(name, model.training)
    return twin
