"""Monocular depth estimation metrics (Eigen et al. 2014) as an `evaluate` module.

Pixel validity: a pixel counts when its reference depth is finite, greater than `min_depth`, not greater than
`max_depth` (when given) and, when `valid_mask` is given, marked True there. Predictions are optionally
median-scaled per image (`median(reference) / median(prediction)` over the valid pixels, for relative-depth models),
then clipped to `[min_depth, max_depth]`.

Aggregation: by default every valid pixel of the whole dataset has the same weight (pixel-wise pooling): the
per-pixel errors are summed over all images and divided by the total number of valid pixels, and RMSE is the
square root of the pooled mean squared error. `per_image_average=True` instead computes each metric per image and
averages over the images that have at least one valid pixel (the convention of many NYUv2/KITTI evaluation scripts).
"""

from typing import Optional, Sequence

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Standard depth-estimation errors between predicted and reference depth maps: root mean squared error (rmse), mean
absolute relative error (abs_rel), mean squared relative error (sq_rel), RMSE of the natural log (rmse_log), mean
absolute log10 error (log10) and the threshold accuracies delta1/delta2/delta3 (fraction of pixels with
max(pred / ref, ref / pred) < 1.25, 1.25^2, 1.25^3). Pixel-wise pooled over the dataset unless
`per_image_average=True`.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`List[ndarray]`): predicted depth maps, 2-D float arrays (metric units, e.g. metres).
    references (`List[ndarray]`): reference depth maps, same shape as the matching prediction.
    min_depth (`float`, defaults to 1e-3): reference depths at or below are invalid; predictions are clipped to it.
    max_depth (`float`, optional): reference depths above are invalid; predictions are clipped to it
        (NYUv2: 10, KITTI: 80).
    median_scaling (`bool`, defaults to False): scale each prediction by median(ref) / median(pred) over the
        valid pixels before clipping.
    valid_mask (`List[ndarray]`, optional): boolean maps, one per image, further restricting the valid pixels.
    per_image_average (`bool`, defaults to False): average per-image metrics instead of pooling pixels.
Returns:
    dict with float values `rmse`, `abs_rel`, `sq_rel`, `rmse_log`, `log10`, `delta1`, `delta2`, `delta3`.
Examples:
    >>> depth = evaluate.load("hf_expedite/metrics/depth")
    >>> depth.compute(predictions=[np.array([[1.0, 2.0]])], references=[np.array([[1.0, 4.0]])])["abs_rel"]
    0.25
"""

_CITATION = """
@inproceedings{eigen2014depth,
  title={Depth Map Prediction from a Single Image using a Multi-Scale Deep Network},
  author={Eigen, David and Puhrsch, Christian and Fergus, Rob},
  booktitle={Advances in Neural Information Processing Systems},
  year={2014}
}
"""

METRIC_NAMES = ("rmse", "abs_rel", "sq_rel", "rmse_log", "log10", "delta1", "delta2", "delta3")


def _valid_pixels(
    prediction: np.ndarray,
    reference: np.ndarray,
    mask: Optional[np.ndarray],
    min_depth: float,
    max_depth: Optional[float],
    index: int,
) -> tuple:
    """Return (prediction, reference) restricted to the valid pixels of one image, as 1-D float64 arrays."""
    if prediction.shape != reference.shape:
        raise ValueError(f"Image {index}: prediction shape {prediction.shape} != reference shape {reference.shape}.")
    valid = np.isfinite(reference) & (reference > min_depth)
    if max_depth is not None:
        valid &= reference <= max_depth
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != reference.shape:
            raise ValueError(f"Image {index}: valid_mask shape {mask.shape} != reference shape {reference.shape}.")
        valid &= mask
    return prediction[valid], reference[valid]


def _pixel_sums(
    pred: np.ndarray, ref: np.ndarray, min_depth: float, max_depth: Optional[float], median_scaling: bool, index: int
) -> np.ndarray:
    """Sums over one image's valid pixels of: squared error, absolute relative error, squared relative error,
    squared log error, absolute log10 error, and the indicators of the three delta thresholds."""
    if median_scaling:
        pred_median = np.median(pred)
        if not np.isfinite(pred_median) or pred_median <= 0:
            raise ValueError(f"Image {index}: median scaling needs a positive median prediction, got {pred_median}.")
        pred = pred * (np.median(ref) / pred_median)
    pred = np.clip(pred, min_depth, max_depth)
    if not np.all(np.isfinite(pred)):
        raise ValueError(f"Image {index}: prediction has non-finite values at valid pixels.")
    diff = pred - ref
    ratio = np.maximum(pred / ref, ref / pred)
    return np.array(
        [
            np.sum(diff**2),
            np.sum(np.abs(diff) / ref),
            np.sum(diff**2 / ref),
            np.sum((np.log(pred) - np.log(ref)) ** 2),
            np.sum(np.abs(np.log10(pred) - np.log10(ref))),
            *(np.count_nonzero(ratio < 1.25**k) for k in (1, 2, 3)),
        ],
        dtype=np.float64,
    )


def _metrics_from_means(means: np.ndarray) -> np.ndarray:
    """Turn per-pixel means (in `_pixel_sums` order) into metric values (in `METRIC_NAMES` order)."""
    out = means.copy()
    out[0] = np.sqrt(means[0])
    out[3] = np.sqrt(means[3])
    return out


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Depth(evaluate.Metric):
    """Depth-estimation errors (RMSE, AbsRel, SqRel, RMSE-log, log10, delta thresholds)."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.List(datasets.List(datasets.Value("float32"))),
                    "references": datasets.List(datasets.List(datasets.Value("float32"))),
                }
            ),
            reference_urls=["https://arxiv.org/abs/1406.2283"],
        )

    def _compute(
        self,
        predictions: Sequence,
        references: Sequence,
        min_depth: float = 1e-3,
        max_depth: Optional[float] = None,
        median_scaling: bool = False,
        valid_mask: Optional[Sequence] = None,
        per_image_average: bool = False,
    ) -> dict:
        if min_depth <= 0:
            raise ValueError(f"min_depth must be > 0, got {min_depth}.")
        if max_depth is not None and max_depth <= min_depth:
            raise ValueError(f"max_depth must be > min_depth ({min_depth}), got {max_depth}.")
        if valid_mask is not None and len(valid_mask) != len(references):
            raise ValueError(f"valid_mask has {len(valid_mask)} entries for {len(references)} references.")
        counts, sums = [], []
        for index, (prediction, reference) in enumerate(zip(predictions, references)):
            pred, ref = _valid_pixels(
                np.asarray(prediction, dtype=np.float64),
                np.asarray(reference, dtype=np.float64),
                None if valid_mask is None else valid_mask[index],
                min_depth,
                max_depth,
                index,
            )
            if ref.size:
                counts.append(ref.size)
                sums.append(_pixel_sums(pred, ref, min_depth, max_depth, median_scaling, index))
        if not counts:
            raise ValueError("No valid reference pixel in any image (check min_depth, max_depth and valid_mask).")
        counts_arr, sums_arr = np.array(counts, dtype=np.float64), np.stack(sums)
        if per_image_average:
            values = np.mean([_metrics_from_means(s / n) for s, n in zip(sums_arr, counts_arr)], axis=0)
        else:
            values = _metrics_from_means(sums_arr.sum(axis=0) / counts_arr.sum())
        return {name: float(value) for name, value in zip(METRIC_NAMES, values)}
