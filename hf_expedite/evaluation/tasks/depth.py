"""Depth estimation against metric reference depth (``scripts/evaluate_depth.py``): crops, alignment, the task."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ...auto import AutoModelForDepthEstimation
from ...metrics import load_metric
from ..runner import EvaluationTask, Reference

EIGEN_CROP = (45, 471, 41, 601)  # NYUv2 (Eigen et al. 2014): rows 45:471, columns 41:601 of 480 x 640, as BTS
GARG_CROP = (0.40810811, 0.99189189, 0.03594771, 0.96405229)  # KITTI (Garg et al. 2016): fractions, as BTS
KB_CROP = (352, 1216)  # KITTI benchmark crop (height, width), bottom-centred, as BTS --do_kb_crop


def crop_mask(shape: tuple[int, int], crop: str) -> np.ndarray | None:
    """The valid-pixel mask of ``crop`` on a ``(height, width)`` map, with the references' rounding: the Garg crop is
    ``int(fraction * size)`` (truncation, as BTS and monodepth2), the Eigen crop BTS's 480 x 640 pixel bounds (scaled
    with integer arithmetic for other sizes)."""
    if crop == "none":
        return None
    height, width = shape
    if crop == "eigen":
        top, bottom, left, right = (
            bound * size // reference
            for bound, size, reference in zip(EIGEN_CROP, (height, height, width, width), (480, 480, 640, 640))
        )
    else:
        top, bottom, left, right = (
            int(fraction * size) for fraction, size in zip(GARG_CROP, (height, height, width, width))
        )
    mask = np.zeros(shape, dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def kb_window(height: int, width: int) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the KITTI benchmark crop: 352 x 1216, bottom-centred (BTS's margins)."""
    crop_height, crop_width = KB_CROP
    if height < crop_height or width < crop_width:
        raise ValueError(f"the KB crop needs at least {crop_height} x {crop_width} pixels, got {height} x {width}")
    top, left = int(height - crop_height), int((width - crop_width) / 2)
    return top, left, top + crop_height, left + crop_width


def default_alignment(config: Any) -> str:
    """'none' for a metric-depth model, 'disparity' for a relative inverse-depth one (see the module docstring)."""
    kind = getattr(config, "depth_estimation_type", None)  # Depth Anything: "relative" or "metric"
    if kind is not None:
        return "disparity" if kind == "relative" else "none"
    if getattr(config, "backbone_config", None) is not None and not getattr(config, "is_hybrid", False):
        return "none"  # DPT with a DINOv2 backbone: the hub checkpoints are NYUv2 / KITTI metric models
    return "disparity"  # DPT-Large / DPT-Hybrid: the hub checkpoints are MiDaS relative inverse-depth models


class DepthTask(EvaluationTask):
    """Depth maps against reference depth in metres, with the bundled `depth` metric."""

    name = "depth"
    title = "Depth estimation"
    kind = "depth estimation"
    auto_classes = (AutoModelForDepthEstimation,)

    def __init__(
        self,
        *,
        depth_column: str,
        depth_scale: float,
        min_depth: float,
        max_depth: float | None,
        crop: str,
        kb_crop: bool,
        alignment: str,
        aggregation: str,
    ) -> None:
        if depth_scale <= 0:
            raise ValueError(f"--depth-scale must be > 0, got {depth_scale}.")
        self.label_columns = (depth_column,)
        self.depth_column = depth_column
        self.depth_scale = depth_scale
        self.crop = crop
        self.kb_crop = kb_crop
        self.alignment = alignment
        self.aggregation = aggregation
        self.options = {
            "min_depth": min_depth,
            "max_depth": max_depth,
            "median_scaling": alignment == "median",
            "disparity_alignment": alignment == "disparity",
        }
        self.metric = load_metric("depth")
        self.metric.image_statistics(np.ones((1, 1)), np.ones((1, 1)), **self.options)  # validates the options

    def reference(self, index: int, columns: Mapping[str, Any]) -> Reference:
        depth = np.asarray(columns[self.depth_column], dtype=np.float64)
        if depth.ndim == 3 and depth.shape[-1] == 1:
            depth = depth[..., 0]
        if depth.ndim != 2:
            raise ValueError(
                f"Image {index}: column {self.depth_column!r} holds an array of shape {depth.shape}; expected a "
                "single-channel 2-D depth map."
            )
        mask = crop_mask(depth.shape, self.crop)  # on the full-size map, as the references
        if self.kb_crop:
            try:
                top, left, bottom, right = kb_window(*depth.shape)
            except ValueError as error:
                raise ValueError(f"Image {index}: {error}.") from None
            depth = depth[top:bottom, left:right]
            mask = None if mask is None else mask[top:bottom, left:right]
        return Reference(depth / self.depth_scale, mask)

    def input_image(self, image: Any) -> Any:
        if not self.kb_crop:
            return image
        top, left, bottom, right = kb_window(image.height, image.width)
        return image.crop((left, top, right, bottom))

    def check(self, references: Sequence[Reference]) -> None:
        low, high = self.options["min_depth"], self.options["max_depth"]
        for reference in references:
            depth = reference.map
            valid = np.isfinite(depth) & (depth > low) & (depth < (np.inf if high is None else high))
            if valid.any():
                return
        found = [float(np.nanmax(r.map)) for r in references]
        raise ValueError(
            f"None of the first {len(references)} depth maps has a pixel in ({low}, {high}) after dividing by "
            f"--depth-scale {self.depth_scale} (largest values: {found[:4]}); check --depth-scale and --max-depth."
        )

    def predictions(
        self, processor: Any, outputs: Any, sizes: Sequence[tuple[int, int]], inputs: Mapping[str, Any]
    ) -> list[np.ndarray]:
        results = processor.post_process_depth_estimation(outputs, target_sizes=list(sizes))
        return [result["predicted_depth"].float().cpu().numpy() for result in results]

    def statistics(self, prediction: np.ndarray, reference: Reference, index: int) -> np.ndarray:
        return self.metric.image_statistics(prediction, reference.map, reference.info, index=index, **self.options)

    def metrics(self, statistics: Sequence[np.ndarray]) -> dict[str, Any]:
        return self.metric.metrics_from_statistics(statistics, per_image_average=self.aggregation == "per-image")

    def metadata(self) -> dict[str, Any]:
        return {
            "depth": f"column {self.depth_column!r} / {self.depth_scale:g}, valid in ({self.options['min_depth']:g}, "
            f"{self.options['max_depth']}) m, crop {self.crop}"
            + (", input KB-cropped to 352x1216" if self.kb_crop else ""),
            "alignment": self.alignment,
            "aggregation": "per image, then over images" if self.aggregation == "per-image" else "pooled over pixels",
        }


def make_task(args: Any, config: Any, processor: Any) -> DepthTask:
    return DepthTask(
        depth_column=args.depth_column,
        depth_scale=args.depth_scale,
        min_depth=args.min_depth,
        max_depth=args.max_depth,
        crop=args.crop,
        kb_crop=args.kb_crop,
        alignment=default_alignment(config) if args.alignment == "auto" else args.alignment,
        aggregation=args.aggregation,
    )
