"""Named Expedite settings per architecture: the official settings converted to our conventions, and the defaults.

Every preset is data: the settings, where they come from and what was published with them. ``default`` is what
``expedite=True`` uses; it may depend on the model (depth, input size), so it is resolved against the config.
Conversions from the official repositories (see ``expedite-algorithm.md`` 3.6 and 4): ``clustering_location`` counts
the blocks run before clustering, and temperatures are divisors (official inverse temperature 0.02 -> 50).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Preset:
    """A named set of Expedite settings, with its provenance."""

    settings: dict[str, Any] | Callable[[Any], dict[str, Any]]
    description: str
    source: str | None = None
    published: str | None = None

    def resolve(self, config: Any) -> dict[str, Any]:
        """The settings for ``config`` (a vanilla or expedited config of the architecture)."""
        return dict(self.settings(config) if callable(self.settings) else self.settings)


from . import vit  # noqa: E402
from . import dinov2, dpt  # noqa: E402
from . import swin  # noqa: E402
from . import sam  # noqa: E402

PRESETS: dict[str, dict[str, Preset]] = {
    "vit": vit.PRESETS,
    "eomt": vit.EOMT_PRESETS,
    "sam": sam.PRESETS,
    "dpt": dpt.PRESETS,
    "dinov2": dinov2.PRESETS,
    "dinov3_vit": dinov2.PRESETS,  # the same scaled DPT default
    **{"swin": swin.SWIN, "swinv2": swin.SWINV2, "mask2former": swin.MASK2FORMER, "upernet": swin.UPERNET},
}


def architecture_presets(architecture: str) -> dict[str, Preset]:
    """The presets of one architecture family (``"vit"``, ``"dpt"``, ...)."""
    if architecture not in PRESETS:
        raise ValueError(f"No Expedite presets for {architecture!r}; supported: {', '.join(sorted(PRESETS))}.")
    return PRESETS[architecture]


def get_preset(architecture: str, name: str) -> Preset:
    """One preset by name; an unknown name raises a ``ValueError`` listing the valid ones."""
    presets = architecture_presets(architecture)
    if name not in presets:
        raise ValueError(f"Unknown Expedite preset {name!r} for {architecture}; valid presets: {', '.join(presets)}.")
    return presets[name]


def list_presets(architecture: str | None = None) -> dict[str, list[str]]:
    """Preset names per architecture family (only ``architecture``'s when given)."""
    families = [architecture] if architecture else sorted(PRESETS)
    return {family: list(architecture_presets(family)) for family in families}
