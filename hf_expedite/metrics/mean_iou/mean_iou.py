"""Mean Intersection-over-Union for semantic segmentation as an `evaluate` module.

Drop-in for the hub's `mean_iou` metric (same inputs, keyword arguments and outputs), with two differences:
a label or prediction outside `[0, num_labels)` at a non-ignored pixel raises a ValueError instead of being dropped
silently, and `label_map` maps every original value at once (the hub metric applies the pairs one after another,
so chained pairs such as {1: 2, 2: 3} map 1 to 3 there).

`image_statistics` (one image -> its per-category areas) and `metrics_from_statistics` (all images' areas -> the
metrics) split `compute` in two, so that a multi-process evaluation gathers a few numbers per image instead of label
maps; `compute` itself runs through them.
"""

from typing import Dict, Optional, Sequence

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
IoU is the area of overlap between the predicted segmentation and the ground truth divided by the area of union
between the predicted segmentation and the ground truth. Areas are accumulated over all images before dividing
(dataset-level IoU). The mean IoU averages the per-category IoU over the categories that appear in the predictions
or in the references (categories absent from both have NaN IoU and are left out of the mean).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`List[ndarray]`): predicted segmentation maps, 2-D integer arrays.
    references (`List[ndarray]`): ground truth segmentation maps, same shape as the matching prediction.
    num_labels (`int`): number of categories.
    ignore_index (`int`): reference value whose pixels are left out (after `label_map` and `reduce_labels`).
    nan_to_num (`int`, optional): replace NaN results by this value.
    label_map (`dict`, optional): old reference id -> new reference id, applied first.
    reduce_labels (`bool`, defaults to False): reference 0 (background) becomes 255 and every other id is
        decreased by 1 (255 stays 255), as for ADE20k.
Returns:
    `mean_iou`, `mean_accuracy`, `overall_accuracy` (floats) and `per_category_iou`, `per_category_accuracy`
    (arrays of length `num_labels`, NaN for categories absent from the references and, for IoU, the predictions).
Examples:
    >>> mean_iou = evaluate.load("hf_expedite/metrics/mean_iou")
    >>> results = mean_iou.compute(predictions=[np.array([[0, 1]])], references=[np.array([[0, 0]])],
    ...                            num_labels=2, ignore_index=255)
    >>> float(results["mean_iou"])
    0.25
"""

_CITATION = """
@software{MMSegmentation_Contributors_OpenMMLab_Semantic_Segmentation_2020,
  author = {{MMSegmentation Contributors}},
  license = {Apache-2.0},
  month = {7},
  title = {{OpenMMLab Semantic Segmentation Toolbox and Benchmark}},
  url = {https://github.com/open-mmlab/mmsegmentation},
  year = {2020}
}
"""


def _prepare_reference(
    reference: np.ndarray, label_map: Optional[Dict[int, int]], reduce_labels: bool
) -> np.ndarray:
    """Apply `label_map` (all pairs simultaneously), then `reduce_labels`."""
    if label_map:
        mapped = reference.copy()
        for old_id, new_id in label_map.items():
            mapped[reference == int(old_id)] = int(new_id)
        reference = mapped
    if reduce_labels:
        reference = np.where((reference == 0) | (reference == 255), 255, reference - 1)
    return reference


def _check_range(values: np.ndarray, num_labels: int, what: str, index: int) -> None:
    """Raise a ValueError if `values` has an entry outside [0, num_labels)."""
    bad = (values < 0) | (values >= num_labels)
    if bad.any():
        raise ValueError(
            f"Image {index}: {what} contains label(s) {np.unique(values[bad])[:10].tolist()} outside "
            f"[0, {num_labels}) at non-ignored pixels (num_labels={num_labels}; set ignore_index, label_map or "
            "reduce_labels to match the dataset)."
        )


def _areas(
    prediction: np.ndarray, reference: np.ndarray, num_labels: int, ignore_index: int, index: int
) -> np.ndarray:
    """Per-category (intersection, prediction area, reference area) over the non-ignored pixels, shape (3, C)."""
    if prediction.shape != reference.shape:
        raise ValueError(f"Image {index}: prediction shape {prediction.shape} != reference shape {reference.shape}.")
    keep = reference != ignore_index
    prediction, reference = prediction[keep], reference[keep]
    _check_range(reference, num_labels, "reference", index)
    _check_range(prediction, num_labels, "prediction", index)
    return np.stack(
        [
            np.bincount(reference[prediction == reference], minlength=num_labels),
            np.bincount(prediction, minlength=num_labels),
            np.bincount(reference, minlength=num_labels),
        ]
    )


def image_statistics(
    prediction,
    reference,
    num_labels: int,
    ignore_index: int,
    label_map: Optional[Dict[int, int]] = None,
    reduce_labels: bool = False,
    index: int = 0,
) -> np.ndarray:
    """One image's per-category (intersection, prediction area, reference area), an int64 array of shape
    (3, num_labels); `label_map` and `reduce_labels` apply to the reference. `index` only labels error messages."""
    reference = _prepare_reference(np.asarray(reference, dtype=np.int64), label_map, reduce_labels)
    return _areas(np.asarray(prediction, dtype=np.int64), reference, num_labels, ignore_index, index)


def _nanmean(values: np.ndarray) -> np.float64:
    """Mean over the non-NaN entries; NaN (without a warning) when all are NaN."""
    finite = values[~np.isnan(values)]
    return np.float64(finite.mean()) if finite.size else np.float64(np.nan)


def metrics_from_statistics(
    statistics: Sequence[np.ndarray], num_labels: int, nan_to_num: Optional[int] = None
) -> dict:
    """The metrics from the `image_statistics` of every image."""
    totals = np.zeros((3, num_labels), dtype=np.int64)
    for areas in statistics:
        totals += areas
    intersection, area_prediction, area_reference = totals.astype(np.float64)
    union = area_prediction + area_reference - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = intersection / union
        accuracy = intersection / area_reference
        overall_accuracy = intersection.sum() / area_reference.sum()
    metrics = {
        "mean_iou": _nanmean(iou),
        "mean_accuracy": _nanmean(accuracy),
        "overall_accuracy": overall_accuracy,
        "per_category_iou": iou,
        "per_category_accuracy": accuracy,
    }
    if nan_to_num is not None:
        metrics = {name: np.nan_to_num(value, nan=nan_to_num) for name, value in metrics.items()}
    return metrics


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MeanIou(evaluate.Metric):
    """Dataset-level mean IoU, mean per-category accuracy and overall pixel accuracy."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.List(datasets.List(datasets.Value("int64"))),
                    "references": datasets.List(datasets.List(datasets.Value("int64"))),
                }
            ),
            reference_urls=[
                "https://github.com/open-mmlab/mmsegmentation/blob/main/mmseg/evaluation/metrics/iou_metric.py"
            ],
        )

    image_statistics = staticmethod(image_statistics)
    metrics_from_statistics = staticmethod(metrics_from_statistics)

    def _compute(
        self,
        predictions: Sequence,
        references: Sequence,
        num_labels: int,
        ignore_index: int,
        nan_to_num: Optional[int] = None,
        label_map: Optional[Dict[int, int]] = None,
        reduce_labels: bool = False,
    ) -> dict:
        statistics = [
            image_statistics(prediction, reference, num_labels, ignore_index, label_map, reduce_labels, index)
            for index, (prediction, reference) in enumerate(zip(predictions, references))
        ]
        return metrics_from_statistics(statistics, num_labels, nan_to_num)
