#!/usr/bin/env python
"""Semantic segmentation: a model and its expedited twin, side by side, on ADE20K (default) or your dataset.

    python scripts/evaluate_semantic_segmentation.py Intel/dpt-large-ade --max-samples 200
    python scripts/evaluate_semantic_segmentation.py facebook/mask2former-swin-large-ade-semantic \
        --expedite ade20k-semantic
    python scripts/evaluate_semantic_segmentation.py MODEL --dataset me/my-seg --label-column mask --no-reduce-labels
    accelerate launch scripts/evaluate_semantic_segmentation.py MODEL     # several GPUs: same numbers, shared work

Models: DPT segmentation (DPTForSemanticSegmentation, e.g. Intel/dpt-large-ade), UperNet with a Swin backbone
(UperNetForSemanticSegmentation, e.g. openmmlab/upernet-swin-base) and universal segmentation models
(Mask2Former, through its semantic inference: softmax class scores times mask probabilities summed over queries).

Protocol (--protocol published, the default of the ade20k benchmark): single scale, per model family as the
published numbers were measured:
  DPT          mmseg's sliding-window test (`slide_inference`): short side = the window = the checkpoint's training
               crop (config.image_size, 480 for Intel/dpt-large-ade), aspect ratio kept, windows every 2/3 of the
               window (mmseg's DPT stride 341 for 512), class scores averaged where windows overlap.
  Mask2Former  detectron2's whole-image test: short side 512 (640 for Swin-L, trained on 640 crops), long side at most
               2048 (2560), zero-padded to multiples of 32, scores cropped back to the image.
  UperNet      mmseg's whole-image test (`whole_inference`, Resize scale (2048, 512) keep_ratio): short side 512, long
               side at most 2048, no padding (the Swin backbone pads to its windows itself).
Scores are resized (bilinear) to each label map's size before the arg max. --protocol processor uses the image
processor's own resizing on the whole image (the default for a custom --dataset); --inference, --short-side,
--max-long-side, --crop-size and --stride override single choices. The expedited model runs on the same windows.
Writes <output-dir>/semantic_segmentation.md (mIoU, mean accuracy, overall accuracy, images/s and latency of both
models, expedited / vanilla ratios) and .json (with per-category IoU and accuracy).

Dataset (--benchmark):
  ade20k (default)  zhoubolei/scene_parse_150 (the MIT Scene Parsing benchmark = ADE20K-150), config scene_parsing,
                    split "validation" (2000 images), columns image / annotation. The repository is script-based,
                    which `datasets` 4+ no longer runs, so it is read from the hub's automatic Parquet export
                    (--revision refs/convert/parquet, the default). Annotations hold 0 = "other" and 1..150: with
                    --reduce-labels (the default here) 0 is ignored and 1..150 become the models' labels 0..149.
  --dataset without --benchmark: columns image / label; labels reduced only if the image processor says so
                    (do_reduce_labels); --reduce-labels / --no-reduce-labels override.

Labels: after --label-map (JSON {dataset id: model id}, inline or a file) and --reduce-labels, every label must be
--ignore-index (default 255) or lie in [0, num_labels) of the model; the first --check-samples label maps are checked
before any model is loaded (an error names the sample and the labels), later bad samples are skipped and listed, as
are undecodable images. A model that is not a segmentation model stops the run before any weight is read.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from hf_expedite_cli.errors import cli
from hf_expedite_cli.options import PARQUET_REVISION, Benchmark, build_parser, positive_int, resolve_options

BENCHMARKS = {
    "ade20k": Benchmark(
        "ADE20K-150 (MIT Scene Parsing) validation, 2000 images",
        dataset="zhoubolei/scene_parse_150",
        config="scene_parsing",
        revision=PARQUET_REVISION,
        options={
            "split": "validation",
            "image_column": "image",
            "label_column": "annotation",
            "reduce_labels": True,
            "protocol": "published",
        },
    ),
}
GENERIC = {"split": "validation", "image_column": "image", "label_column": "label", "protocol": "processor"}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser(__doc__, BENCHMARKS)
    labels = parser.add_argument_group("labels")
    labels.add_argument("--label-column", help="column with the reference label maps (ade20k: annotation)")
    labels.add_argument(
        "--reduce-labels",
        action=argparse.BooleanOptionalAction,
        help="0 -> ignored, k -> k - 1 (ade20k: on; custom dataset: the image processor's do_reduce_labels)",
    )
    labels.add_argument("--ignore-index", type=int, default=255, help="label value left out (default: 255)")
    labels.add_argument("--label-map", help="JSON {dataset id: model id}, inline or a file, applied first")
    protocol = parser.add_argument_group("protocol")
    protocol.add_argument(
        "--protocol",
        choices=("published", "processor"),
        help="published: the checkpoint family's test protocol (ade20k default); processor: its image processor",
    )
    protocol.add_argument("--inference", choices=("whole", "slide"), help="override: whole image or sliding window")
    protocol.add_argument("--short-side", type=positive_int, help="override: test-time short side")
    protocol.add_argument("--max-long-side", type=positive_int, help="override: long side cap")
    protocol.add_argument("--crop-size", type=positive_int, help="override: sliding window size")
    protocol.add_argument("--stride", type=positive_int, help="override: sliding window stride")
    return resolve_options(parser.parse_args(argv), BENCHMARKS, GENERIC)


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    """Run the evaluation; the report's JSON payload on the main process, None on the others."""
    args = parse_args(argv)  # before the heavy imports: --help and a bad option answer at once
    from hf_expedite.evaluation.runner import run
    from hf_expedite.evaluation.tasks.semantic_segmentation import SemanticSegmentationTask, make_task

    return run(args, SemanticSegmentationTask, make_task)


if __name__ == "__main__":
    sys.exit(cli(main))
