"""The Expedite settings shared by every expedited config, and their validation.

The fields are declared once, on dataclass mixins that the expedited configs inherit next to their transformers
parent (``class ExpeditedViTConfig(ExpediteSettings, ViTConfig)``). Their names and meaning are fixed by DESIGN.md.
Fields left at ``None`` are filled from the architecture's default preset when the config is built.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

DEFAULT_RECONSTRUCTION_K = 20
"""``reconstruction_k`` when the config leaves it unset: 20, or every cluster when the grid holds fewer."""
TEMPERATURE_RANGE = (1e-6, 1e6)
"""Temperatures float32 clustering and reconstruction compute without overflow or NaN in float32, float16 and
bfloat16 inputs (the official values, as divisors, lie between 1 and 100)."""
_MODES = ("knn", "hard")
_NORMALIZATIONS = ("l1", "l2")
_GRID_CHOICE = ("num_clusters", "cluster_ratio", "clustered_window_size")  # one choice: the cluster grid


class LoadsVanillaConfigs:
    """Config mixin: the ``config.json`` of a vanilla checkpoint (``model_type`` of the transformers parent) is an
    expected input of an expedited config, so transformers' "model of type ... to instantiate a model of type ..."
    warning is not raised for it."""

    @classmethod
    def get_config_dict(cls, *args: Any, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        config_dict, kwargs = super().get_config_dict(*args, **kwargs)
        parent = next(k for k in cls.__mro__ if k.__module__.startswith("transformers.") and "model_type" in vars(k))
        if config_dict.get("model_type") == parent.model_type:
            config_dict = {**config_dict, "model_type": cls.model_type}
        return config_dict, kwargs


@dataclass(kw_only=True)
class ExpediteSettings(LoadsVanillaConfigs):
    """Fields of every expedited config (see the table in the README)."""

    expedite: bool = True
    clustering_location: int | None = None
    num_clusters: list[int] | tuple[int, int] | None = None
    cluster_ratio: float | None = None
    clustering_iterations: int = 5
    clustering_temperature: float | int | None = None
    clustering_window_size: int = 5
    reconstruction_location: int | None = None
    reconstruction_k: int | None = None
    reconstruction_temperature: float | int | None = None
    reconstruction_normalization: str = "l1"
    reconstruction_mode: str = "knn"
    reconstruction_residual: bool = False

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> Any:
        """Build the config with setting kwargs applied *before* defaults and validation run.

        transformers sets extra ``from_pretrained`` kwargs on the finished config, which would skip validation.
        Choosing ``num_clusters``, ``cluster_ratio`` or (Swin) ``clustered_window_size`` replaces the saved choice of
        the others.
        """
        names = setting_names(issubclass(cls, WindowedExpediteSettings))
        overrides = {name: kwargs.pop(name) for name in list(kwargs) if name in names}
        config_dict = dict(config_dict)
        if overrides.keys() & _GRID_CHOICE:
            for name in _GRID_CHOICE:
                config_dict.pop(name, None)
        config_dict.update(overrides)
        return super().from_dict(config_dict, **kwargs)

    @classmethod
    def register_for_auto_class(cls, auto_class: str = "AutoConfig") -> None:
        """No-op: expedited configs come from the ``hf_expedite`` package and are never copied into a repository.

        transformers calls this after a ``trust_remote_code`` load; ``save_pretrained`` would then try to copy the
        package's source files next to the weights.
        """


@dataclass(kw_only=True)
class WindowedExpediteSettings(ExpediteSettings):
    """Fields of the expedited Swin-style configs, which cluster inside each attention window."""

    clustered_window_size: int | None = None
    official_shift_mask: bool = False
    reconstruction_k: int | None = None  # windows can hold fewer than 20 clusters: the preset picks it from k


def setting_names(windowed: bool = True) -> tuple[str, ...]:
    """Names of the Expedite settings (with the Swin-only ones when ``windowed``)."""
    return tuple(f.name for f in fields(WindowedExpediteSettings if windowed else ExpediteSettings))


class SettingsOnSubConfig(LoadsVanillaConfigs):
    """Config mixin of a composite model whose Expedite settings live on one sub-config: ``settings_sub_config``
    (``"backbone_config"`` for Mask2Former, UperNet and Depth Anything, ``"vision_config"`` for SAM).

    That sub-config is always expedited: unless it is already one of ``sub_config_classes``, the subclass's
    ``expedite_sub_config(sub_config, **settings)`` converts it (and may refuse an unsupported one). Setting kwargs
    given to the outer config (``Config(clustering_location=10)``, ``from_pretrained(repo, expedite=False)``) are
    forwarded to it; ``windowed_settings`` says whether the Swin-only settings are among them.
    """

    settings_sub_config = "backbone_config"
    windowed_settings = True

    def __post_init__(self, **kwargs: Any) -> None:
        kwargs.pop("model_type", None)  # a hub config says the vanilla type: it must not shadow ours
        names = setting_names(self.windowed_settings)
        settings = {name: kwargs.pop(name) for name in names if name in kwargs}
        super().__post_init__(**kwargs)
        sub_config = getattr(self, self.settings_sub_config)
        if settings or not isinstance(sub_config, self.sub_config_classes):
            setattr(self, self.settings_sub_config, self.expedite_sub_config(sub_config, **settings))

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> Any:
        """Route Expedite setting kwargs (``from_pretrained(repo, clustering_location=10)``) to the sub-config."""
        names = setting_names(cls.windowed_settings)
        config_dict = {**config_dict, **{name: kwargs.pop(name) for name in names if name in kwargs}}
        return super().from_dict(config_dict, **kwargs)


def expedite_settings(config: Any) -> dict[str, Any]:
    """The Expedite settings of an expedited config, as a plain dict."""
    windowed = isinstance(config, WindowedExpediteSettings)
    return {name: getattr(config, name) for name in setting_names(windowed)}


def convert_config(expedited_class: type, config: Any, vanilla_class: type, **settings: Any) -> Any:
    """``config`` (a ``vanilla_class`` config or an already expedited one) as an ``expedited_class`` with ``settings``."""
    vanilla_type = vanilla_class.model_type
    if config.model_type not in (vanilla_type, expedited_class.model_type):
        name = vanilla_class.__name__.removesuffix("Config")
        raise ValueError(
            f"Expected a {name} config (model_type {vanilla_type!r}), got model_type {config.model_type!r}."
        )
    return rebuilt(expedited_class, config, **settings)


def rebuilt(config_class: type, config: Any, **settings: Any) -> Any:
    """``config`` rebuilt as a ``config_class`` with ``settings``, keeping its attention implementation (which
    ``to_dict`` leaves out, so that a sub-config converted inside its parent's ``__post_init__`` would lose what the
    parent's ``attn_implementation=`` had set)."""
    converted = config_class.from_dict(config.to_dict(), **settings)
    # The dict form sets each level's own value (a plain value would overwrite every sub-config with the parent's).
    implementations = {"": config._attn_implementation}
    for key in converted.sub_configs:
        if getattr(config, key, None) is not None and getattr(converted, key, None) is not None:
            implementations[key] = getattr(config, key)._attn_implementation
    converted._attn_implementation = implementations
    return converted


def fill_defaults(config: ExpediteSettings, defaults: dict[str, Any]) -> None:
    """Set every setting of ``config`` that is still ``None`` from ``defaults`` (a preset).

    ``num_clusters`` and ``cluster_ratio`` are one choice: a preset's value is only used when neither is set.
    """
    grid_chosen = config.num_clusters is not None or config.cluster_ratio is not None
    for name, value in defaults.items():
        if name in ("num_clusters", "cluster_ratio") and grid_chosen:
            continue
        if getattr(config, name) is None:
            setattr(config, name, list(value) if isinstance(value, tuple) else value)
    if isinstance(config.num_clusters, tuple):
        config.num_clusters = list(config.num_clusters)


def _fail(field: str, value: Any, valid: str) -> None:
    raise ValueError(f"Invalid Expedite setting `{field}={value!r}`: {valid}.")


def is_int(value: Any) -> bool:
    """An integer that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    """A finite int or float (not a bool); plain comparisons, which torch.compile traces (NaN fails them)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and -math.inf < value < math.inf


def _check_int(config: ExpediteSettings, name: str, low: int, high: int | None = None, valid: str = "") -> None:
    value = getattr(config, name)
    if not is_int(value) or value < low or (high is not None and value > high):
        _fail(name, value, valid or (f"an integer in {low}..{high}" if high is not None else f"an integer >= {low}"))


def validate_flags(config: ExpediteSettings) -> None:
    """Raise a ``ValueError`` unless ``expedite``, ``reconstruction_residual`` (and Swin's ``official_shift_mask``)
    are bools: ``"false"`` is not."""
    for name in ("expedite", "reconstruction_residual", "official_shift_mask"):
        if hasattr(config, name) and not isinstance(getattr(config, name), bool):
            _fail(name, getattr(config, name), "must be true or false (a bool, not a string or a number)")


def validate_settings(config: ExpediteSettings, num_blocks: int, unit: str = "encoder blocks") -> None:
    """Raise a ``ValueError`` naming the field, its value and its valid range for any invalid setting of ``config``.

    Types are checked strictly (``4.0`` is not a block count, ``"false"`` is not a bool). ``num_blocks`` is the
    number of blocks clustering can be placed between (``unit`` names them in messages).
    """
    validate_flags(config)
    alpha = config.clustering_location
    _check_int(config, "clustering_location", 0, num_blocks - 1,
               f"the number of {unit} before clustering, an integer in 0..{num_blocks - 1}")  # fmt: skip
    recon = config.reconstruction_location
    if recon is not None and (not is_int(recon) or not alpha < recon <= num_blocks):
        _fail(
            "reconstruction_location",
            recon,
            f"reconstruction must come after clustering (clustering_location={alpha}) and inside the encoder: an "
            f"integer in {alpha + 1}..{num_blocks}, or None for the end",
        )
    if config.num_clusters is not None and config.cluster_ratio is not None:
        raise ValueError(
            "Set either `num_clusters` (a fixed [h, w] cluster grid) or `cluster_ratio` (a fraction of the token grid "
            f"per side), not both: got num_clusters={config.num_clusters}, cluster_ratio={config.cluster_ratio}."
        )
    if config.num_clusters is None and config.cluster_ratio is None:
        raise ValueError("One of `num_clusters` or `cluster_ratio` must be set.")
    grid = config.num_clusters
    if grid is not None and (
        not isinstance(grid, (list, tuple)) or len(grid) != 2 or not all(is_int(v) and v >= 1 for v in grid)
    ):
        _fail("num_clusters", grid, "expected [h, w]: two positive integers")
    ratio = config.cluster_ratio
    if ratio is not None and (not _is_real(ratio) or not 0 < ratio <= 1):
        _fail("cluster_ratio", ratio, "the fraction of tokens kept per side, a number in (0, 1]")
    _check_int(config, "clustering_iterations", 0)
    window = config.clustering_window_size
    if not is_int(window) or window < 1 or window % 2 == 0:
        _fail("clustering_window_size", window, "the locality window, a positive odd integer of cluster cells")
    if config.reconstruction_k is not None:
        high = grid[0] * grid[1] if grid is not None else None
        _check_int(config, "reconstruction_k", 1, high, f"an integer in 1..{high} (h * w clusters)" if high else "")
    low, high = TEMPERATURE_RANGE
    for name in ("clustering_temperature", "reconstruction_temperature"):
        value = getattr(config, name)
        if not _is_real(value) or not low <= value <= high:
            _fail(name, value, f"a temperature divides the distances: a number in [{low:g}, {high:g}]")
    if config.reconstruction_mode not in _MODES:
        _fail("reconstruction_mode", config.reconstruction_mode, f"expected one of {_MODES}")
    if config.reconstruction_normalization not in _NORMALIZATIONS:
        _fail("reconstruction_normalization", config.reconstruction_normalization, f"expected one of {_NORMALIZATIONS}")


def reconstruction_k(config: ExpediteSettings, num_clusters: int) -> int:
    """The k-NN size for a grid of ``num_clusters``: the config's ``reconstruction_k`` (checked against the grid: a
    ``cluster_ratio`` grid depends on the input) or, unset, ``DEFAULT_RECONSTRUCTION_K`` capped at the grid."""
    k = config.reconstruction_k
    if k is None:
        return min(DEFAULT_RECONSTRUCTION_K, num_clusters)
    if k > num_clusters:
        _fail("reconstruction_k", k, f"this input's cluster grid holds {num_clusters} clusters; use at most that, or "
              "leave reconstruction_k unset (20, capped at the grid)")  # fmt: skip
    return k


def cluster_grid(config: ExpediteSettings, grid: tuple[int, int]) -> tuple[int, int]:
    """The ``(h, w)`` cluster grid for a token grid: ``num_clusters``, or ``cluster_ratio`` of each side (rounded)."""
    if config.num_clusters is not None:
        return int(config.num_clusters[0]), int(config.num_clusters[1])
    return max(1, round(grid[0] * config.cluster_ratio)), max(1, round(grid[1] * config.cluster_ratio))


def finalize_settings(config: ExpediteSettings, architecture: str, num_blocks: int, unit: str = "encoder blocks") -> None:
    """Fill unset settings from the architecture's ``default`` preset, then validate them (``ValueError``).

    With ``expedite`` off only the flags are checked: the other settings are dormant, and the model validates them
    when it runs with ``expedite`` on. A vanilla config edited after it was built (e.g. fewer layers) then saves and
    loads as the parent's does.
    """
    from .presets import get_preset

    fill_defaults(config, get_preset(architecture, "default").resolve(config))
    validate_when_expedited(config, lambda: validate_settings(config, num_blocks, unit))


def validate_when_expedited(config: ExpediteSettings, validate: Callable[[], object]) -> None:
    """Check the flags, then run ``validate`` only if ``expedite`` is on: with it off the other settings are
    dormant (see :func:`finalize_settings`)."""
    validate_flags(config)
    if config.expedite:
        validate()
