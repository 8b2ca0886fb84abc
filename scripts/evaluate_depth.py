#!/usr/bin/env python
"""Depth estimation: a model and its expedited twin, side by side, on NYUv2 (default) or KITTI.

    python scripts/evaluate_depth.py Intel/dpt-hybrid-midas --max-samples 100
    python scripts/evaluate_depth.py facebook/dpt-dinov2-small-nyu --expedite nyu-alpha4-16x16
    python scripts/evaluate_depth.py depth-anything/Depth-Anything-V2-Small-hf --expedite '{"cluster_ratio": 0.6}'
    python scripts/evaluate_depth.py MODEL --benchmark kitti --dataset /data/kitti_eigen_test --split test
    accelerate launch scripts/evaluate_depth.py MODEL            # several GPUs: same numbers, shared work

Writes <output-dir>/depth.md (table: RMSE, AbsRel, SqRel, RMSE-log, log10, delta1-3, images/s and latency of both
models, expedited / vanilla ratios) and depth.json (everything, incl. the settings and skipped samples).

Protocol (the one behind the published numbers: BTS's eval script, which the paper's DPT numbers follow, and
monodepth2, ZoeDepth and Depth Anything alike): each metric is computed per image and averaged over the images
(--aggregation pooled pools all valid pixels instead); valid ground truth is min_depth < d < max_depth (strict);
predictions are clipped to [min_depth, max_depth]; crops as below, with the references' integer truncation.

Datasets (--benchmark):
  nyu (default)  sayakpaul/nyu_depth_v2, split "validation": the 654 NYUv2 test images of the Eigen split at 480x640
                 (column depth_map, metres). The data come from the FastDepth / sparse-to-dense HDF5 export of the
                 labelled NYUv2 set, whose depth is the labelled set's in-painted (filled) `depths`, not its
                 `rawDepths`; BTS's official test split is extracted from the same in-painted `depths`, so this is
                 the published protocol's ground truth (the dataset offers no raw depth). The repository is
                 script-based, which `datasets` 4+ no longer runs, so it is read from the hub's automatic Parquet
                 export (--revision refs/convert/parquet, the default; the export names the split
                 "partial-validation": the report gives the sample count, 654 when complete). Valid depth:
                 1e-3 < d < 10 m, Eigen crop (rows 45:471, columns 41:601 of 480x640, as BTS; scaled for other
                 sizes), predictions clipped to [1e-3, 10].
  kitti          No public copy of the KITTI Eigen test split on the hub: pass --dataset (a hub id, a Parquet folder
                 or a save_to_disk folder with columns image and depth, depth as 16-bit PNG in metres * 256, as KITTI
                 ships it). The input and its depth are KB-cropped (352 x 1216, bottom-centred, as BTS --do_kb_crop);
                 valid depth: 1e-3 < d < 80 m inside the Garg crop (computed on the full-size map, as BTS),
                 predictions clipped to [1e-3, 80].
  --dataset without --benchmark: columns image / depth, --depth-scale 1, no cap, no crop (set what differs).

Relative depth (--alignment): the metrics need metric depth. DPT-Large / DPT-Hybrid (MiDaS) and relative Depth
Anything predict inverse depth up to an unknown scale *and shift*; median scaling cannot undo a shift in inverse
depth, so `disparity` (the default for these models) follows the MiDaS zero-shot protocol: per image, fit s and t by
least squares so that s * prediction + t matches 1 / depth on the valid pixels, cap at 1 / max depth, invert.
`median` (median(gt) / median(prediction)) is for models that predict depth up to scale only; `none` for metric
models (metric Depth Anything, DPT with a DINOv2 backbone such as facebook/dpt-dinov2-*-nyu/kitti, DPT fine-tuned on
NYUv2/KITTI). `auto`: Depth Anything's config says relative or metric; other DPT checkpoints count as relative (the
hub's Intel/dpt-* are MiDaS models) unless they use a DINOv2 backbone. Pass --alignment none for a DPT-Large/Hybrid
fine-tuned for metric depth.

Undecodable images are skipped and listed with their dataset index; a model that is not a depth model, a dataset
without the columns, or depth maps without a single valid pixel (wrong --depth-scale) stop the run before any model
is loaded.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Mapping, Sequence

import numpy as np

from hf_expedite import AutoModelForDepthEstimation
from hf_expedite.evaluation import PARQUET_REVISION
from hf_expedite.evaluation.runner import (
    Benchmark,
    EvaluationTask,
    Reference,
    build_parser,
    cli,
    resolve_options,
    run,
)
from hf_expedite.metrics import load_metric

CROPS = ("none", "eigen", "garg")
EIGEN_CROP = (45, 471, 41, 601)  # NYUv2 (Eigen et al. 2014): rows 45:471, columns 41:601 of 480 x 640, as BTS
GARG_CROP = (0.40810811, 0.99189189, 0.03594771, 0.96405229)  # KITTI (Garg et al. 2016): fractions, as BTS
KB_CROP = (352, 1216)  # KITTI benchmark crop (height, width), bottom-centred, as BTS --do_kb_crop
ALIGNMENTS = ("auto", "none", "median", "disparity")
AGGREGATIONS = ("per-image", "pooled")

BENCHMARKS = {
    "nyu": Benchmark(
        "NYUv2 Eigen test split, 654 images",
        dataset="sayakpaul/nyu_depth_v2",
        revision=PARQUET_REVISION,
        options={
            "split": "validation",
            "image_column": "image",
            "depth_column": "depth_map",
            "depth_scale": 1.0,
            "min_depth": 1e-3,
            "max_depth": 10.0,
            "crop": "eigen",
            "kb_crop": False,
        },
    ),
    "kitti": Benchmark(
        "KITTI Eigen test split, depth PNGs in metres * 256",
        dataset=None,
        options={
            "split": "test",
            "image_column": "image",
            "depth_column": "depth",
            "depth_scale": 256.0,
            "min_depth": 1e-3,
            "max_depth": 80.0,
            "crop": "garg",
            "kb_crop": True,
        },
    ),
}
GENERIC = {
    "split": "validation",
    "image_column": "image",
    "depth_column": "depth",
    "depth_scale": 1.0,
    "min_depth": 1e-3,
    "crop": "none",
    "kb_crop": False,
}


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


def parse_args(argv: Sequence[str] | None = None) -> Any:
    parser = build_parser(__doc__, BENCHMARKS)
    depth = parser.add_argument_group("depth")
    depth.add_argument("--depth-column", help="column with the reference depth maps (nyu: depth_map)")
    depth.add_argument("--depth-scale", type=float, help="stored value / scale = metres (kitti: 256)")
    depth.add_argument("--min-depth", type=float, help="smallest valid depth in metres (default: 1e-3)")
    depth.add_argument("--max-depth", type=float, help="largest valid depth and prediction cap (nyu: 10, kitti: 80)")
    depth.add_argument("--crop", choices=CROPS, help="valid-pixel crop (nyu: eigen, kitti: garg)")
    depth.add_argument(
        "--kb-crop",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="KB-crop input and depth to 352 x 1216, bottom-centred (kitti: on)",
    )
    depth.add_argument("--alignment", choices=ALIGNMENTS, default="auto", help="see above (default: auto)")
    depth.add_argument(
        "--aggregation",
        choices=AGGREGATIONS,
        default="per-image",
        help="per-image: each metric per image, then averaged (default, the published protocol); pooled: all pixels",
    )
    return resolve_options(parser.parse_args(argv), BENCHMARKS, GENERIC)


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Run the evaluation; the report's JSON payload on the main process, None on the others."""
    return run(parse_args(argv), DepthTask, make_task)


if __name__ == "__main__":
    sys.exit(cli(main))
