"""Monocular depth estimation metrics (Eigen et al. 2014) as an `evaluate` module.

Pixel validity: a pixel counts when its reference depth is finite, greater than `min_depth`, less than `max_depth`
(when given; strict at both ends, as BTS, monodepth2, ZoeDepth and Depth Anything evaluate) and, when `valid_mask` is
given, marked True there. Predictions are optionally aligned per
image over the valid pixels, then clipped to `[min_depth, max_depth]`:

- `median_scaling`: multiply by `median(reference) / median(prediction)`, for models that predict depth up to scale;
- `disparity_alignment`: the prediction is an inverse depth (disparity) known up to scale and shift, as from MiDaS,
  DPT-Large or relative Depth Anything: fit `s, t` by least squares so that `s * prediction + t` matches
  `1 / reference`, cap the aligned disparity at `1 / max_depth` (`1 / max(reference)` without `max_depth`) and
  invert it (the zero-shot protocol of MiDaS).

Aggregation: by default each metric is computed per image and averaged over the images that have at least one
valid pixel (`per_image_average=True`, the protocol of BTS, monodepth2, ZoeDepth and Depth Anything, behind the
published NYUv2/KITTI numbers). `per_image_average=False` pools pixels instead: the per-pixel errors are summed over
all images and divided by the total number of valid pixels, and RMSE is the square root of the pooled mean squared
error.

`image_statistics` (one image -> a small array) and `metrics_from_statistics` (the arrays of all images, in dataset
order -> the metrics) split `compute` in two, so that a multi-process evaluation gathers a few numbers per image
instead of depth maps; `compute` itself runs through them, so both routes give identical values.
"""

from typing import Optional, Sequence

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Standard depth-estimation errors between predicted and reference depth maps: root mean squared error (rmse), mean
absolute relative error (abs_rel), mean squared relative error (sq_rel), RMSE of the natural log (rmse_log), mean
absolute log10 error (log10) and the threshold accuracies delta1/delta2/delta3 (fraction of pixels with
max(pred / ref, ref / pred) < 1.25, 1.25^2, 1.25^3). Averaged per image, then over images, unless
`per_image_average=False` (pixels pooled over the dataset).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`List[ndarray]`): predicted depth maps, 2-D float arrays (metric units, e.g. metres).
    references (`List[ndarray]`): reference depth maps, same shape as the matching prediction.
    min_depth (`float`, defaults to 1e-3): reference depths at or below are invalid; predictions are clipped to it.
    max_depth (`float`, optional): reference depths at or above are invalid; predictions are clipped to it
        (NYUv2: 10, KITTI: 80).
    median_scaling (`bool`, defaults to False): scale each prediction by median(ref) / median(pred) over the
        valid pixels before clipping.
    disparity_alignment (`bool`, defaults to False): predictions are inverse depths up to scale and shift; align
        them to 1 / ref by least squares over the valid pixels and invert (exclusive with median_scaling).
    valid_mask (`List[ndarray]`, optional): boolean maps, one per image, further restricting the valid pixels.
    per_image_average (`bool`, defaults to True): average per-image metrics; False pools the pixels of all images.
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


STATISTICS_SIZE = 1 + len(METRIC_NAMES)
"""Length of an `image_statistics` array: the valid pixel count, then the per-pixel sums of `_pixel_sums`."""


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
        valid &= reference < max_depth
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != reference.shape:
            raise ValueError(f"Image {index}: valid_mask shape {mask.shape} != reference shape {reference.shape}.")
        valid &= mask
    return prediction[valid], reference[valid]


def _align_disparity(pred: np.ndarray, ref: np.ndarray, max_depth: Optional[float]) -> np.ndarray:
    """Depth from a disparity `pred` known up to scale and shift: least-squares fit of `s * pred + t` to `1 / ref`,
    aligned disparity capped at `1 / max_depth` (or `1 / max(ref)`), inverted."""
    target = 1.0 / ref
    a00, a01, a11 = np.dot(pred, pred), pred.sum(), float(pred.size)
    b0, b1 = np.dot(pred, target), target.sum()
    determinant = a00 * a11 - a01 * a01
    if determinant > 0:
        scale, shift = (a11 * b0 - a01 * b1) / determinant, (a00 * b1 - a01 * b0) / determinant
    else:  # a constant prediction: only the shift can be fitted
        scale, shift = 0.0, b1 / a11
    cap = 1.0 / (max_depth if max_depth is not None else ref.max())
    return 1.0 / np.maximum(scale * pred + shift, cap)


def _pixel_sums(
    pred: np.ndarray,
    ref: np.ndarray,
    min_depth: float,
    max_depth: Optional[float],
    median_scaling: bool,
    disparity_alignment: bool,
    index: int,
) -> np.ndarray:
    """Sums over one image's valid pixels of: squared error, absolute relative error, squared relative error,
    squared log error, absolute log10 error, and the indicators of the three delta thresholds."""
    if median_scaling:
        pred_median = np.median(pred)
        if not np.isfinite(pred_median) or pred_median <= 0:
            raise ValueError(f"Image {index}: median scaling needs a positive median prediction, got {pred_median}.")
        pred = pred * (np.median(ref) / pred_median)
    if disparity_alignment:
        pred = _align_disparity(pred, ref, max_depth)
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


def _check_options(min_depth: float, max_depth: Optional[float], median_scaling: bool, disparity_alignment: bool):
    if min_depth <= 0:
        raise ValueError(f"min_depth must be > 0, got {min_depth}.")
    if max_depth is not None and max_depth <= min_depth:
        raise ValueError(f"max_depth must be > min_depth ({min_depth}), got {max_depth}.")
    if median_scaling and disparity_alignment:
        raise ValueError("median_scaling and disparity_alignment are exclusive: choose one alignment.")


def image_statistics(
    prediction,
    reference,
    valid_mask=None,
    min_depth: float = 1e-3,
    max_depth: Optional[float] = None,
    median_scaling: bool = False,
    disparity_alignment: bool = False,
    index: int = 0,
) -> np.ndarray:
    """One image's contribution, an array of `STATISTICS_SIZE` float64: the number of valid pixels, then the sums
    of the per-pixel errors (all zero when the image has no valid pixel). `index` only labels error messages."""
    _check_options(min_depth, max_depth, median_scaling, disparity_alignment)
    pred, ref = _valid_pixels(
        np.asarray(prediction, dtype=np.float64),
        np.asarray(reference, dtype=np.float64),
        valid_mask,
        min_depth,
        max_depth,
        index,
    )
    if not ref.size:
        return np.zeros(STATISTICS_SIZE, dtype=np.float64)
    sums = _pixel_sums(pred, ref, min_depth, max_depth, median_scaling, disparity_alignment, index)
    return np.concatenate([[float(ref.size)], sums])


def _metrics_from_means(means: np.ndarray) -> np.ndarray:
    """Turn per-pixel means (in `_pixel_sums` order) into metric values (in `METRIC_NAMES` order)."""
    out = means.copy()
    out[0] = np.sqrt(means[0])
    out[3] = np.sqrt(means[3])
    return out


def metrics_from_statistics(statistics: Sequence[np.ndarray], per_image_average: bool = True) -> dict:
    """The metrics from the `image_statistics` of every image (images without a valid pixel are left out)."""
    rows = [np.asarray(row, dtype=np.float64) for row in statistics]
    rows = [row for row in rows if row[0] > 0]
    if not rows:
        raise ValueError("No valid reference pixel in any image (check min_depth, max_depth and valid_mask).")
    table = np.stack(rows)
    counts, sums = table[:, 0], table[:, 1:]
    if per_image_average:
        values = np.mean([_metrics_from_means(s / n) for s, n in zip(sums, counts)], axis=0)
    else:
        values = _metrics_from_means(sums.sum(axis=0) / counts.sum())
    return {name: float(value) for name, value in zip(METRIC_NAMES, values)}


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

    image_statistics = staticmethod(image_statistics)
    metrics_from_statistics = staticmethod(metrics_from_statistics)

    def _compute(
        self,
        predictions: Sequence,
        references: Sequence,
        min_depth: float = 1e-3,
        max_depth: Optional[float] = None,
        median_scaling: bool = False,
        disparity_alignment: bool = False,
        valid_mask: Optional[Sequence] = None,
        per_image_average: bool = True,
    ) -> dict:
        _check_options(min_depth, max_depth, median_scaling, disparity_alignment)
        if valid_mask is not None and len(valid_mask) != len(references):
            raise ValueError(f"valid_mask has {len(valid_mask)} entries for {len(references)} references.")
        statistics = [
            image_statistics(
                prediction,
                reference,
                None if valid_mask is None else valid_mask[index],
                min_depth,
                max_depth,
                median_scaling,
                disparity_alignment,
                index,
            )
            for index, (prediction, reference) in enumerate(zip(predictions, references))
        ]
        return metrics_from_statistics(statistics, per_image_average)
