#!/usr/bin/env python
"""Panoptic segmentation: a Mask2Former model and its expedited twin, side by side, on COCO panoptic (default) or
ADE20K panoptic.

    python scripts/evaluate_panoptic.py facebook/mask2former-swin-large-coco-panoptic --expedite coco-panoptic
    python scripts/evaluate_panoptic.py facebook/mask2former-swin-large-ade-panoptic --benchmark ade20k \\
        --dataset /data/ade20k_panoptic_val --thing-ids 7,8,10,12,14-15,...
    accelerate launch scripts/evaluate_panoptic.py MODEL --max-samples 500   # several GPUs: same numbers

Protocol (Mask2Former's own evaluation, detectron2 `MaskFormer.panoptic_inference` and its test-time resizing): the
input is resized keeping its aspect ratio, short side 800 with the long side at most 1333 (COCO) or short side 640,
long side at most 2560 (ADE20K) (--short-side / --max-long-side; a custom dataset keeps the image processor's
resizing), normalised by the image processor and zero-padded to multiples of 32; the mask logits are upsampled to the
padded input, cropped to the image and resized to the reference's size; queries scoring above --threshold 0.8 compete
per pixel, keep the pixels they win where their mask probability is >= --mask-threshold 0.5, and are dropped below
--overlap-threshold 0.8 of their own mask; each thing query is a segment and each stuff class one segment, with ids
unique per image (`hf_expedite.evaluation.protocols.panoptic_inference`). Writes <output-dir>/panoptic.md (PQ, SQ,
RQ overall / things / stuff, images/s and latency of both models, expedited / vanilla ratios) and .json (with
per-category scores).

Datasets (--benchmark):
  coco (default)  nielsr/coco-panoptic-val2017: the 5000 COCO val2017 images (split "train" of that repository) with
                  columns image, label (panoptic PNG, segment id = R + 256 G + 256^2 B, 0 = void) and segments_info
                  (id, category_id, iscrowd); a plain Parquet dataset, so it loads with `datasets` 4+ as is. Its
                  COCO category ids (1..200, with gaps) are matched by name to the model's labels through the 133
                  COCO panoptic categories shipped with the package (hf_expedite/evaluation/
                  coco_panoptic_categories.json, the panopticapi names); things are the model's labels 0-79 (the 80
                  COCO thing classes come first in every COCO-panoptic Mask2Former checkpoint).
  ade20k          No public ADE20K panoptic dataset on the hub: pass --dataset with the same three columns, e.g. built
                  from ADEChallengeData2016 + ade20k_panoptic_val (detectron2's prepare_ade20k_pan_seg.py), and
                  --thing-ids (the 100 thing classes) for the things / stuff split; category ids = model label ids
                  unless --label-map says otherwise.
  --dataset without --benchmark: columns image / label / segments_info, category ids = model label ids, things from
                  the image processor's metadata (thing_ids) if it has any.

Without thing ids, PQ is reported over all classes (no things / stuff split) and no class is fused. Before any model
is loaded, the first --check-samples references are decoded and every category is mapped (an error names the sample
and the unknown ids); later bad samples are skipped and listed, as are undecodable images.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from hf_expedite_cli.errors import cli
from hf_expedite_cli.options import COCO_PANOPTIC_CATEGORIES, Benchmark, build_parser, positive_int, resolve_options

COCO_CATEGORY_NAMES = str(COCO_PANOPTIC_CATEGORIES)  # {COCO category id: name}, the 133 panoptic categories

BENCHMARKS = {
    "coco": Benchmark(
        "COCO panoptic val2017, 5000 images",
        dataset="nielsr/coco-panoptic-val2017",
        options={
            "split": "train",
            "image_column": "image",
            "panoptic_column": "label",
            "segments_column": "segments_info",
            "label_map": COCO_CATEGORY_NAMES,
            "thing_ids": "0-79",
            "short_side": 800,
            "max_long_side": 1333,
        },
    ),
    "ade20k": Benchmark(
        "ADE20K panoptic validation (150 classes), columns image / label / segments_info",
        dataset=None,
        options={
            "split": "validation",
            "image_column": "image",
            "panoptic_column": "label",
            "segments_column": "segments_info",
            "short_side": 640,
            "max_long_side": 2560,
        },
    ),
}
GENERIC = {
    "split": "validation",
    "image_column": "image",
    "panoptic_column": "label",
    "segments_column": "segments_info",
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser(__doc__, BENCHMARKS)
    panoptic = parser.add_argument_group("panoptic")
    panoptic.add_argument("--panoptic-column", help="column with the panoptic maps (default: label)")
    panoptic.add_argument("--segments-column", help="column with the segment lists (default: segments_info)")
    panoptic.add_argument(
        "--label-map",
        help="JSON {dataset category id: model label id or class name}, inline, a file or hf://[datasets/]owner/repo/"
        "file (coco: the shipped COCO panoptic categories)",
    )
    panoptic.add_argument("--thing-ids", help="model label ids of thing classes, e.g. 0-79 (coco: 0-79)")
    panoptic.add_argument("--threshold", type=float, default=0.8, help="query score threshold (default: 0.8)")
    panoptic.add_argument("--mask-threshold", type=float, default=0.5, help="mask binarisation (default: 0.5)")
    panoptic.add_argument("--overlap-threshold", type=float, default=0.8, help="overlap area threshold (default: 0.8)")
    panoptic.add_argument("--short-side", type=positive_int, help="test-time short side (coco: 800, ade20k: 640)")
    panoptic.add_argument("--max-long-side", type=positive_int, help="long side cap (coco: 1333, ade20k: 2560)")
    return resolve_options(parser.parse_args(argv), BENCHMARKS, GENERIC)


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Run the evaluation; the report's JSON payload on the main process, None on the others."""
    args = parse_args(argv)  # before the heavy imports: --help and a bad option answer at once
    from hf_expedite.evaluation.runner import run
    from hf_expedite.evaluation.tasks.panoptic import PanopticTask, make_task

    return run(args, PanopticTask, make_task)


if __name__ == "__main__":
    sys.exit(cli(main))
