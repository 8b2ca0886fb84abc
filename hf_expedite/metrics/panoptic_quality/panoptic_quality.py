"""Panoptic Quality (Kirillov et al. 2019) as an `evaluate` module, following the COCO panoptic evaluation rules.

Per image, segments are given as id maps plus segment lists `{"id", "category_id"}` (reference segments may carry
`"iscrowd"`; `"label_id"`, as written by transformers' post-processing, is accepted for `"category_id"`, and other
keys such as `"score"` are dropped). Rules:

- Void: reference pixels equal to `void_id`, or whose id is not listed in the image's reference segments.
  Predicted pixels whose id is not listed in the predicted segments (0 or -1 from transformers post-processing)
  belong to no segment.
- A predicted and a reference segment of the same category match when IoU > 0.5, where the union leaves out the
  predicted pixels lying on void (crowd references never match). Matches are unique because segments do not overlap.
- Unmatched non-crowd reference segments are false negatives; unmatched predicted segments are false positives
  unless more than half of their area lies on void or on crowd references of the same category.
- Listed segments with no pixel are ignored.
- Per category: PQ = sum(IoU of TPs) / (TP + FP/2 + FN/2), SQ = sum(IoU) / TP (0 without TP),
  RQ = TP / (TP + FP/2 + FN/2). Averages run over the categories with TP + FP + FN > 0; things are the categories
  listed in `things`, every other category is stuff. An average over no category is NaN.

`image_statistics` (one image -> its per-category TP / FP / FN counts and IoU sums, a small dict) and
`metrics_from_statistics` (all images' dicts, in dataset order -> the metrics) split `compute` in two, so that a
multi-process evaluation gathers a few numbers per image instead of segment maps; `compute` runs through them.
"""

from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Panoptic Quality (PQ), Segmentation Quality (SQ) and Recognition Quality (RQ), overall, over thing categories,
over stuff categories and per category, with the COCO panoptic conventions for void pixels and crowd regions.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`List[ndarray]`): predicted segment-id maps, 2-D integer arrays.
    references (`List[ndarray]`): reference segment-id maps, same shape as the matching prediction.
    predicted_segments_info (`List[List[dict]]`): per image, `{"id": int, "category_id": int}` for each predicted
        segment (a segment may be listed more than once with the same category, as for fused stuff).
    reference_segments_info (`List[List[dict]]`): per image, `{"id": int, "category_id": int, "iscrowd": int}`
        (`iscrowd` optional, default 0).
    things (`Iterable[int]`, optional): category ids that are things; all other categories are stuff.
    void_id (`int`, defaults to 0): reference id of void / unlabeled pixels.
Returns:
    `pq`, `sq`, `rq`, `pq_things`, `sq_things`, `rq_things`, `pq_stuff`, `sq_stuff`, `rq_stuff` (floats in [0, 1])
    and `per_category`: {category_id: {"pq", "sq", "rq", "tp", "fp", "fn"}} for categories with TP + FP + FN > 0.
Examples:
    >>> pq = evaluate.load("hf_expedite/metrics/panoptic_quality")
    >>> pq.compute(predictions=[np.array([[1, 1]])], references=[np.array([[1, 1]])],
    ...            predicted_segments_info=[[{"id": 1, "category_id": 3}]],
    ...            reference_segments_info=[[{"id": 1, "category_id": 3}]])["pq"]
    1.0
"""

_CITATION = """
@inproceedings{kirillov2019panoptic,
  title={Panoptic Segmentation},
  author={Kirillov, Alexander and He, Kaiming and Girshick, Ross and Rother, Carsten and Doll{\\'a}r, Piotr},
  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition},
  year={2019}
}
"""


_SEGMENT_INPUTS = ("predicted_segments_info", "reference_segments_info")


def _normalize_segment(segment: dict) -> dict:
    """Keep `id`, `category_id` (or transformers' `label_id`) and `iscrowd` (default 0) of a segment dict."""
    category_id = segment.get("category_id", segment.get("label_id"))
    if category_id is None or segment.get("id") is None:
        raise ValueError(f"Segment {segment} needs an 'id' and a 'category_id' (or 'label_id').")
    return {"id": int(segment["id"]), "category_id": int(category_id), "iscrowd": int(segment.get("iscrowd") or 0)}


def _normalize_inputs(inputs: dict, per_image: bool) -> dict:
    """Normalize the segment lists of one image (`per_image`) or of a batch of images."""
    out = dict(inputs)
    for name in _SEGMENT_INPUTS:
        if out.get(name) is not None:
            images = [out[name]] if per_image else out[name]
            normalized = [[_normalize_segment(segment) for segment in segments] for segments in images]
            out[name] = normalized[0] if per_image else normalized
    return out


def _segment_table(segments: Sequence[dict], what: str, index: int) -> Dict[int, tuple]:
    """Map segment id -> (category_id, iscrowd); a repeated id must keep its category."""
    table: Dict[int, tuple] = {}
    for segment in segments:
        entry = (int(segment["category_id"]), bool(segment["iscrowd"]))
        segment_id = int(segment["id"])
        if table.setdefault(segment_id, entry) != entry:
            raise ValueError(f"Image {index}: {what} segment id {segment_id} is listed with conflicting category or iscrowd.")
    return table


def _compact(id_map: np.ndarray, segment_ids: Sequence[int], void: np.ndarray) -> np.ndarray:
    """Relabel `id_map` so that segment_ids[k] -> k + 1 and every other (or `void`) pixel -> 0."""
    if not segment_ids:
        return np.zeros(id_map.shape, dtype=np.int64)
    ids = np.asarray(segment_ids, dtype=np.int64)
    order = np.argsort(ids)
    sorted_ids = ids[order]
    position = np.minimum(np.searchsorted(sorted_ids, id_map), len(ids) - 1)
    found = (sorted_ids[position] == id_map) & ~void
    return np.where(found, order[position] + 1, 0)


@dataclass
class _Counts:
    """Per-category TP / FP / FN counts and the IoU summed over TPs."""

    tp: Counter = field(default_factory=Counter)
    fp: Counter = field(default_factory=Counter)
    fn: Counter = field(default_factory=Counter)
    iou: Counter = field(default_factory=Counter)

    def add(self, statistics: Dict[int, tuple]) -> None:
        """Add one image's `image_statistics`."""
        for category, (tp, fp, fn, iou) in statistics.items():
            self.tp[category] += tp
            self.fp[category] += fp
            self.fn[category] += fn
            self.iou[category] += iou

    def to_statistics(self) -> Dict[int, tuple]:
        """{category: (tp, fp, fn, sum of TP IoUs)} for the categories seen."""
        return {c: (self.tp[c], self.fp[c], self.fn[c], self.iou[c]) for c in self.categories()}

    def categories(self) -> List[int]:
        return sorted(set(self.tp) | set(self.fp) | set(self.fn))

    def scores(self, category: int) -> dict:
        tp, fp, fn = self.tp[category], self.fp[category], self.fn[category]
        denominator = tp + 0.5 * fp + 0.5 * fn
        return {
            "pq": self.iou[category] / denominator,
            "sq": self.iou[category] / tp if tp else 0.0,
            "rq": tp / denominator,
            "tp": tp,
            "fp": fp,
            "fn": fn,
        }


def _accumulate_image(
    prediction: np.ndarray,
    reference: np.ndarray,
    predicted: Dict[int, tuple],
    referenced: Dict[int, tuple],
    void_id: int,
    counts: _Counts,
) -> None:
    """Match one image's segments and add its TP / FP / FN to `counts`."""
    ref_ids, pred_ids = list(referenced), list(predicted)
    ref_compact = _compact(reference, ref_ids, reference == void_id)
    pred_compact = _compact(prediction, pred_ids, np.zeros(prediction.shape, dtype=bool))
    num_pred = len(pred_ids) + 1
    overlap = np.bincount(
        (ref_compact * num_pred + pred_compact).ravel(), minlength=(len(ref_ids) + 1) * num_pred
    ).reshape(len(ref_ids) + 1, num_pred)
    ref_area, pred_area = overlap.sum(axis=1), overlap.sum(axis=0)
    ref_categories = [referenced[i][0] for i in ref_ids]
    pred_categories = [predicted[i][0] for i in pred_ids]
    crowd = [referenced[i][1] for i in ref_ids]

    matched_ref, matched_pred = set(), set()
    for r, p in zip(*np.nonzero(overlap[1:, 1:])):
        if crowd[r] or ref_categories[r] != pred_categories[p]:
            continue
        intersection = overlap[r + 1, p + 1]
        union = ref_area[r + 1] + pred_area[p + 1] - intersection - overlap[0, p + 1]
        iou = intersection / union
        if iou > 0.5:
            counts.tp[ref_categories[r]] += 1
            counts.iou[ref_categories[r]] += float(iou)
            matched_ref.add(r)
            matched_pred.add(p)

    for r, category in enumerate(ref_categories):
        if r not in matched_ref and not crowd[r] and ref_area[r + 1] > 0:
            counts.fn[category] += 1
    for p, category in enumerate(pred_categories):
        if p in matched_pred or pred_area[p + 1] == 0:
            continue
        same_category_crowd = [r + 1 for r in range(len(ref_ids)) if crowd[r] and ref_categories[r] == category]
        ignored_area = overlap[0, p + 1] + overlap[same_category_crowd, p + 1].sum()
        if ignored_area / pred_area[p + 1] <= 0.5:
            counts.fp[category] += 1


def _average(counts: _Counts, categories: Iterable[int]) -> dict:
    """Mean PQ / SQ / RQ over `categories` (NaN if there is none)."""
    scores = [counts.scores(c) for c in categories]
    return {key: float(np.mean([s[key] for s in scores])) if scores else float("nan") for key in ("pq", "sq", "rq")}


def image_statistics(
    prediction,
    reference,
    predicted_segments_info: Sequence[dict],
    reference_segments_info: Sequence[dict],
    void_id: int = 0,
    index: int = 0,
) -> Dict[int, tuple]:
    """One image's {category: (TP, FP, FN, sum of the TPs' IoU)}; segment dicts as for `compute` (transformers'
    `label_id` accepted). `index` only labels error messages."""
    prediction, reference = np.asarray(prediction, dtype=np.int64), np.asarray(reference, dtype=np.int64)
    if prediction.shape != reference.shape:
        raise ValueError(f"Image {index}: prediction shape {prediction.shape} != reference shape {reference.shape}.")
    predicted = _segment_table([_normalize_segment(s) for s in predicted_segments_info], "predicted", index)
    referenced = _segment_table([_normalize_segment(s) for s in reference_segments_info], "reference", index)
    counts = _Counts()
    _accumulate_image(prediction, reference, predicted, referenced, void_id, counts)
    return counts.to_statistics()


def metrics_from_statistics(statistics: Sequence[Dict[int, tuple]], things: Optional[Iterable[int]] = None) -> dict:
    """The metrics from the `image_statistics` of every image; `things` as for `compute`."""
    counts = _Counts()
    for image in statistics:
        counts.add(image)
    thing_ids = {int(c) for c in things or ()}
    categories = counts.categories()
    results = _average(counts, categories)
    subsets = {
        "things": [c for c in categories if c in thing_ids],
        "stuff": [c for c in categories if c not in thing_ids],
    }
    for name, subset in subsets.items():
        results.update({f"{key}_{name}": value for key, value in _average(counts, subset).items()})
    results["per_category"] = {c: counts.scores(c) for c in categories}
    return results


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PanopticQuality(evaluate.Metric):
    """COCO-style Panoptic Quality with things / stuff split and per-category scores."""

    def _info(self) -> evaluate.MetricInfo:
        segment = {name: datasets.Value("int64") for name in ("id", "category_id", "iscrowd")}
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.List(datasets.List(datasets.Value("int64"))),
                    "references": datasets.List(datasets.List(datasets.Value("int64"))),
                    "predicted_segments_info": datasets.List(segment),
                    "reference_segments_info": datasets.List(segment),
                }
            ),
            reference_urls=["https://arxiv.org/abs/1801.00868", "https://github.com/cocodataset/panopticapi"],
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs) -> None:
        """As `evaluate.Metric.add_batch`; segment dicts may omit `iscrowd` and carry extra keys."""
        super().add_batch(predictions=predictions, references=references, **_normalize_inputs(kwargs, False))

    def add(self, *, prediction=None, reference=None, **kwargs) -> None:
        """As `evaluate.Metric.add`; segment dicts may omit `iscrowd` and carry extra keys."""
        super().add(prediction=prediction, reference=reference, **_normalize_inputs(kwargs, True))

    image_statistics = staticmethod(image_statistics)
    metrics_from_statistics = staticmethod(metrics_from_statistics)

    def _compute(
        self,
        predictions: Sequence,
        references: Sequence,
        predicted_segments_info: Sequence,
        reference_segments_info: Sequence,
        things: Optional[Iterable[int]] = None,
        void_id: int = 0,
    ) -> dict:
        statistics = [
            image_statistics(prediction, reference, predicted, referenced, void_id, index)
            for index, (prediction, reference, predicted, referenced) in enumerate(
                zip(predictions, references, predicted_segments_info, reference_segments_info)
            )
        ]
        return metrics_from_statistics(statistics, things)
