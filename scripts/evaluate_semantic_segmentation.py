#!/usr/bin/env python
"""Semantic segmentation: a model and its expedited twin, side by side, on ADE20K (default) or your dataset.

    python scripts/evaluate_semantic_segmentation.py Intel/dpt-large-ade --max-samples 200
    python scripts/evaluate_semantic_segmentation.py facebook/mask2former-swin-large-ade-semantic \
        --expedite ade20k-semantic
    python scripts/evaluate_semantic_segmentation.py MODEL --dataset me/my-seg --label-column mask --no-reduce-labels
    accelerate launch scripts/evaluate_semantic_segmentation.py MODEL     # several GPUs: same numbers, shared work

Models: DPT segmentation (DPTForSemanticSegmentation, e.g. Intel/dpt-large-ade) and universal segmentation models
(Mask2Former, through its semantic inference: softmax class scores times mask probabilities summed over queries).

Protocol (--protocol published, the default of the ade20k benchmark): single scale, per model family as the
published numbers were measured:
  DPT          mmseg's sliding-window test (`slide_inference`): short side = the window = the checkpoint's training
               crop (config.image_size, 480 for Intel/dpt-large-ade), aspect ratio kept, windows every 2/3 of the
               window (mmseg's DPT stride 341 for 512), class scores averaged where windows overlap.
  Mask2Former  detectron2's whole-image test: short side 512 (640 for Swin-L, trained on 640 crops), long side at most
               2048 (2560), zero-padded to multiples of 32, scores cropped back to the image.
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
import inspect
import sys
from typing import Any, Mapping, Sequence

import numpy as np

import torch
from transformers import BatchFeature

from hf_expedite import AutoModelForSemanticSegmentation, AutoModelForUniversalSegmentation
from hf_expedite.evaluation import PARQUET_REVISION
from hf_expedite.evaluation.protocols import (
    crop_and_resize,
    pad_to_multiple,
    resize_short_side,
    semantic_scores,
    semantic_scores_at,
    slide_inference,
    valid_region,
)
from hf_expedite.evaluation.runner import (
    Benchmark,
    EvaluationTask,
    Reference,
    build_parser,
    cli,
    load_json_option,
    positive_int,
    resolve_options,
    run,
)
from hf_expedite.metrics import load_metric

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


def published_protocol(config: Any) -> dict[str, Any]:
    """The test-time protocol of a checkpoint family (see the module docstring): inference mode, resize, window."""
    if config.model_type in ("dpt", "expedited_dpt"):
        image_size = config.image_size if isinstance(config.image_size, int) else min(config.image_size)
        return {"inference": "slide", "short_side": image_size, "max_long_side": None, "crop_size": image_size,
                "stride": image_size * 2 // 3}  # fmt: skip
    backbone = getattr(config, "backbone_config", None)
    large = getattr(backbone, "embed_dim", 0) >= 192  # Swin-L: trained on 640 x 640 crops
    return {"inference": "whole", "short_side": 640 if large else 512, "max_long_side": 2560 if large else 2048,
            "crop_size": None, "stride": None}  # fmt: skip


def label_array(value: Any, column: str, index: int) -> np.ndarray:
    """A decoded label image (or nested list) as a 2-D int64 array; a ValueError for anything else."""
    labels = np.asarray(value)
    if labels.ndim == 3 and labels.shape[-1] == 1:
        labels = labels[..., 0]
    if labels.ndim != 2 or not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.bool_)):
        raise ValueError(
            f"Image {index}: column {column!r} holds a {labels.dtype} array of shape {labels.shape}; expected a "
            "single-channel 2-D map of class ids (a mode L, P or I image)."
        )
    return labels.astype(np.int64)


class SemanticSegmentationTask(EvaluationTask):
    """Label maps against reference label maps, with the bundled `mean_iou` metric."""

    name = "semantic_segmentation"
    title = "Semantic segmentation"
    kind = "semantic segmentation"
    auto_classes = (AutoModelForSemanticSegmentation, AutoModelForUniversalSegmentation)

    def __init__(
        self,
        *,
        label_column: str,
        num_labels: int,
        ignore_index: int,
        reduce_labels: bool,
        label_map: dict[int, int] | None,
        protocol: Mapping[str, Any] | None = None,
    ) -> None:
        self.label_columns = (label_column,)
        self.protocol = dict(protocol or {"inference": "whole", "short_side": None})
        slide = self.protocol["inference"] == "slide"
        if slide and not (self.protocol.get("crop_size") and self.protocol.get("stride")):
            raise ValueError("Sliding-window inference needs --crop-size and --stride.")
        self.label_column = label_column
        self.options = {
            "num_labels": num_labels,
            "ignore_index": ignore_index,
            "label_map": label_map,
            "reduce_labels": reduce_labels,
        }
        self.metric = load_metric("mean_iou")

    def reference(self, index: int, columns: Mapping[str, Any]) -> Reference:
        labels = label_array(columns[self.label_column], self.label_column, index)
        try:
            self.metric.image_statistics(np.zeros_like(labels), labels, index=index, **self.options)
        except ValueError as error:
            raise ValueError(f"{error} Options: --reduce-labels, --ignore-index, --label-map.") from None
        return Reference(labels)

    def preprocess(self, processor: Any, image: Any) -> BatchFeature:
        if self.protocol["short_side"] is None:
            return processor(images=image, return_tensors="pt")  # the processor's protocol, as it is
        image = resize_short_side(image, self.protocol["short_side"], self.protocol["max_long_side"])
        inputs = processor(images=image, do_resize=False, return_tensors="pt")
        return pad_to_multiple(inputs, 32) if self.protocol["inference"] == "whole" else inputs

    def infer(self, model: torch.nn.Module, inputs: Mapping[str, torch.Tensor]) -> Any:
        """One forward pass (its outputs), or the class scores of averaged sliding windows at the input size."""
        pixel_values = inputs["pixel_values"]
        if self.protocol["inference"] == "slide":
            def window_scores(window: torch.Tensor) -> torch.Tensor:
                return semantic_scores(model(pixel_values=window), tuple(window.shape[-2:]))

            return slide_inference(pixel_values, self.protocol["crop_size"], self.protocol["stride"], window_scores)
        arguments = {"pixel_values": pixel_values}
        if "pixel_mask" in inputs and "pixel_mask" in inspect.signature(model.forward).parameters:
            arguments["pixel_mask"] = inputs["pixel_mask"]
        return model(**arguments)

    def predictions(
        self, processor: Any, outputs: Any, sizes: Sequence[tuple[int, int]], inputs: Mapping[str, Any]
    ) -> list[np.ndarray]:
        if self.protocol["short_side"] is None and self.protocol["inference"] == "whole":
            maps = processor.post_process_semantic_segmentation(outputs, target_sizes=list(sizes))
            return [labels.cpu().numpy() for labels in maps]
        padded = tuple(inputs["pixel_values"].shape[-2:])
        maps = []
        for index, size in enumerate(sizes):
            valid = valid_region(inputs, index)
            if isinstance(outputs, torch.Tensor):  # sliding-window scores at the input size
                scores = crop_and_resize(outputs[index], valid, size)
            else:
                scores = semantic_scores_at(outputs, index, padded, valid, size)
            maps.append(scores.argmax(0).cpu().numpy())
        return maps

    def statistics(self, prediction: np.ndarray, reference: Reference, index: int) -> np.ndarray:
        return self.metric.image_statistics(prediction, reference.map, index=index, **self.options)

    def metrics(self, statistics: Sequence[np.ndarray]) -> dict[str, Any]:
        return self.metric.metrics_from_statistics(statistics, self.options["num_labels"])

    def metadata(self) -> dict[str, Any]:
        return {
            "labels": f"column {self.label_column!r}, {self.options['num_labels']} classes, reduce_labels="
            f"{self.options['reduce_labels']}, ignore_index={self.options['ignore_index']}"
            + (f", label_map={self.options['label_map']}" if self.options["label_map"] else ""),
            "protocol": self._describe_protocol(),
        }

    def _describe_protocol(self) -> str:
        protocol = self.protocol
        if protocol["short_side"] is None:
            resize = "the image processor's resizing"
        else:
            cap = f", long side <= {protocol['max_long_side']}" if protocol["max_long_side"] else ""
            resize = f"short side {protocol['short_side']}{cap}"
        if protocol["inference"] == "slide":
            return f"{resize}; sliding window {protocol['crop_size']}, stride {protocol['stride']}, scores averaged"
        return f"{resize}; whole image (padded to multiples of 32), single scale"


def make_task(args: argparse.Namespace, config: Any, processor: Any) -> SemanticSegmentationTask:
    reduce_labels = args.reduce_labels
    if reduce_labels is None:
        reduce_labels = bool(getattr(processor, "do_reduce_labels", False))
    label_map = None
    if args.label_map:
        label_map = {int(key): int(value) for key, value in load_json_option(args.label_map).items()}
    protocol = published_protocol(config) if args.protocol == "published" else {
        "inference": "whole", "short_side": None, "max_long_side": None, "crop_size": None, "stride": None
    }  # fmt: skip
    for name in ("inference", "short_side", "max_long_side", "crop_size", "stride"):
        if getattr(args, name) is not None:
            protocol[name] = getattr(args, name)
    return SemanticSegmentationTask(
        label_column=args.label_column,
        num_labels=len(config.id2label),
        ignore_index=args.ignore_index,
        reduce_labels=reduce_labels,
        label_map=label_map,
        protocol=protocol,
    )


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
    return run(parse_args(argv), SemanticSegmentationTask, make_task)


if __name__ == "__main__":
    sys.exit(cli(main))
