"""Label-free fidelity: how closely an expedited model agrees with its vanilla parent on the user's own images.

No labelled dataset is needed: the vanilla model's prediction is the reference. For depth, the Pearson correlation
and the mean relative difference of the depth maps; for semantic segmentation, the pixel agreement and the mean IoU
of the expedited labels against the vanilla labels; for panoptic segmentation, the panoptic quality against the
vanilla segments. This is what a user can look at to pick settings before any labelled evaluation.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

Task = Literal["depth", "semantic", "panoptic"]
TASKS: tuple[str, ...] = ("depth", "semantic", "panoptic")


@torch.inference_mode()
def predict(model: torch.nn.Module, processor: Any, image: Image.Image, task: Task) -> Any:
    """One image through ``processor`` -> ``model`` -> the processor's post-processing at the image's size.

    Returns a depth map (``float32`` array), a label map (``int64`` array), or a panoptic ``(segment_ids,
    segments_info)`` pair.
    """
    device = next(model.parameters()).device
    inputs = processor(images=image, return_tensors="pt").to(device)
    outputs = model(**inputs)
    size = [(image.height, image.width)]
    if task == "depth":
        depth = processor.post_process_depth_estimation(outputs, target_sizes=size)[0]["predicted_depth"]
        return depth.float().cpu().numpy()
    if task == "semantic":
        return processor.post_process_semantic_segmentation(outputs, target_sizes=size)[0].cpu().numpy()
    if task == "panoptic":
        result = processor.post_process_panoptic_segmentation(outputs, target_sizes=size)[0]
        return result["segmentation"].cpu().numpy(), result["segments_info"]
    raise ValueError(f"Unknown task {task!r}; expected one of {TASKS}.")


def depth_agreement(vanilla: np.ndarray, expedited: np.ndarray) -> dict[str, float]:
    """Pearson correlation and mean relative difference ``|e - v| / |v|`` of two depth maps."""
    v, e = vanilla.astype(np.float64).ravel(), expedited.astype(np.float64).ravel()
    correlation = float(np.corrcoef(v, e)[0, 1]) if v.std() > 0 and e.std() > 0 else float(np.array_equal(v, e))
    relative = float(np.mean(np.abs(e - v) / np.maximum(np.abs(v), 1e-6)))
    return {"depth_correlation": correlation, "depth_relative_difference": relative}


def label_agreement(vanilla: np.ndarray, expedited: np.ndarray) -> dict[str, float]:
    """Share of pixels whose label is the vanilla one."""
    return {"pixel_agreement": float(np.mean(vanilla == expedited))}


@dataclass
class FidelityReport:
    """Agreement of an expedited model with its vanilla parent over a set of images."""

    task: Task
    per_image: list[dict[str, float]] = field(default_factory=list)
    summary: dict[str, float] = field(default_factory=dict)


def fidelity_report(
    vanilla: torch.nn.Module,
    expedited: torch.nn.Module,
    processor: Any,
    images: Iterable[Image.Image],
    task: Task,
    num_labels: int | None = None,
) -> FidelityReport:
    """Run both models on ``images`` and measure the agreement (see the module docstring)."""
    from .metrics import load_metric

    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; expected one of {TASKS}.")
    report = FidelityReport(task)
    pairs = []
    for image in images:
        reference, output = predict(vanilla, processor, image, task), predict(expedited, processor, image, task)
        pairs.append((reference, output))
        if task == "depth":
            report.per_image.append(depth_agreement(reference, output))
        elif task == "semantic":
            report.per_image.append(label_agreement(reference, output))
        else:
            report.per_image.append(label_agreement(reference[0], output[0]))
    if not pairs:
        raise ValueError("No images to compare.")
    for key in report.per_image[0]:
        report.summary[key] = float(np.mean([row[key] for row in report.per_image]))
    if task == "semantic":
        labels = num_labels or int(getattr(vanilla.config, "num_labels", 0)) or 1 + max(int(p.max()) for p, _ in pairs)
        result = load_metric("mean_iou").compute(
            predictions=[o for _, o in pairs], references=[r for r, _ in pairs], num_labels=labels, ignore_index=-1
        )
        report.summary["miou_vs_vanilla"] = float(result["mean_iou"])
    if task == "panoptic":
        result = load_metric("panoptic_quality").compute(
            predictions=[o[0] for _, o in pairs],
            references=[r[0] for r, _ in pairs],
            predicted_segments_info=[_segments(o[1]) for _, o in pairs],
            reference_segments_info=[_segments(r[1]) for r, _ in pairs],
            void_id=-1,
        )
        report.summary["pq_vs_vanilla"] = float(result["pq"])
    return report


def _segments(segments_info: list[dict[str, Any]]) -> list[dict[str, int]]:
    return [{"id": int(s["id"]), "category_id": int(s["label_id"])} for s in segments_info]
