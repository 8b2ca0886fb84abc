"""Semantic segmentation against label maps (``scripts/evaluate_semantic_segmentation.py``): the published test-time
protocols per checkpoint family, label conventions, the task."""

from __future__ import annotations

import argparse
import inspect
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from transformers import BatchFeature

from ...auto import AutoModelForSemanticSegmentation, AutoModelForUniversalSegmentation
from ...metrics import load_metric
from ..protocols import (
    crop_and_resize,
    pad_to_multiple,
    resize_short_side,
    semantic_scores,
    semantic_scores_at,
    slide_inference,
    valid_region,
)
from ..runner import EvaluationTask, Reference, load_json_option


def published_protocol(config: Any) -> dict[str, Any]:
    """The test-time protocol of a checkpoint family (see the module docstring): inference mode, resize, window."""
    if config.model_type in ("dpt", "expedited_dpt"):
        image_size = config.image_size if isinstance(config.image_size, int) else min(config.image_size)
        return {"inference": "slide", "short_side": image_size, "max_long_side": None, "crop_size": image_size,
                "stride": image_size * 2 // 3, "pad_multiple": None}  # fmt: skip
    if config.model_type in ("upernet", "expedited_upernet"):  # mmseg's whole test, scale (2048, 512), no padding
        return {"inference": "whole", "short_side": 512, "max_long_side": 2048, "crop_size": None, "stride": None,
                "pad_multiple": None}  # fmt: skip
    backbone = getattr(config, "backbone_config", None)
    large = getattr(backbone, "embed_dim", 0) >= 192  # Swin-L: trained on 640 x 640 crops
    return {"inference": "whole", "short_side": 640 if large else 512, "max_long_side": 2560 if large else 2048,
            "crop_size": None, "stride": None, "pad_multiple": 32}  # fmt: skip


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
        multiple = self.protocol.get("pad_multiple")
        return pad_to_multiple(inputs, multiple) if multiple and self.protocol["inference"] == "whole" else inputs

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
        multiple = protocol.get("pad_multiple")
        padding = f" (padded to multiples of {multiple})" if multiple else ""
        return f"{resize}; whole image{padding}, single scale"


def make_task(args: argparse.Namespace, config: Any, processor: Any) -> SemanticSegmentationTask:
    reduce_labels = args.reduce_labels
    if reduce_labels is None:
        reduce_labels = bool(getattr(processor, "do_reduce_labels", False))
    label_map = None
    if args.label_map:
        label_map = {int(key): int(value) for key, value in load_json_option(args.label_map).items()}
    protocol = published_protocol(config) if args.protocol == "published" else {
        "inference": "whole", "short_side": None, "max_long_side": None, "crop_size": None, "stride": None,
        "pad_multiple": 32,
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
