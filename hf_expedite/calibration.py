"""Settings chosen for a speed budget: ``expedite="auto"``.

Given a budget (a FLOPs ratio, or a speed-up read as its inverse), :func:`calibrate` picks the clustering location,
the cluster grid and the temperatures that keep the model's outputs closest to the vanilla ones on a few calibration
images, among settings whose FLOPs (``torch.utils.flop_counter``, one calibration input) fit the budget:

1. for each cluster grid (a ``cluster_ratio`` per side, or a ``clustered_window_size`` for Swin-style models), the
   latest clustering location within the budget (FLOPs grow with the number of full-resolution blocks; a binary
   search over the valid locations);
2. temperatures from the feature scale at that location, the median squared distance ``s`` between neighbouring
   tokens on the calibration images (the paper's fixed values were tuned for other models): the clustering
   temperature ``CLUSTERING_FACTORS * s``, the reconstruction temperature ``RECONSTRUCTION_FACTOR * s``, with the
   residual reconstruction (``reconstruction_residual``);
3. the candidate whose outputs differ least from the vanilla ones (relative L2 difference of each output tensor,
   averaged over the tensors and the images) wins; ties go to fewer FLOPs. Everything is deterministic.

The other settings are the architecture's ``default`` preset's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import torch
from tqdm.auto import tqdm

from . import hourglass
from .conversion import expedite, expedite_config, settings_holder
from .settings import TEMPERATURE_RANGE, WindowedExpediteSettings

logger = logging.getLogger(__name__)

CLUSTER_RATIOS = (0.3, 0.4, 0.5, 0.6, 0.7)
"""Cluster grids tried: fractions of the token grid per side (of the attention window for Swin-style models)."""
CLUSTERING_FACTORS = (0.3, 1.0, 3.0)
"""Clustering temperatures tried, in units of the feature scale."""
RECONSTRUCTION_FACTOR = 0.03
"""Reconstruction temperature in units of the feature scale (sharp: mostly the nearest clusters)."""
AUTO_OPTIONS = ("target_speedup", "target_flops_ratio", "calibration_images", "image_processor")
"""The keyword arguments ``expedite="auto"`` takes (instead of settings)."""


@dataclass(frozen=True)
class Candidate:
    """One setting tried: its FLOPs ratio and its mean relative difference from the vanilla outputs."""

    settings: dict[str, Any]
    flops_ratio: float
    difference: float


@dataclass(frozen=True)
class Calibration:
    """What ``expedite="auto"`` chose (``settings``), with its FLOPs ratio, its difference from the vanilla outputs
    on the calibration images and every candidate measured."""

    settings: dict[str, Any]
    flops_ratio: float
    difference: float
    target_flops_ratio: float
    num_images: int
    candidates: list[Candidate] = field(default_factory=list)

    def summary(self) -> str:
        chosen = ", ".join(f"{name}={value}" for name, value in self.settings.items())
        return (
            f"expedite='auto' chose {chosen}: FLOPs ratio {self.flops_ratio:.3f} (budget {self.target_flops_ratio:.3f}),"
            f" relative difference from the vanilla outputs {self.difference:.4f} on {self.num_images} calibration "
            f"images ({len(self.candidates)} candidates measured)"
        )


def flops_budget(target_speedup: float | None = None, target_flops_ratio: float | None = None) -> float:
    """The FLOPs budget from exactly one of ``target_speedup`` (read as FLOPs ratio ``1 / target_speedup``) or
    ``target_flops_ratio``; a ``ValueError`` otherwise."""
    if (target_speedup is None) == (target_flops_ratio is None):
        raise ValueError("expedite='auto' needs exactly one budget: target_speedup=... (e.g. 1.5) or "
                         f"target_flops_ratio=... (e.g. 0.65); got {target_speedup=}, {target_flops_ratio=}.")  # fmt: skip
    if target_speedup is not None:
        if not isinstance(target_speedup, (int, float)) or isinstance(target_speedup, bool) or not target_speedup > 1:
            raise ValueError(f"target_speedup must be a number above 1, got {target_speedup!r}.")
        return 1.0 / float(target_speedup)
    if (
        not isinstance(target_flops_ratio, (int, float))
        or isinstance(target_flops_ratio, bool)
        or not 0 < target_flops_ratio < 1
    ):
        raise ValueError(f"target_flops_ratio must lie strictly between 0 and 1, got {target_flops_ratio!r}.")
    return float(target_flops_ratio)


def calibration_inputs(
    model: torch.nn.Module, images: Sequence[Any] | None, image_processor: Any | None
) -> list[dict[str, torch.Tensor]]:
    """Model inputs for calibration: ``images`` (PIL images through ``image_processor``, pixel tensors ``(3, H, W)``
    or ``(1, 3, H, W)``, or ready input dicts); without ``images``, the photographs bundled with scikit-image."""
    if images is None:
        from .benchmark.photos import PHOTOGRAPHS, photograph

        images = [photograph(name) for name in PHOTOGRAPHS]
    if not images:
        raise ValueError("expedite='auto' needs at least one calibration image.")
    parameter = next(model.parameters())
    inputs = []
    for image in images:
        if isinstance(image, Mapping):
            batch = dict(image)
        elif isinstance(image, torch.Tensor):
            batch = {"pixel_values": image if image.dim() == 4 else image[None]}
        else:
            if image_processor is None:
                raise ValueError(
                    "Calibration images that are not tensors need image_processor=... (from_pretrained loads the "
                    "checkpoint's own)."
                )
            batch = dict(image_processor(images=image, return_tensors="pt"))
        inputs.append(
            {
                key: value.to(parameter.device, parameter.dtype if value.is_floating_point() else value.dtype)
                for key, value in batch.items()
                if isinstance(value, torch.Tensor)
            }
        )
    return inputs


def _output_tensors(outputs: Any) -> list[torch.Tensor]:
    if isinstance(outputs, torch.Tensor):
        return [outputs.float()] if outputs.is_floating_point() else []
    values = outputs.to_tuple() if hasattr(outputs, "to_tuple") else outputs
    if not isinstance(values, (tuple, list)):
        return []
    return [tensor for value in values for tensor in _output_tensors(value)]


def relative_difference(reference: Any, outputs: Any) -> float:
    """Mean over the floating output tensors of ``|output - reference| / |reference|`` (L2 norms)."""
    pairs = list(zip(_output_tensors(reference), _output_tensors(outputs)))
    if not pairs:
        raise ValueError("The model returned no floating-point output to compare.")
    return sum(float((o - r).norm() / r.norm().clamp_min(1e-12)) for r, o in pairs) / len(pairs)


def num_blocks(config: Any) -> int:
    """The number of blocks clustering locations count in for ``config`` (vanilla or expedited): the encoder's, or a
    backbone's or vision encoder's (Depth Anything, DPT-DINOv2, SAM), over all stages for Swin-style models."""
    holder = settings_holder(expedite_config(config, True))
    depths = getattr(holder, "depths", None)
    return sum(depths) if depths is not None else holder.num_hidden_layers


def _grid_choices(holder: Any) -> list[dict[str, Any]]:
    if isinstance(holder, WindowedExpediteSettings):
        window = holder.window_size if isinstance(holder.window_size, int) else min(holder.window_size)
        sizes = sorted({max(1, round(window * ratio)) for ratio in CLUSTER_RATIOS} - {window})
        return [{"clustered_window_size": size} for size in sizes]
    return [{"cluster_ratio": ratio} for ratio in CLUSTER_RATIOS]


def _valid(config: Any, settings: Mapping[str, Any]) -> bool:
    try:
        expedite_config(config, dict(settings))
    except ValueError:
        return False
    return True


class _Probe:
    """Runs the real clustering and keeps, per clustering point, the median squared distance between neighbouring
    tokens on the token grid (the feature scale)."""

    def __init__(self) -> None:
        self.scales: list[float] = []
        self.cluster = hourglass._cluster

    def __call__(self, tokens: torch.Tensor, grid: tuple[int, int], clusters: tuple[int, int], config: Any) -> Any:
        maps = tokens.float().reshape(tokens.shape[0], grid[0], grid[1], -1)
        steps = [(maps[:, 1:] - maps[:, :-1]).square().sum(-1).flatten(), (maps[:, :, 1:] - maps[:, :, :-1])
                 .square().sum(-1).flatten()]  # fmt: skip
        distances = torch.cat(steps)
        if distances.numel():
            self.scales.append(float(distances.median()))
        return self.cluster(tokens, grid, clusters, config)


def feature_scale(
    model: torch.nn.Module, settings: Mapping[str, Any], inputs: Sequence[Mapping[str, torch.Tensor]]
) -> float | None:
    """The feature scale at the clustering point of ``settings``: the median over ``inputs`` of the median squared
    distance between neighbouring tokens (``None`` when the tokens are constant)."""
    probe = _Probe()
    with mock.patch.object(hourglass, "_cluster", probe), torch.inference_mode():
        expedited = expedite(model, dict(settings))
        for batch in inputs:
            expedited(**batch)
    scales = sorted(scale for scale in probe.scales if math.isfinite(scale) and scale > 0)
    return scales[len(scales) // 2] if scales else None


def scaled_temperatures(scale: float, factor: float = 1.0) -> dict[str, float]:
    """Clustering temperature ``factor * scale`` and reconstruction temperature ``RECONSTRUCTION_FACTOR * scale``
    (3 significant digits, inside the valid range)."""
    return {
        "clustering_temperature": _temperature(factor * scale),
        "reconstruction_temperature": _temperature(RECONSTRUCTION_FACTOR * scale),
    }


class _Calibrator:
    def __init__(self, model: torch.nn.Module, inputs: list[dict[str, torch.Tensor]], budget: float, progress: Any):
        self.model, self.inputs, self.budget, self.progress = model, inputs, budget, progress
        self.vanilla_flops = self.flops(model)
        self.cheapest = math.inf  # the smallest FLOPs ratio met
        with torch.inference_mode():
            self.references = [model(**batch) for batch in inputs]

    def flops(self, model: torch.nn.Module) -> int:
        from .benchmark.measure import count_flops

        self.progress.update()
        return count_flops(model, self.inputs[0])

    def flops_ratio(self, settings: Mapping[str, Any]) -> float:
        """The FLOPs ratio of ``settings``; infinite when they cannot run on these inputs (e.g. a Swin stage map
        smaller than one window), which counts as over the budget."""
        try:
            ratio = self.flops(expedite(self.model, dict(settings))) / self.vanilla_flops
        except ValueError:
            return math.inf
        self.cheapest = min(self.cheapest, ratio)
        return ratio

    def latest_location(self, grid: Mapping[str, Any], locations: list[int]) -> tuple[int, float] | None:
        """The latest valid clustering location whose FLOPs ratio fits the budget (binary search), with its ratio."""
        best = None
        low, high = 0, len(locations) - 1
        while low <= high:
            middle = (low + high) // 2
            ratio = self.flops_ratio({**grid, "clustering_location": locations[middle]})
            if ratio <= self.budget:
                best, low = (locations[middle], ratio), middle + 1
            else:
                high = middle - 1
        return best

    def feature_scale(self, settings: Mapping[str, Any]) -> float | None:
        scale = feature_scale(self.model, settings, self.inputs)
        self.progress.update()
        return scale

    def difference(self, settings: Mapping[str, Any]) -> float:
        model = expedite(self.model, dict(settings))
        with torch.inference_mode():
            differences = [relative_difference(ref, model(**batch)) for ref, batch in zip(self.references, self.inputs)]
        self.progress.update()
        return sum(differences) / len(differences)


def _temperature(value: float) -> float:
    low, high = TEMPERATURE_RANGE
    return float(f"{min(max(value, low), high):.3g}")


def calibrate(
    model: torch.nn.Module,
    *,
    target_speedup: float | None = None,
    target_flops_ratio: float | None = None,
    images: Sequence[Any] | None = None,
    image_processor: Any | None = None,
    progress: bool = True,
) -> Calibration:
    """Choose Expedite settings for ``model`` (a vanilla transformers model of a supported architecture) within a
    budget; see the module docstring. ``images``: see :func:`calibration_inputs`. A ``ValueError`` when no setting
    fits the budget."""
    budget = flops_budget(target_speedup, target_flops_ratio)
    model = expedite(model, False)
    inputs = calibration_inputs(model, images, image_processor)
    grids = _grid_choices(settings_holder(expedite_config(model.config, True)))
    locations = range(1, num_blocks(model.config))
    steps = 1 + len(grids) * (math.ceil(math.log2(len(locations) + 1)) + 1 + len(CLUSTERING_FACTORS))
    with tqdm(total=steps, desc="expedite='auto' calibration", unit="step", disable=not progress) as bar:
        calibrator = _Calibrator(model, inputs, budget, bar)
        candidates: list[Candidate] = []
        for grid in grids:
            valid = [alpha for alpha in locations if _valid(model.config, {**grid, "clustering_location": alpha})]
            found = calibrator.latest_location(grid, valid)
            if found is None:
                continue
            location, ratio = found
            placed = {"clustering_location": location, **grid}
            try:  # another calibration image may be too small for these settings: then they are not a candidate
                scale = calibrator.feature_scale(placed)
                for factor in CLUSTERING_FACTORS if scale is not None else (None,):
                    settings = dict(placed, reconstruction_residual=True)
                    if factor is not None:
                        settings.update(scaled_temperatures(scale, factor))
                    candidates.append(Candidate(settings, ratio, calibrator.difference(settings)))
            except ValueError as error:
                logger.info("expedite='auto': %s skipped (%s)", placed, error)
    if not candidates:
        raise ValueError(
            f"No Expedite setting of {type(model).__name__} fits a FLOPs ratio of {budget:.3f} on these inputs: the "
            f"cheapest tried costs {calibrator.cheapest:.3f}. Allow a smaller speed-up (a larger target_flops_ratio)."
        )
    best = min(candidates, key=lambda c: (c.difference, c.flops_ratio))
    result = Calibration(best.settings, best.flops_ratio, best.difference, budget, len(inputs), candidates)
    logger.info(result.summary())
    return result
