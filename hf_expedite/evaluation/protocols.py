"""The inference protocols of the published segmentation evaluations: test-time resizing, sliding-window inference,
semantic probabilities from DPT or Mask2Former outputs, and Mask2Former's panoptic inference.

Each follows a reference implementation (named in the function docstrings and in the README's protocol tables) so
that a checkpoint evaluated here gets the number its authors published; the expedited twin runs the very same steps.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

import PIL.Image
import torch
import torch.nn.functional as F
from transformers import BatchFeature


def short_side_size(height: int, width: int, short: int, long_max: int | None) -> tuple[int, int]:
    """(height, width) after scaling the short side to ``short`` with the long side at most ``long_max``, keeping the
    aspect ratio (detectron2's ``ResizeShortestEdge`` and mmseg's ``Resize(keep_ratio=True)``: rounded half up)."""
    scale = short / min(height, width)
    if long_max is not None and max(height, width) * scale > long_max:
        scale = long_max / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def resize_short_side(image: PIL.Image.Image, short: int, long_max: int | None) -> PIL.Image.Image:
    """``image`` resized (bilinear) by :func:`short_side_size`."""
    height, width = short_side_size(image.height, image.width, short, long_max)
    if (height, width) == (image.height, image.width):
        return image
    return image.resize((width, height), PIL.Image.BILINEAR)


def pad_to_multiple(inputs: BatchFeature, multiple: int) -> BatchFeature:
    """``pixel_values`` zero-padded at the bottom and right to multiples of ``multiple`` (after normalisation, as
    detectron2's ``ImageList.from_tensors(size_divisibility=32)``), with a ``pixel_mask`` marking the image."""
    values = inputs["pixel_values"]
    height, width = values.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    mask = inputs.get("pixel_mask")
    if mask is None:
        mask = torch.ones(values.shape[0], height, width, dtype=torch.long)
    return BatchFeature({
        **inputs,
        "pixel_values": F.pad(values, (0, pad_w, 0, pad_h)),
        "pixel_mask": F.pad(mask, (0, pad_w, 0, pad_h)),
    })


def sliding_windows(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """(top, bottom, left, right) of the windows mmseg's ``slide_inference`` visits: a grid with ``stride``, the
    last window along each axis moved back to end at the border, every window at most ``crop`` wide."""
    def starts(size: int) -> list[int]:
        count = max(size - crop + stride - 1, 0) // stride + 1
        return [max(min(index * stride + crop, size) - crop, 0) for index in range(count)]

    return [
        (top, min(top + crop, height), left, min(left + crop, width))
        for top in starts(height)
        for left in starts(width)
    ]


def slide_inference(
    pixel_values: torch.Tensor, crop: int, stride: int, window_logits: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Class scores ``(B, C, H, W)`` for ``(B, 3, H, W)`` inputs by sliding windows: ``window_logits`` maps a
    ``(B, 3, h, w)`` window to ``(B, C, h, w)`` scores; scores are summed over overlapping windows and divided by the
    number of windows covering each pixel (mmseg's ``slide_inference``). Along a side shorter than ``crop`` the window
    is the whole side, as in mmseg: a window that covers the image is whole-image inference."""
    batch, _, height, width = pixel_values.shape
    total, count = None, pixel_values.new_zeros(1, 1, height, width)
    for top, bottom, left, right in sliding_windows(height, width, crop, stride):
        scores = window_logits(pixel_values[:, :, top:bottom, left:right])
        if total is None:
            total = scores.new_zeros(batch, scores.shape[1], height, width)
        total[:, :, top:bottom, left:right] += scores
        count[:, :, top:bottom, left:right] += 1
    return total / count


def valid_region(inputs: Mapping[str, Any], index: int) -> tuple[int, int]:
    """(height, width) of image ``index`` inside its padded ``pixel_values``: from ``pixel_mask`` when the processor
    padded, else the whole input."""
    mask = inputs.get("pixel_mask")
    if mask is None:
        return tuple(inputs["pixel_values"].shape[-2:])
    rows, cols = mask[index].bool().any(1), mask[index].bool().any(0)
    return int(rows.nonzero().max()) + 1, int(cols.nonzero().max()) + 1


def semantic_scores(outputs: Any, size: tuple[int, int]) -> torch.Tensor:
    """Per-class scores ``(B, C, *size)`` at the input size: DPT-style ``logits`` upsampled (bilinear), or Mask2Former's
    ``softmax(class) x sigmoid(mask)`` summed over queries (its semantic inference), masks upsampled first."""
    if getattr(outputs, "logits", None) is not None:
        return F.interpolate(outputs.logits.float(), size=size, mode="bilinear", align_corners=False)
    classes = outputs.class_queries_logits.float().softmax(-1)[..., :-1]
    masks = F.interpolate(outputs.masks_queries_logits.float(), size=size, mode="bilinear", align_corners=False)
    return torch.einsum("bqc,bqhw->bchw", classes, masks.sigmoid())


def semantic_scores_at(
    outputs: Any, index: int, padded: tuple[int, int], valid: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    """Image ``index``'s class scores ``(C, *size)`` from one forward pass on a padded input: logits (DPT) or mask
    logits (Mask2Former) upsampled to the ``padded`` input, cropped to the ``valid`` image, resized to ``size``;
    Mask2Former's masks only then become probabilities and meet the class scores (detectron2's
    ``sem_seg_postprocess`` followed by ``semantic_inference``)."""
    if getattr(outputs, "logits", None) is not None:
        logits = F.interpolate(outputs.logits[index : index + 1].float(), size=padded, mode="bilinear")
        return crop_and_resize(logits[0], valid, size)
    masks = F.interpolate(outputs.masks_queries_logits[index : index + 1].float(), size=padded, mode="bilinear")
    masks = crop_and_resize(masks[0], valid, size).sigmoid()
    classes = outputs.class_queries_logits[index].float().softmax(-1)[..., :-1]
    return torch.einsum("qc,qhw->chw", classes, masks)


def crop_and_resize(scores: torch.Tensor, valid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """``(..., H, W)`` maps at the padded input size -> the valid (unpadded) region -> ``size`` (bilinear): detectron2's
    ``sem_seg_postprocess``."""
    scores = scores[..., : valid[0], : valid[1]]
    if tuple(scores.shape[-2:]) == tuple(size):
        return scores
    squeeze = scores.dim() == 3
    resized = F.interpolate(scores[None] if squeeze else scores, size=size, mode="bilinear", align_corners=False)
    return resized[0] if squeeze else resized


def panoptic_inference(
    class_logits: torch.Tensor,
    mask_logits: torch.Tensor,
    thing_ids: Collection[int],
    threshold: float = 0.8,
    overlap_threshold: float = 0.8,
    mask_threshold: float = 0.5,
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Mask2Former's panoptic inference for one image: ``class_logits`` ``(Q, C + 1)`` (last = no object),
    ``mask_logits`` ``(Q, H, W)`` at the output size. Returns int64 segment ids ``(H, W)`` (0 = void) and the segments
    ``{"id", "label_id", "was_fused", "score"}``.

    Queries with a non-void class scoring above ``threshold`` compete per pixel by ``score x mask probability``; a
    query keeps the pixels it wins where its mask probability is at least ``mask_threshold``, and is dropped when that
    is less than ``overlap_threshold`` of its own mask. Every kept thing query is one segment; the queries of one stuff
    class form one segment. Segment ids are 1, 2, ... in query order: unique within the image.
    """
    scores, labels = class_logits.float().softmax(-1).max(-1)
    keep = (labels != class_logits.shape[-1] - 1) & (scores > threshold)
    scores, labels, probabilities = scores[keep], labels[keep], mask_logits.float()[keep].sigmoid()
    segmentation = torch.zeros(mask_logits.shape[-2:], dtype=torch.int64, device=mask_logits.device)
    segments: list[dict[str, Any]] = []
    if not len(labels):
        return segmentation, segments
    winner = (scores[:, None, None] * probabilities).argmax(0)
    stuff_segments: dict[int, dict[str, Any]] = {}
    for query, (score, label) in enumerate(zip(scores.tolist(), labels.tolist())):
        own = probabilities[query] >= mask_threshold
        won = winner == query
        pixels = won & own
        own_area, won_area, area = int(own.sum()), int(won.sum()), int(pixels.sum())
        if not (own_area and won_area and area) or won_area / own_area < overlap_threshold:
            continue
        if label not in thing_ids and label in stuff_segments:
            segmentation[pixels] = stuff_segments[label]["id"]
            stuff_segments[label]["was_fused"] = True
            continue
        segment = {"id": len(segments) + 1, "label_id": label, "was_fused": False, "score": round(score, 6)}
        segmentation[pixels] = segment["id"]
        segments.append(segment)
        if label not in thing_ids:
            stuff_segments[label] = segment
    return segmentation, segments
