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
from typing import Any, Sequence

from hf_expedite_cli.errors import cli
from hf_expedite_cli.options import PARQUET_REVISION, Benchmark, build_parser, resolve_options

CROPS = ("none", "eigen", "garg")
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
    args = parse_args(argv)  # before the heavy imports: --help and a bad option answer at once
    from hf_expedite.evaluation.runner import run
    from hf_expedite.evaluation.tasks.depth import DepthTask, make_task

    return run(args, DepthTask, make_task)


if __name__ == "__main__":
    sys.exit(cli(main))
