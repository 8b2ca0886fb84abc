"""Panoptic segmentation against panoptic maps and segment lists (``scripts/evaluate_panoptic.py``): category
mapping, Mask2Former's own inference protocol, the task."""

from __future__ import annotations

import argparse
from typing import Any, Mapping, Sequence

import numpy as np
import torch.nn.functional as F
from transformers import BatchFeature

from ...auto import AutoModelForUniversalSegmentation
from ...metrics import load_metric
from ..protocols import crop_and_resize, pad_to_multiple, panoptic_inference, resize_short_side, valid_region
from ..runner import EvaluationTask, Reference, load_json_option, panoptic_post_processing, parse_ids


def category_to_label(mapping: Mapping[Any, Any], id2label: Mapping[int, str]) -> dict[int, int]:
    """{dataset category id: model label id} from a JSON mapping whose values are label ids or class names (matched
    to the model's ``id2label`` case-insensitively); unknown names raise a ValueError listing them."""
    by_name = {name.lower(): int(label) for label, name in id2label.items()}
    out, unknown = {}, []
    for category, value in mapping.items():
        if isinstance(value, str):
            if value.lower() not in by_name:
                unknown.append(value)
                continue
            value = by_name[value.lower()]
        out[int(category)] = int(value)
    if unknown:
        raise ValueError(f"--label-map names {unknown[:10]} are not classes of the model (id2label).")
    return out


def segment_ids(value: Any, column: str, index: int) -> np.ndarray:
    """A panoptic map as int64 segment ids: RGB PNGs decode as R + 256 G + 256^2 B (COCO), one-channel maps as is."""
    array = np.asarray(value)
    if array.ndim == 3 and array.shape[-1] >= 3 and np.issubdtype(array.dtype, np.integer):
        rgb = array[..., :3].astype(np.int64)
        return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"Image {index}: column {column!r} holds a {array.dtype} array of shape {array.shape}; expected a "
            "panoptic map (RGB-encoded ids or a one-channel id image)."
        )
    return array.astype(np.int64)


class PanopticTask(EvaluationTask):
    """Panoptic maps against reference segments, with the bundled `panoptic_quality` metric (labels as the model's)."""

    name = "panoptic"
    title = "Panoptic segmentation"
    kind = "panoptic segmentation"
    auto_classes = (AutoModelForUniversalSegmentation,)

    def __init__(
        self,
        *,
        panoptic_column: str,
        segments_column: str,
        num_labels: int,
        label_map: dict[int, int] | None,
        thing_ids: set[int] | None,
        threshold: float,
        mask_threshold: float,
        overlap_threshold: float,
        short_side: int | None = None,
        max_long_side: int | None = None,
    ) -> None:
        self.label_columns = (panoptic_column, segments_column)
        self.resize = None if short_side is None else (short_side, max_long_side)
        self.panoptic_column, self.segments_column = panoptic_column, segments_column
        self.num_labels = num_labels
        self.label_map = label_map
        self.thing_ids = thing_ids
        self.post_processing = panoptic_post_processing(
            num_labels, thing_ids, threshold, mask_threshold, overlap_threshold
        )
        self.metric = load_metric("panoptic_quality")

    def _label(self, category: int) -> int | None:
        label = category if self.label_map is None else self.label_map.get(category)
        return label if label is not None and 0 <= label < self.num_labels else None

    def reference(self, index: int, columns: Mapping[str, Any]) -> Reference:
        ids = segment_ids(columns[self.panoptic_column], self.panoptic_column, index)
        segments, unknown = [], set()
        for segment in columns[self.segments_column] or []:
            category = int(segment["category_id"])
            label = self._label(category)
            if label is None:
                unknown.add(category)
                continue
            crowd = int(segment.get("iscrowd") or 0)
            segments.append({"id": int(segment["id"]), "category_id": label, "iscrowd": crowd})
        if unknown:
            if self.label_map is not None:
                where = "have no entry in --label-map"
            else:
                where = f"lie outside the model's labels [0, {self.num_labels}) (map them with --label-map)"
            raise ValueError(f"Image {index}: segment category ids {sorted(unknown)[:10]} {where}.")
        self.metric.image_statistics(np.zeros_like(ids), ids, [], segments, index=index)  # checks the segment list
        return Reference(ids, segments)

    def preprocess(self, processor: Any, image: Any) -> BatchFeature:
        if self.resize is None:
            return pad_to_multiple(processor(images=image, return_tensors="pt"), 32)
        image = resize_short_side(image, *self.resize)
        return pad_to_multiple(processor(images=image, do_resize=False, return_tensors="pt"), 32)

    def predictions(
        self, processor: Any, outputs: Any, sizes: Sequence[tuple[int, int]], inputs: Mapping[str, Any]
    ) -> list[tuple]:
        padded = tuple(inputs["pixel_values"].shape[-2:])
        results = []
        for index, size in enumerate(sizes):
            masks = F.interpolate(
                outputs.masks_queries_logits[index : index + 1].float(), size=padded, mode="bilinear",
                align_corners=False,
            )[0]
            masks = crop_and_resize(masks, valid_region(inputs, index), size)
            segmentation, segments = panoptic_inference(
                outputs.class_queries_logits[index],
                masks,
                self.thing_ids or (),
                threshold=self.post_processing["threshold"],
                overlap_threshold=self.post_processing["overlap_mask_area_threshold"],
                mask_threshold=self.post_processing["mask_threshold"],
            )
            results.append((segmentation.cpu().numpy(), segments))
        return results

    def statistics(self, prediction: tuple, reference: Reference, index: int) -> dict:
        segmentation, segments = prediction
        return self.metric.image_statistics(segmentation, reference.map, segments, reference.info, index=index)

    def metrics(self, statistics: Sequence[dict]) -> dict[str, Any]:
        return self.metric.metrics_from_statistics(statistics, self.thing_ids)

    def metadata(self) -> dict[str, Any]:
        things = "unknown (no split, nothing fused)" if not self.thing_ids else f"{len(self.thing_ids)} classes"
        return {
            "segments": f"columns {self.panoptic_column!r} / {self.segments_column!r}, {self.num_labels} classes, "
            f"category map: {'yes' if self.label_map is not None else 'identity'}, things: {things}",
            "post-processing": "Mask2Former panoptic inference, "
            + ", ".join(f"{k}={v}" for k, v in self.post_processing.items() if k != "label_ids_to_fuse"),
            "input size": "the image processor's" if self.resize is None
            else f"short side {self.resize[0]}, long side <= {self.resize[1]}, padded to multiples of 32",
        }


def make_task(args: argparse.Namespace, config: Any, processor: Any) -> PanopticTask:
    id2label = {int(label): name for label, name in config.id2label.items()}
    label_map = category_to_label(load_json_option(args.label_map), id2label) if args.label_map else None
    if args.thing_ids is not None:
        thing_ids = parse_ids(args.thing_ids)
    else:
        thing_ids = set((getattr(processor, "metadata", None) or {}).get("thing_ids", ())) or None
    return PanopticTask(
        panoptic_column=args.panoptic_column,
        segments_column=args.segments_column,
        num_labels=len(id2label),
        label_map=label_map,
        thing_ids=thing_ids,
        threshold=args.threshold,
        mask_threshold=args.mask_threshold,
        overlap_threshold=args.overlap_threshold,
        short_side=args.short_side,
        max_long_side=args.max_long_side,
    )
