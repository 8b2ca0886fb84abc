"""Label-free fidelity: how closely an expedited model agrees with its vanilla parent on the user's own images.

No labelled dataset is needed: the vanilla model's prediction is the reference. For depth, the Pearson correlation
and the relative L1 difference of the depth maps; for semantic segmentation, the pixel agreement and the mean IoU
of the expedited labels against the vanilla labels; for panoptic segmentation, the pixel agreement of the class maps
and the panoptic quality against the vanilla segments; for promptable mask generation (SAM), the IoU of the masks
both models predict for the same grid of point prompts. Forward passes are timed as well, so that settings can be
chosen from agreement and speed before any labelled evaluation (:func:`fidelity_reports` compares several expedited
models with one vanilla pass).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

Task = Literal["depth", "semantic", "panoptic", "masks"]
TASKS: tuple[str, ...] = ("depth", "semantic", "panoptic", "masks")
POINTS_PER_SIDE = 4
"""Point prompts per image side for the ``"masks"`` task: a 4 x 4 grid of single-point prompts, one mask each."""


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; expected one of {TASKS}.")


def _inputs(model: torch.nn.Module, processor: Any, image: Image.Image, task: Task) -> tuple[Any, Any]:
    """``processor(image)`` on the model's device, floating inputs in the model's dtype, and what post-processing
    needs from the preprocessing (``"masks"``: the resized image size; else None). For ``"masks"`` the inputs are the
    pixel values and a grid of single-point prompts (:func:`point_grid`)."""
    parameter = next(model.parameters())
    inputs = processor(images=image, return_tensors="pt")
    if task == "masks":
        resized = inputs["reshaped_input_sizes"]
        points, labels = point_grid(resized[0])
        inputs = {"pixel_values": inputs["pixel_values"], "input_points": points, "input_labels": labels,
                  "multimask_output": False}  # fmt: skip
        inputs = {k: v.to(device=parameter.device, dtype=parameter.dtype if v.is_floating_point() else v.dtype)
                  if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}  # fmt: skip
        return inputs, resized
    return inputs.to(device=parameter.device, dtype=parameter.dtype), None


def point_grid(input_size: torch.Tensor, per_side: int = POINTS_PER_SIDE) -> tuple[torch.Tensor, torch.Tensor]:
    """``(1, per_side**2, 1, 2)`` (x, y) point prompts at the centres of a ``per_side`` x ``per_side`` grid over the
    resized image (``input_size`` = its (height, width), the frame SAM's prompts live in), and their labels (1)."""
    height, width = (float(side) for side in input_size)
    centres = (torch.arange(per_side, dtype=torch.float32) + 0.5) / per_side
    ys, xs = torch.meshgrid(centres * height, centres * width, indexing="ij")
    points = torch.stack([xs.flatten(), ys.flatten()], dim=-1)[None, :, None]
    return points, torch.ones(points.shape[:3], dtype=torch.long)


def _post_process(
    processor: Any,
    outputs: Any,
    image: Image.Image,
    task: Task,
    post_processing: Mapping[str, Any] | None,
    resized: Any = None,
) -> Any:
    """The processor's post-processing for ``task`` at the image's size (see :func:`predict`); ``resized`` is what
    :func:`_inputs` returned beside the inputs."""
    size = [(image.height, image.width)]
    kwargs = dict(post_processing or {})
    if task == "depth":
        depth = processor.post_process_depth_estimation(outputs, target_sizes=size, **kwargs)[0]["predicted_depth"]
        return depth.float().cpu().numpy()
    if task == "semantic":
        return processor.post_process_semantic_segmentation(outputs, target_sizes=size, **kwargs)[0].cpu().numpy()
    if task == "masks":  # one mask per point prompt, at the image's size
        masks = processor.post_process_masks(outputs.pred_masks.float().cpu(), torch.tensor(size), resized, **kwargs)
        return masks[0][:, 0].numpy()
    method = processor.post_process_panoptic_segmentation
    kwargs.setdefault("label_ids_to_fuse", set())
    parameters = inspect.signature(method).parameters
    if "label_ids_to_fuse" not in parameters and "stuff_classes" in parameters:  # EoMT's name for the fused classes
        kwargs["stuff_classes"] = sorted(kwargs.pop("label_ids_to_fuse"))
    result = method(outputs, target_sizes=size, **kwargs)[0]
    return result["segmentation"].cpu().numpy().astype(np.int64), result["segments_info"]


@torch.inference_mode()
def predict(
    model: torch.nn.Module,
    processor: Any,
    image: Image.Image,
    task: Task,
    post_processing: Mapping[str, Any] | None = None,
) -> Any:
    """One image through ``processor`` -> ``model`` -> the processor's post-processing at the image's size.

    Returns a depth map (``float32`` array), a label map (``int64`` array), a panoptic ``(segment_ids,
    segments_info)`` pair, or the ``(P, H, W)`` boolean masks of the point prompts. ``post_processing`` holds extra post-processing kwargs (e.g. a panoptic ``threshold``;
    panoptic ``label_ids_to_fuse`` defaults to none).
    """
    _check_task(task)
    inputs, resized = _inputs(model, processor, image, task)
    return _post_process(processor, model(**inputs), image, task, post_processing, resized)


def depth_agreement(vanilla: np.ndarray, expedited: np.ndarray) -> dict[str, float]:
    """Pearson correlation and relative L1 difference ``mean |e - v| / mean |v|`` of two depth maps (normalised by
    the map's mean magnitude, not per pixel, so that near-zero values of inverse-depth outputs do not dominate)."""
    v, e = vanilla.astype(np.float64).ravel(), expedited.astype(np.float64).ravel()
    correlation = float(np.corrcoef(v, e)[0, 1]) if v.std() > 0 and e.std() > 0 else float(np.array_equal(v, e))
    scale = np.mean(np.abs(v))
    relative = float(np.mean(np.abs(e - v)) / scale) if scale > 0 else float(not np.array_equal(v, e))
    return {"depth_correlation": correlation, "depth_relative_difference": relative}


def label_agreement(vanilla: np.ndarray, expedited: np.ndarray) -> dict[str, float]:
    """Share of pixels whose label is the vanilla one."""
    return {"pixel_agreement": float(np.mean(vanilla == expedited))}


def mask_agreement(vanilla: np.ndarray, expedited: np.ndarray) -> dict[str, float]:
    """Mean IoU of the ``(P, H, W)`` masks of the same prompts (two empty masks agree: IoU 1), and the share of
    mask pixels on which they agree."""
    intersection = np.logical_and(vanilla, expedited).sum(axis=(1, 2))
    union = np.logical_or(vanilla, expedited).sum(axis=(1, 2))
    iou = np.where(union > 0, intersection / np.maximum(union, 1), 1.0)
    return {"mask_iou_vs_vanilla": float(iou.mean()), "pixel_agreement": float(np.mean(vanilla == expedited))}


def panoptic_classes(segmentation: np.ndarray, segments_info: list[dict[str, Any]]) -> np.ndarray:
    """The class map of a panoptic prediction (-1 where no segment): segment ids are arbitrary, classes are not."""
    classes = np.full(segmentation.shape, -1, dtype=np.int64)
    for segment in segments_info:
        classes[segmentation == segment["id"]] = int(segment["label_id"])
    return classes


@dataclass
class FidelityReport:
    """Agreement of an expedited model with its vanilla parent over a set of images, and their forward times
    (seconds summed over the images, pre- and post-processing excluded)."""

    task: Task
    per_image: list[dict[str, float]] = field(default_factory=list)
    summary: dict[str, float] = field(default_factory=dict)
    vanilla_seconds: float = 0.0
    expedited_seconds: float = 0.0

    @property
    def speedup(self) -> float:
        """Vanilla forward time / expedited forward time."""
        return self.vanilla_seconds / self.expedited_seconds if self.expedited_seconds > 0 else float("nan")


@torch.inference_mode()
def timed_predictions(
    model: torch.nn.Module,
    processor: Any,
    images: list[Image.Image],
    task: Task,
    post_processing: Mapping[str, Any] | None = None,
) -> tuple[list[Any], float]:
    """:func:`predict` for every image, and the forward seconds summed over the images (after one untimed warm-up
    pass; pre- and post-processing excluded)."""
    from .evaluation.runner import timed_forward

    _check_task(task)
    timed_forward(model, _inputs(model, processor, images[0], task)[0])
    predictions, seconds = [], 0.0
    for image in images:
        inputs, resized = _inputs(model, processor, image, task)
        outputs, elapsed = timed_forward(model, inputs)
        predictions.append(_post_process(processor, outputs, image, task, post_processing, resized))
        seconds += elapsed
    return predictions, seconds


def compare_predictions(
    vanilla: torch.nn.Module,
    references: list[Any],
    outputs: list[Any],
    task: Task,
    num_labels: int | None = None,
) -> tuple[list[dict[str, float]], dict[str, float]]:
    """Per-image agreement of ``outputs`` with the vanilla ``references`` (from :func:`timed_predictions`) and the
    summary: means, plus the mIoU (``num_labels`` defaults to the vanilla config's) or PQ against the references."""
    from .metrics import load_metric

    pairs = list(zip(references, outputs))
    if task == "depth":
        per_image = [depth_agreement(reference, output) for reference, output in pairs]
    elif task == "semantic":
        per_image = [label_agreement(reference, output) for reference, output in pairs]
    elif task == "masks":
        per_image = [mask_agreement(reference, output) for reference, output in pairs]
    else:
        per_image = [label_agreement(panoptic_classes(*ref), panoptic_classes(*out)) for ref, out in pairs]
    summary = {key: float(np.mean([row[key] for row in per_image])) for key in per_image[0]}
    if task == "semantic":
        labels = num_labels or len(getattr(vanilla.config, "id2label", None) or {})
        labels = labels or 1 + max(int(max(ref.max(), out.max())) for ref, out in pairs)
        metric = load_metric("mean_iou")
        areas = [metric.image_statistics(out, ref, num_labels=labels, ignore_index=-1) for ref, out in pairs]
        summary["miou_vs_vanilla"] = float(metric.metrics_from_statistics(areas, labels)["mean_iou"])
    if task == "panoptic":
        metric = load_metric("panoptic_quality")
        counts = [metric.image_statistics(out[0], ref[0], out[1], ref[1], void_id=-1) for ref, out in pairs]
        summary["pq_vs_vanilla"] = float(metric.metrics_from_statistics(counts)["pq"])
    return per_image, summary


def fidelity_reports(
    vanilla: torch.nn.Module,
    expedited: Mapping[str, torch.nn.Module],
    processor: Any,
    images: Iterable[Image.Image],
    task: Task,
    num_labels: int | None = None,
    post_processing: Mapping[str, Any] | None = None,
) -> dict[str, FidelityReport]:
    """:func:`fidelity_report` for several expedited models (name -> model), running the vanilla model once."""
    images = list(images)
    if not images:
        raise ValueError("No images to compare.")
    references, vanilla_seconds = timed_predictions(vanilla, processor, images, task, post_processing)
    reports = {}
    for name, model in expedited.items():
        outputs, seconds = timed_predictions(model, processor, images, task, post_processing)
        per_image, summary = compare_predictions(vanilla, references, outputs, task, num_labels)
        reports[name] = FidelityReport(task, per_image, summary, vanilla_seconds, seconds)
    return reports


def fidelity_report(
    vanilla: torch.nn.Module,
    expedited: torch.nn.Module,
    processor: Any,
    images: Iterable[Image.Image],
    task: Task,
    num_labels: int | None = None,
    post_processing: Mapping[str, Any] | None = None,
) -> FidelityReport:
    """Run both models on ``images`` and measure the agreement (see the module docstring). ``num_labels`` defaults
    to the vanilla config's; ``post_processing`` as for :func:`predict`."""
    reports = fidelity_reports(vanilla, {"expedited": expedited}, processor, images, task, num_labels, post_processing)
    return reports["expedited"]


def _as_map(prediction: Any, task: Task) -> np.ndarray:
    """A 2-D map to show: depth as is, labels as is, panoptic predictions as their class maps, prompt masks as the
    index of the first mask covering each pixel (-1 where none)."""
    if task == "panoptic":
        return panoptic_classes(*prediction)
    if task == "masks":
        masks = np.asarray(prediction)
        return np.where(masks.any(axis=0), masks.argmax(axis=0), -1)
    return np.asarray(prediction)


def side_by_side(image: Image.Image, vanilla: Any, expedited: Any, task: Task, path: str | Path) -> None:
    """Write one PNG: the input, the vanilla and the expedited prediction (same colour scale), and where they
    differ (absolute depth difference; for labels and classes, the pixels whose label changed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _check_task(task)
    reference, output = _as_map(vanilla, task), _as_map(expedited, task)
    figure, axes = plt.subplots(1, 4, figsize=(16, 4.2))
    axes[0].imshow(image)
    axes[0].set_title("input")
    if task == "depth":
        low, high = float(np.min(reference)), float(np.max(reference))
        options = {"cmap": "magma", "vmin": low, "vmax": high}
        difference = np.abs(output - reference)
        title = f"|expedited - vanilla| (max {difference.max():.3g})"
        shown = axes[3].imshow(difference, cmap="viridis")
    else:
        labels = max(int(reference.max()), int(output.max()), 1)
        options = {"cmap": "tab20", "vmin": -1, "vmax": labels, "interpolation": "nearest"}
        difference = reference != output
        title = f"label changed ({difference.mean():.1%} of pixels)"
        shown = axes[3].imshow(difference, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axes[1].imshow(reference, **options)
    axes[1].set_title("vanilla")
    axes[2].imshow(output, **options)
    axes[2].set_title("expedited")
    axes[3].set_title(title)
    figure.colorbar(shown, ax=axes[3], fraction=0.046)
    for ax in axes:
        ax.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
