"""Shadow Auto classes: ``hf_expedite.AutoModel*.from_pretrained(repo, expedite=...)``.

Each shadow subclasses the transformers Auto class of the same name and only adds the ``expedite`` switch (and the
individual setting kwargs) to ``from_pretrained`` and ``from_config``. What ``expedite=`` means is defined in
:mod:`hf_expedite.conversion`. Every other kwarg is routed exactly like transformers' ``auto_factory`` does: hub kwargs
go to both the config and the weights, config kwargs (``num_labels``, ``attn_implementation``, ...) to the config, the
rest to the model. Without ``expedite`` and setting kwargs the call *is* the transformers call, so an expedited
repository loads as expedited (its model type is registered) and a vanilla one as vanilla.

``expedite=False`` always gives the plain transformers class: for an expedited repository the config is turned back
into its vanilla parent (settings dropped) and the weights, which are stored in the vanilla layout, load unchanged.
(The expedited class with ``expedite`` switched off, which is bit-identical, is ``expedite={"expedite": False}``.)
"""

from __future__ import annotations

import copy
import inspect
import os
from collections.abc import Callable
from typing import Any

import torch
import transformers
from transformers import AutoConfig, AutoImageProcessor, PreTrainedConfig

from .compat import resolve_revision
from .conversion import apply_request, parse_request, pop_settings, vanilla_class
from .conversion import expedite as expedite_model

# The kwargs transformers' auto_factory sends to both the config and the weights download.
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "proxies", "revision", "subfolder", "token")
# Config kwargs that the model's from_pretrained must see again (auto_factory re-injects the dtypes and
# quantization; the attention choices are dropped when the config is converted, so they are re-injected too).
_REINJECTED = (
    "dtype",
    "torch_dtype",
    "quantization_config",
    "attn_implementation",
    "experts_implementation",
    "trust_remote_code",
    "code_revision",
    "_from_pipeline",
)

SHADOWED = (
    "AutoModel",
    "AutoModelForImageClassification",
    "AutoModelForDepthEstimation",
    "AutoModelForSemanticSegmentation",
    "AutoModelForUniversalSegmentation",
    "AutoModelForMaskGeneration",
    "AutoBackbone",
)
"""The transformers Auto classes that ``hf_expedite`` shadows."""

TRANSFORMERS_AUTO_CLASSES: tuple[type, ...] = tuple(
    getattr(transformers, name)
    for name in (*SHADOWED, "AutoModelForImageSegmentation", "AutoModelForInstanceSegmentation")
)
"""The transformers Auto classes a supported architecture can be loaded with (patched by ``patch_transformers``)."""


def transformers_method(auto_class: type, name: str) -> Callable[..., Any]:
    """``auto_class.<name>`` as transformers implements it, bound to ``auto_class``, even while it is patched."""
    descriptor = inspect.getattr_static(auto_class, name)
    descriptor = getattr(descriptor.__func__, "transformers_original", descriptor)
    return descriptor.__get__(None, auto_class)


def _load_config(pretrained_model_name_or_path: str | os.PathLike, kwargs: dict[str, Any]) -> PreTrainedConfig:
    """Load the config as ``auto_factory`` does; ``kwargs`` is left with what the model's ``from_pretrained`` needs."""
    hub_kwargs = {name: kwargs.pop(name) for name in HUB_KWARGS if name in kwargs}
    hub_kwargs["revision"] = resolve_revision(
        pretrained_model_name_or_path,
        hub_kwargs.get("revision"),
        token=hub_kwargs.get("token"),
        local_files_only=hub_kwargs.get("local_files_only", False),
        cache_dir=hub_kwargs.get("cache_dir"),
    )
    original = copy.copy(kwargs)
    config_kwargs = {k: v for k, v in kwargs.items() if not (k in ("dtype", "torch_dtype") and v == "auto")}
    config_kwargs.pop("quantization_config", None)
    config, unused = AutoConfig.from_pretrained(
        pretrained_model_name_or_path, return_unused_kwargs=True, **hub_kwargs, **config_kwargs
    )
    kwargs.clear()
    kwargs.update(unused, **hub_kwargs)
    kwargs.update({name: original[name] for name in _REINJECTED if original.get(name) is not None})
    return config


def expedited_from_pretrained(
    from_pretrained: Callable[..., Any],
    pretrained_model_name_or_path: str | os.PathLike,
    *model_args: Any,
    expedite: Any = None,
    **kwargs: Any,
) -> Any:
    """``from_pretrained`` (a transformers Auto class's, bound) with the ``expedite`` switch and setting kwargs.

    The request is validated first, then the config is loaded and converted, and only then are weights read.
    ``expedite="auto"`` loads the vanilla model and calibrates it (:func:`hf_expedite.expedite`), with the checkpoint's
    image processor unless ``image_processor=`` is given.
    """
    if expedite == "auto":
        return _auto_from_pretrained(from_pretrained, pretrained_model_name_or_path, *model_args, **kwargs)
    request = parse_request(expedite, pop_settings(kwargs))
    if request is None:
        return from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
    config = kwargs.pop("config", None)
    if not isinstance(config, PreTrainedConfig):
        config = _load_config(pretrained_model_name_or_path, kwargs)
    config = apply_request(config, request)
    return from_pretrained(pretrained_model_name_or_path, *model_args, config=config, **kwargs)


def _auto_from_pretrained(
    from_pretrained: Callable[..., Any], pretrained_model_name_or_path: str | os.PathLike, *model_args: Any, **kwargs: Any
) -> Any:
    from .calibration import AUTO_OPTIONS, flops_budget

    options = {name: kwargs.pop(name) for name in AUTO_OPTIONS if name in kwargs}
    flops_budget(options.get("target_speedup"), options.get("target_flops_ratio"))  # before any weight is read
    settings = pop_settings(kwargs)
    if settings:
        raise ValueError(f"expedite='auto' chooses the settings itself; drop {sorted(settings)} or pass a dict.")
    images = options.get("calibration_images")
    if options.get("image_processor") is None and not (images and all(isinstance(i, torch.Tensor) for i in images)):
        hub = {name: kwargs[name] for name in HUB_KWARGS if name in kwargs}
        try:
            options["image_processor"] = AutoImageProcessor.from_pretrained(pretrained_model_name_or_path, **hub)
        except OSError as error:
            raise ValueError(
                f"expedite='auto' calibrates on images, and {pretrained_model_name_or_path} has no image processor to "
                "prepare them: pass image_processor=..., or calibration_images=[pixel tensors]."
            ) from error
    model = expedited_from_pretrained(from_pretrained, pretrained_model_name_or_path, *model_args, expedite=False,
                                      **kwargs)  # fmt: skip
    return expedite_model(model, "auto", **options)


def expedited_from_config(
    from_config: Callable[..., Any], config: PreTrainedConfig, expedite: Any = None, **kwargs: Any
) -> Any:
    """``from_config`` (a transformers Auto class's, bound) with the ``expedite`` switch and setting kwargs."""
    request = parse_request(expedite, pop_settings(kwargs))
    return from_config(config if request is None else apply_request(config, request), **kwargs)


def _shadow(name: str) -> type:
    """A subclass of ``transformers.<name>`` whose ``from_pretrained`` / ``from_config`` take ``expedite=...``."""
    parent = getattr(transformers, name)

    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, expedite=None, **kwargs):
        return expedited_from_pretrained(
            transformers_method(parent, "from_pretrained"),
            pretrained_model_name_or_path,
            *model_args,
            expedite=expedite,
            **kwargs,
        )

    def from_config(cls, config, expedite=None, **kwargs):
        return expedited_from_config(transformers_method(parent, "from_config"), config, expedite=expedite, **kwargs)

    from_pretrained.__doc__ = (
        f"`transformers.{name}.from_pretrained` plus `expedite=False | True | preset name | dict | 'auto'` and Expedite "
        "setting kwargs (see `hf_expedite.auto`)."
    )
    from_config.__doc__ = f"`transformers.{name}.from_config` plus `expedite=...` and Expedite setting kwargs."
    namespace = {
        "__module__": __name__,
        "__doc__": f"`transformers.{name}` with the `expedite` switch.",
        "from_pretrained": classmethod(from_pretrained),
        "from_config": classmethod(from_config),
    }
    return type(name, (parent,), namespace)


AutoModel = _shadow("AutoModel")
AutoModelForImageClassification = _shadow("AutoModelForImageClassification")
AutoModelForDepthEstimation = _shadow("AutoModelForDepthEstimation")
AutoModelForSemanticSegmentation = _shadow("AutoModelForSemanticSegmentation")
AutoModelForUniversalSegmentation = _shadow("AutoModelForUniversalSegmentation")
AutoModelForMaskGeneration = _shadow("AutoModelForMaskGeneration")
AutoBackbone = _shadow("AutoBackbone")

AUTO_CLASSES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        AutoModel,
        AutoModelForImageClassification,
        AutoModelForDepthEstimation,
        AutoModelForSemanticSegmentation,
        AutoModelForUniversalSegmentation,
        AutoModelForMaskGeneration,
        AutoBackbone,
    )
}


def auto_class_for(config: PreTrainedConfig) -> type:
    """The shadow Auto class that loads ``config``'s saved architecture (named by ``config.architectures``; the
    vanilla name counts for its expedited subclass). Task classes come before :class:`AutoModel`, which also maps
    some task models (``SamModel``: mask generation).

    Falls back to :class:`AutoModel` when the config names no architecture or one no shadow class maps to.
    """
    wanted = set(config.architectures or [])
    for auto_class in sorted(AUTO_CLASSES.values(), key=lambda auto_class: auto_class is AutoModel):
        model_class = auto_class._model_mapping.get(type(config), None)
        if model_class is not None and {model_class.__name__, vanilla_class(model_class).__name__} & wanted:
            return auto_class
    return AutoModel
