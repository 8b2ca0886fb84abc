"""The bundled `evaluate` metrics against hand-computed values, loaded through `evaluate.load(path)`."""

import math

import evaluate
import numpy as np
import pytest

from hf_expedite.metrics import METRICS_DIR, load_metric, metric_path


@pytest.fixture(scope="module")
def depth():
    return evaluate.load(str(METRICS_DIR / "depth"))


@pytest.fixture(scope="module")
def mean_iou():
    return evaluate.load(str(METRICS_DIR / "mean_iou"))


@pytest.fixture(scope="module")
def panoptic():
    return evaluate.load(str(METRICS_DIR / "panoptic_quality"))


def test_load_paths():
    assert evaluate.load(str(METRICS_DIR / "mean_iou" / "mean_iou.py")).name == "mean_iou"
    assert load_metric("panoptic_quality").name == "panoptic_quality"
    assert metric_path("depth") == METRICS_DIR / "depth"
    with pytest.raises(ValueError, match="bundled metrics"):
        metric_path("accuracy")


# ---------------------------------------------------------------- depth

# 2x3 maps. Valid reference pixels: > min_depth (the 0 is invalid). Pairs (pred, ref):
#   (2, 2) (3, 2) (2, 4) (1, 1) (9, 5)      and (7, 0) invalid.
#   diff            = 0, 1, -2, 0, 4        -> squared 0, 1, 4, 0, 16 (sum 21)
#   |diff| / ref    = 0, .5, .5, 0, .8      (sum 1.8)
#   diff^2 / ref    = 0, .5, 1, 0, 3.2      (sum 4.7)
#   ln(p) - ln(r)   = 0, ln 1.5, -ln 2, 0, ln 1.8
#   max(p/r, r/p)   = 1, 1.5, 2, 1, 1.8     -> < 1.25: 2 px, < 1.5625: 3 px, < 1.953125: 4 px
DEPTH_PRED = np.array([[2.0, 3.0, 2.0], [1.0, 9.0, 7.0]])
DEPTH_REF = np.array([[2.0, 2.0, 4.0], [1.0, 5.0, 0.0]])


def test_depth_hand_computed(depth):
    results = depth.compute(predictions=[DEPTH_PRED], references=[DEPTH_REF])
    expected = {
        "rmse": 2.04939015319192,  # sqrt(21 / 5)
        "abs_rel": 0.36,  # 1.8 / 5
        "sq_rel": 0.94,  # 4.7 / 5
        "rmse_log": 0.445050139028879,  # sqrt((ln(1.5)^2 + ln(2)^2 + ln(1.8)^2) / 5)
        "log10": 0.1464787519645937,  # (log10 1.5 + log10 2 + log10 1.8) / 5 = log10(5.4) / 5
        "delta1": 0.4,
        "delta2": 0.6,
        "delta3": 0.8,
    }
    assert results == pytest.approx(expected, rel=1e-6)


def test_depth_max_depth_clips_predictions(depth):
    # max_depth=2.5 keeps references < 2.5: pairs (2, 2) (3, 2) (1, 1); the 3 is clipped to 2.5.
    results = depth.compute(predictions=[DEPTH_PRED], references=[DEPTH_REF], max_depth=2.5)
    assert results["abs_rel"] == pytest.approx(0.25 / 3) and results["delta1"] == pytest.approx(2 / 3)  # 2.5 / 2 = 1.25


def test_depth_valid_range_is_strict_at_both_ends(depth):
    # The references' protocol (BTS, monodepth2, ZoeDepth, Depth Anything): min_depth < d < max_depth. A reference of
    # exactly max_depth is not evaluated: here only the (1, 1) pair is left, which is exact.
    results = depth.compute(predictions=[DEPTH_PRED], references=[DEPTH_REF], max_depth=2.0)
    assert results["rmse"] == 0.0 and results["delta1"] == 1.0
    edge = depth.compute(
        predictions=[np.array([[1.0, 5.0]])], references=[np.array([[0.5, 2.0]])], min_depth=0.5, max_depth=4.0
    )
    assert edge["abs_rel"] == pytest.approx(1.0)  # the 0.5 reference (== min_depth) is out; (5 -> 4, 2) is in


def test_depth_valid_mask_and_nan_reference(depth):
    # Masking out the (9, 5) pixel (and a NaN reference elsewhere is invalid anyway): 4 pixels left,
    # squared errors 0, 1, 4, 0 -> rmse sqrt(5 / 4); abs_rel (0 + .5 + .5 + 0) / 4.
    reference = DEPTH_REF.copy()
    reference[1, 2] = np.nan
    mask = np.ones((2, 3), dtype=bool)
    mask[1, 1] = False
    results = depth.compute(predictions=[DEPTH_PRED], references=[reference], valid_mask=[mask])
    assert results["rmse"] == pytest.approx(1.118033988749895)
    assert results["abs_rel"] == pytest.approx(0.25)


def test_depth_median_scaling(depth):
    # ref = 2 * pred: median(ref) / median(pred) = 5 / 2.5 = 2 -> exact after scaling.
    prediction = np.array([[1.0, 2.0], [3.0, 4.0]])
    results = depth.compute(predictions=[prediction], references=[2 * prediction], median_scaling=True)
    assert results["rmse"] == pytest.approx(0.0) and results["delta1"] == 1.0
    unscaled = depth.compute(predictions=[prediction], references=[2 * prediction])
    assert unscaled["abs_rel"] == pytest.approx(0.5)  # |p - 2p| / 2p


def test_depth_per_image_by_default_pooled_on_request(depth):
    # Image 1: one pixel (2, 1): squared error 1, abs_rel 1. Image 2: four exact pixels.
    predictions = [np.array([[2.0]]), np.full((2, 2), 3.0)]
    references = [np.array([[1.0]]), np.full((2, 2), 3.0)]
    assert depth.compute(predictions=predictions, references=references)["abs_rel"] == pytest.approx(0.5)
    pooled = depth.compute(predictions=predictions, references=references, per_image_average=False)
    assert pooled["abs_rel"] == pytest.approx(1 / 5)
    assert pooled["rmse"] == pytest.approx(0.4472135954999579)  # sqrt(1 / 5)
    assert pooled["delta1"] == pytest.approx(4 / 5)
    per_image = depth.compute(predictions=predictions, references=references, per_image_average=True)
    assert per_image["abs_rel"] == pytest.approx(0.5)  # (1 + 0) / 2
    assert per_image["rmse"] == pytest.approx(0.5)  # (1 + 0) / 2
    assert per_image["delta1"] == pytest.approx(0.5)


def test_depth_errors(depth):
    with pytest.raises(ValueError, match="shape"):
        depth.compute(predictions=[np.ones((2, 2))], references=[np.ones((2, 3))])
    with pytest.raises(ValueError, match="No valid reference pixel"):
        depth.compute(predictions=[np.ones((2, 2))], references=[np.zeros((2, 2))])


# ---------------------------------------------------------------- mean IoU

# num_labels=4, ignore_index=255. Non-ignored (pred, ref) pairs: (0,0) (0,1) (1,1) (1,1) (2,0); the pixel
# with ref 255 (pred 2) is ignored. Class 3 appears nowhere.
#   intersection: c0 1, c1 2, c2 0       prediction area: c0 2, c1 2, c2 1       reference area: c0 2, c1 3, c2 0
#   union: c0 3, c1 3, c2 1 -> IoU 1/3, 2/3, 0, NaN ; accuracy 1/2, 2/3, NaN, NaN
IOU_PRED = np.array([[0, 0, 1], [1, 2, 2]])
IOU_REF = np.array([[0, 1, 1], [1, 255, 0]])


def test_mean_iou_hand_computed(mean_iou):
    results = mean_iou.compute(predictions=[IOU_PRED], references=[IOU_REF], num_labels=4, ignore_index=255)
    assert results["mean_iou"] == pytest.approx(1 / 3)  # (1/3 + 2/3 + 0) / 3, class 3 left out
    assert results["mean_accuracy"] == pytest.approx(7 / 12)  # (1/2 + 2/3) / 2
    assert results["overall_accuracy"] == pytest.approx(3 / 5)
    np.testing.assert_allclose(results["per_category_iou"], [1 / 3, 2 / 3, 0.0, np.nan])
    np.testing.assert_allclose(results["per_category_accuracy"], [1 / 2, 2 / 3, np.nan, np.nan])


def test_mean_iou_accumulates_over_images_and_nan_to_num(mean_iou):
    # The same pixels split into two 1x3 images give the same dataset-level areas.
    results = mean_iou.compute(
        predictions=[IOU_PRED[:1], IOU_PRED[1:]],
        references=[IOU_REF[:1], IOU_REF[1:]],
        num_labels=4,
        ignore_index=255,
        nan_to_num=0,
    )
    assert results["mean_iou"] == pytest.approx(1 / 3)
    np.testing.assert_allclose(results["per_category_iou"], [1 / 3, 2 / 3, 0.0, 0.0])


def test_mean_iou_reduce_labels(mean_iou):
    # reduce_labels: 0 -> 255 (ignored), others - 1, 255 stays 255:
    #   ref [[0, 1, 2], [3, 255, 1]] -> [[255, 0, 1], [2, 255, 0]]
    # Non-ignored (pred, ref): (0,0) (1,1) (0,2) (2,0)
    #   intersection c0 1, c1 1, c2 0; prediction area c0 2, c1 1, c2 1; reference area c0 2, c1 1, c2 1
    #   IoU 1/3, 1, 0 -> mean 4/9; accuracy 1/2, 1, 0 -> mean 1/2; overall 2/4
    prediction = np.array([[1, 0, 1], [0, 0, 2]])
    reference = np.array([[0, 1, 2], [3, 255, 1]])
    results = mean_iou.compute(
        predictions=[prediction], references=[reference], num_labels=3, ignore_index=255, reduce_labels=True
    )
    assert results["mean_iou"] == pytest.approx(4 / 9)
    assert results["mean_accuracy"] == pytest.approx(1 / 2)
    assert results["overall_accuracy"] == pytest.approx(1 / 2)


def test_mean_iou_label_map(mean_iou):
    # label_map swaps 1 and 2 (applied together, not one after the other): the reference becomes [[2, 1]].
    results = mean_iou.compute(
        predictions=[np.array([[2, 1]])],
        references=[np.array([[1, 2]])],
        num_labels=3,
        ignore_index=255,
        label_map={1: 2, 2: 1},
    )
    assert results["mean_iou"] == pytest.approx(1.0)
    np.testing.assert_allclose(results["per_category_iou"], [np.nan, 1.0, 1.0])


def test_mean_iou_out_of_range(mean_iou):
    iou_kwargs = {"num_labels": 3, "ignore_index": 255}
    with pytest.raises(ValueError, match=r"reference contains label\(s\) \[5\] outside \[0, 3\)"):
        mean_iou.compute(predictions=[np.array([[0, 1]])], references=[np.array([[0, 5]])], **iou_kwargs)
    with pytest.raises(ValueError, match=r"prediction contains label\(s\) \[3\]"):
        mean_iou.compute(predictions=[np.array([[0, 3]])], references=[np.array([[0, 1]])], **iou_kwargs)
    # An out-of-range prediction on an ignored pixel is fine.
    results = mean_iou.compute(predictions=[np.array([[0, 3]])], references=[np.array([[0, 255]])], **iou_kwargs)
    assert results["mean_iou"] == pytest.approx(1.0)


# ---------------------------------------------------------------- panoptic quality

# Image 1 (4x6). Category 1 is a thing, 2 is stuff, 5 only appears in a prediction lying on void.
#   reference                 prediction
#   1 1 1 2 2 2               1 1 1 2 2 2
#   1 1 1 2 2 2               1 1 5 2 2 2
#   0 0 3 3 4 4               1 6 7 7 0 0
#   0 0 3 3 4 4               6 6 7 7 0 0
# reference: 1 = cat 1 (6 px), 2 = cat 2 (6 px), 3 = cat 1 crowd (4 px), 4 = cat 1 (4 px), 0 = void (4 px)
# prediction: 1 = cat 1 (6 px, 1 on void), 2 = cat 2, 5 = cat 2 (1 px), 6 = cat 5 (3 px, all void),
#             7 = cat 1 (4 px, all on the cat-1 crowd); 0 = no segment
# - pred 1 vs ref 1: intersection 5, union 6 + 6 - 5 - 1 (void part of pred 1) = 6 -> IoU 5/6 > .5: TP cat 1
# - pred 2 vs ref 2: IoU 1: TP cat 2
# - pred 5: unmatched, not on void/crowd: FP cat 2
# - pred 6: unmatched, 3/3 on void: ignored (so cat 5 has no TP/FP/FN and is left out of the averages)
# - pred 7: unmatched, 4/4 on a crowd region of its own category: ignored
# - ref 4: unmatched: FN cat 1; ref 3 is crowd: never a FN
# cat 1: TP 1 (IoU 5/6), FN 1 -> PQ (5/6) / 1.5 = 5/9, SQ 5/6, RQ 1 / 1.5 = 2/3
# cat 2: TP 1 (IoU 1), FP 1  -> PQ 1 / 1.5 = 2/3, SQ 1, RQ 2/3
PQ_REF = np.array([[1, 1, 1, 2, 2, 2], [1, 1, 1, 2, 2, 2], [0, 0, 3, 3, 4, 4], [0, 0, 3, 3, 4, 4]])
PQ_PRED = np.array([[1, 1, 1, 2, 2, 2], [1, 1, 5, 2, 2, 2], [1, 6, 7, 7, 0, 0], [6, 6, 7, 7, 0, 0]])
PQ_REF_INFO = [
    {"id": 1, "category_id": 1, "iscrowd": 0},
    {"id": 2, "category_id": 2, "iscrowd": 0},
    {"id": 3, "category_id": 1, "iscrowd": 1},
    {"id": 4, "category_id": 1, "iscrowd": 0},
]
PQ_PRED_INFO = [
    {"id": 1, "category_id": 1},
    {"id": 2, "category_id": 2},
    {"id": 5, "category_id": 2},
    {"id": 6, "category_id": 5},
    {"id": 7, "category_id": 1},
]


def test_panoptic_quality_hand_computed(panoptic):
    results = panoptic.compute(
        predictions=[PQ_PRED],
        references=[PQ_REF],
        predicted_segments_info=[PQ_PRED_INFO],
        reference_segments_info=[PQ_REF_INFO],
        things=[1],
    )
    assert results["per_category"] == {
        1: pytest.approx({"pq": 5 / 9, "sq": 5 / 6, "rq": 2 / 3, "tp": 1, "fp": 0, "fn": 1}),
        2: pytest.approx({"pq": 2 / 3, "sq": 1.0, "rq": 2 / 3, "tp": 1, "fp": 1, "fn": 0}),
    }
    expected = {
        "pq": 11 / 18,  # (5/9 + 2/3) / 2
        "sq": 11 / 12,  # (5/6 + 1) / 2
        "rq": 2 / 3,
        "pq_things": 5 / 9,
        "sq_things": 5 / 6,
        "rq_things": 2 / 3,
        "pq_stuff": 2 / 3,
        "sq_stuff": 1.0,
        "rq_stuff": 2 / 3,
    }
    assert {key: results[key] for key in expected} == pytest.approx(expected)


def test_panoptic_quality_crowd_of_other_category_and_batches(panoptic):
    # Pred 7 relabelled as stuff cat 2: the crowd below it is cat 1, so it is now a FP of cat 2:
    # cat 2: TP 1 (IoU 1), FP 2 -> PQ = RQ = 1 / 2, SQ 1. A second image with only a crowd reference and no
    # prediction adds nothing. Added with add_batch, in transformers' output format (label_id, score,
    # was_fused, no iscrowd for a non-crowd reference).
    predicted = [
        {"id": s["id"], "label_id": 2 if s["id"] == 7 else s["category_id"], "score": 0.9, "was_fused": False}
        for s in PQ_PRED_INFO
    ]
    references = [{k: v for k, v in s.items() if not (k == "iscrowd" and v == 0)} for s in PQ_REF_INFO]
    panoptic.add_batch(
        predictions=[PQ_PRED],
        references=[PQ_REF],
        predicted_segments_info=[predicted],
        reference_segments_info=[references],
    )
    panoptic.add_batch(
        predictions=[np.zeros((2, 2), dtype=np.int64)],
        references=[np.ones((2, 2), dtype=np.int64)],
        predicted_segments_info=[[]],
        reference_segments_info=[[{"id": 1, "category_id": 3, "iscrowd": 1}]],
    )
    results = panoptic.compute(things=[1])
    assert sorted(results["per_category"]) == [1, 2]
    assert results["per_category"][2] == pytest.approx({"pq": 0.5, "sq": 1.0, "rq": 0.5, "tp": 1, "fp": 2, "fn": 0})
    assert results["pq_things"] == pytest.approx(5 / 9)
    assert results["pq"] == pytest.approx((5 / 9 + 1 / 2) / 2)


def test_panoptic_quality_iou_threshold_is_strict(panoptic):
    # Pred 1 covers 2 px, ref 1 covers 1 of them: IoU = 1/2, not > 1/2 -> one FN and one FP, PQ 0.
    # Pred pixels of -1 (transformers' "no segment") belong to no segment. No thing category -> NaN.
    results = panoptic.compute(
        predictions=[np.array([[1, 1, -1]])],
        references=[np.array([[1, 2, 2]])],
        predicted_segments_info=[[{"id": 1, "category_id": 1}]],
        reference_segments_info=[[{"id": 1, "category_id": 1}, {"id": 2, "category_id": 2}]],
    )
    assert results["per_category"][1] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 1, "fn": 1}
    assert results["pq"] == 0.0 and math.isnan(results["pq_things"])


def test_panoptic_quality_errors(panoptic):
    with pytest.raises(ValueError, match="category_id"):
        panoptic.compute(
            predictions=[np.ones((1, 2))],
            references=[np.ones((1, 2))],
            predicted_segments_info=[[{"id": 1}]],
            reference_segments_info=[[{"id": 1, "category_id": 1}]],
        )
    with pytest.raises(ValueError, match="conflicting category"):
        panoptic.compute(
            predictions=[np.ones((1, 2))],
            references=[np.ones((1, 2))],
            predicted_segments_info=[[{"id": 1, "category_id": 1}, {"id": 1, "category_id": 2}]],
            reference_segments_info=[[{"id": 1, "category_id": 1}]],
        )


# ---------------------------------------------------------------- per-image statistics (multi-process evaluation)


def test_depth_disparity_alignment(depth):
    # The prediction is an inverse depth up to scale and shift: 3 / ref + 2 -> aligned exactly.
    reference = np.array([[1.0, 2.0], [4.0, 8.0]])
    prediction = 3.0 / reference + 2.0
    results = depth.compute(predictions=[prediction], references=[reference], disparity_alignment=True)
    assert results["rmse"] == pytest.approx(0.0, abs=1e-9) and results["delta1"] == 1.0
    # A constant prediction fits the shift only: disparity mean(1 / ref) everywhere, capped at 1 / max_depth.
    flat = depth.compute(predictions=[np.ones((2, 2))], references=[reference], disparity_alignment=True)
    assert flat["rmse"] == pytest.approx(np.sqrt(np.mean((1 / np.mean(1 / reference) - reference) ** 2)))
    with pytest.raises(ValueError, match="exclusive"):
        depth.compute(predictions=[prediction], references=[reference], disparity_alignment=True, median_scaling=True)


def test_statistics_route_equals_compute(depth, mean_iou, panoptic):
    predictions, references = [DEPTH_PRED, 2 * DEPTH_PRED], [DEPTH_REF, DEPTH_REF + 1]
    rows = [depth.image_statistics(p, r, max_depth=8.0) for p, r in zip(predictions, references)]
    assert depth.metrics_from_statistics(rows) == depth.compute(
        predictions=predictions, references=references, max_depth=8.0
    )
    areas = [mean_iou.image_statistics(IOU_PRED, IOU_REF, num_labels=4, ignore_index=255)] * 2
    assert areas[0].shape == (3, 4) and areas[0].dtype == np.int64
    expected = mean_iou.compute(predictions=[IOU_PRED] * 2, references=[IOU_REF] * 2, num_labels=4, ignore_index=255)
    np.testing.assert_equal(mean_iou.metrics_from_statistics(areas, 4), expected)
    counts = panoptic.image_statistics(PQ_PRED, PQ_REF, PQ_PRED_INFO, PQ_REF_INFO)
    assert counts == {1: (1, 0, 1, pytest.approx(5 / 6)), 2: (1, 1, 0, 1.0)}
    assert panoptic.metrics_from_statistics([counts], things=[1]) == panoptic.compute(
        predictions=[PQ_PRED],
        references=[PQ_REF],
        predicted_segments_info=[PQ_PRED_INFO],
        reference_segments_info=[PQ_REF_INFO],
        things=[1],
    )
