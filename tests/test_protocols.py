"""The published evaluation protocols (hf_expedite.evaluation.protocols) on hand-built cases and a real tiny model."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import torch
from transformers import DPTConfig, DPTForSemanticSegmentation

from hf_expedite.evaluation.protocols import (
    crop_and_resize,
    panoptic_inference,
    resize_short_side,
    semantic_scores,
    short_side_size,
    slide_inference,
    sliding_windows,
)
from hf_expedite.metrics import load_metric
from hf_expedite_cli.options import COCO_PANOPTIC_CATEGORIES


def test_short_side_resize_keeps_the_aspect_ratio_under_the_long_side_cap():
    assert short_side_size(480, 640, 800, 1333) == (800, 1067)  # COCO test size
    assert short_side_size(400, 1200, 800, 1333) == (444, 1333)  # long side capped
    assert short_side_size(683, 512, 512, 2048) == (683, 512)  # ADE20K: already at its short side
    assert resize_short_side(PIL.Image.new("RGB", (640, 480)), 512, 2048).size == (683, 512)


def test_sliding_windows_follow_mmseg():
    # 512 x 683 with 512 windows, stride 341: two columns, the last moved back to end at the border.
    assert sliding_windows(512, 683, 512, 341) == [(0, 512, 0, 512), (0, 512, 171, 683)]
    assert sliding_windows(300, 400, 512, 341) == [(0, 300, 0, 400)]  # a window covering the image


def test_slide_inference_averages_overlapping_windows():
    # Pixel values are the column index; each window answers its first column everywhere: columns 0..3 see only the
    # first window (0), 4..5 both (mean 2), 6..9 only the second (4).
    columns = torch.arange(10.0).expand(1, 1, 6, 10)
    scores = slide_inference(columns, 6, 4, lambda window: torch.full_like(window, float(window[0, 0, 0, 0])))
    assert scores[0, 0, 0].tolist() == [0, 0, 0, 0, 2, 2, 4, 4, 4, 4]


def test_sliding_window_covering_the_image_is_whole_image_inference():
    torch.manual_seed(0)
    config = DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                       image_size=64, patch_size=8, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 8, 16, 16],
                       fusion_hidden_size=16, num_labels=5)  # fmt: skip
    model = DPTForSemanticSegmentation(config).eval()
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        whole = semantic_scores(model(pixel_values=pixels), (64, 64))
        slid = slide_inference(pixels, 96, 64, lambda w: semantic_scores(model(pixel_values=w), tuple(w.shape[-2:])))
        assert torch.equal(slid, whole)
        # overlapping 64-pixel windows on a 64 x 96 input: the middle columns average two windows
        wide = torch.randn(1, 3, 64, 96)
        left = semantic_scores(model(pixel_values=wide[..., :64]), (64, 64))
        right = semantic_scores(model(pixel_values=wide[..., 32:]), (64, 64))
        slid = slide_inference(wide, 64, 32, lambda w: semantic_scores(model(pixel_values=w), tuple(w.shape[-2:])))
    torch.testing.assert_close(slid[..., :32], left[..., :32], rtol=0, atol=0)
    torch.testing.assert_close(slid[..., 32:64], (left[..., 32:] + right[..., :32]) / 2, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(slid[..., 64:], right[..., 32:], rtol=0, atol=0)


def test_crop_and_resize_drops_the_padding_first():
    scores = torch.zeros(2, 8, 8)
    scores[:, :6, :4] = 1.0  # the image; the rest is padding
    assert torch.equal(crop_and_resize(scores, (6, 4), (3, 2)), torch.ones(2, 3, 2))


def _queries(labels: list[int], regions: list[tuple[slice, slice]], num_classes: int = 10):
    """Class logits picking ``labels`` with high confidence and masks that cover ``regions`` of a 6 x 10 map."""
    class_logits = torch.full((len(labels), num_classes + 1), -10.0)
    mask_logits = torch.full((len(labels), 6, 10), -10.0)
    for query, (label, (rows, cols)) in enumerate(zip(labels, regions)):
        class_logits[query, label] = 10.0
        mask_logits[query, rows, cols] = 10.0
    return class_logits, mask_logits


def test_panoptic_ids_are_unique_when_a_stuff_class_appears_twice():
    # Five queries: thing, stuff 7, thing, stuff 7, thing (transformers' post-processing can reuse an id here).
    regions = [(slice(0, 3), slice(0, 2)), (slice(0, 3), slice(2, 4)), (slice(0, 3), slice(4, 6)),
               (slice(3, 6), slice(0, 5)), (slice(3, 6), slice(5, 10))]  # fmt: skip
    class_logits, mask_logits = _queries([1, 7, 2, 7, 3], regions)
    segmentation, segments = panoptic_inference(class_logits, mask_logits, thing_ids={1, 2, 3})
    ids = [segment["id"] for segment in segments]
    assert ids == [1, 2, 3, 4] and len(set(ids)) == len(ids)
    assert [segment["label_id"] for segment in segments] == [1, 7, 2, 3]
    stuff = segments[1]
    assert stuff["was_fused"] and (segmentation[0:3, 2:4] == stuff["id"]).all() and (segmentation[3:6, 0:5] == 2).all()
    assert set(np.unique(segmentation.numpy()).tolist()) == {0, 1, 2, 3, 4}  # 0: pixels no query covers
    # the metric accepts it (a reused id would make it raise and abort the run)
    metric = load_metric("panoptic_quality")
    reference_info = [{"id": s["id"], "category_id": s["label_id"]} for s in segments]
    counts = metric.image_statistics(segmentation.numpy(), segmentation.numpy(), segments, reference_info)
    assert all(tp == 1 for tp, _, _, _ in counts.values())


def test_panoptic_queries_below_the_thresholds_are_dropped():
    class_logits, mask_logits = _queries([1, 2], [(slice(0, 6), slice(0, 10)), (slice(0, 6), slice(0, 4))])
    class_logits[1] = 0.0  # query 2: uniform class scores, far below the 0.8 object threshold
    segmentation, segments = panoptic_inference(class_logits, mask_logits, thing_ids={1, 2})
    assert [segment["label_id"] for segment in segments] == [1] and (segmentation == 1).all()
    # query 2 wins only part of its mask against a stronger query: below the 0.8 overlap threshold it is dropped
    class_logits, mask_logits = _queries([1, 2], [(slice(0, 6), slice(0, 6)), (slice(0, 6), slice(3, 10))])
    class_logits[0, 1] = 12.0
    _, segments = panoptic_inference(class_logits, mask_logits, thing_ids={1, 2}, overlap_threshold=0.8)
    assert [segment["label_id"] for segment in segments] == [1]  # query 2 wins 4 of its 7 columns: 0.57 < 0.8
    _, segments = panoptic_inference(class_logits, mask_logits, thing_ids={1, 2}, overlap_threshold=0.5)
    assert [segment["label_id"] for segment in segments] == [1, 2]


def test_the_shipped_coco_panoptic_categories():
    categories = json.loads(COCO_PANOPTIC_CATEGORIES.read_text())
    assert len(categories) == 133 and len(set(categories.values())) == 133
    ids = sorted(map(int, categories))
    assert ids[79] == 90 and ids[80] == 92 and ids[-1] == 200  # 80 things (1..90), then 53 stuff (92..200)
    assert categories["1"] == "person" and categories["200"] == "rug-merged"
