"""Expedited Mask2Former: hub layouts, parity, the k == K oracle, configs and presets, the image-segmentation
pipeline and post-processing on real photographs, and the paper's backbone FLOPs ratio for Swin-L."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from skimage import data as photos
from transformers import (
    AutoModelForUniversalSegmentation,
    Mask2FormerConfig,
    Mask2FormerForUniversalSegmentation,
    Mask2FormerImageProcessorPil,
    ResNetConfig,
    SwinBackbone,
    SwinConfig,
    pipeline,
)
from transformers.models.swin.modeling_swin import SwinRelativePositionBias

from hf_expedite import ExpeditedMask2FormerConfig, ExpeditedMask2FormerForUniversalSegmentation, ExpeditedSwinConfig
from hf_expedite.benchmark.measure import count_flops
from hf_expedite.models.mask2former import expedite_mask2former_config
from hf_expedite.models.swin import ExpeditedSwinBackbone, expedite_swin_config
from hf_expedite.presets import get_preset

# Swin backbone, patch 4, window 4: a 128x192 image gives stage maps 32x48, 16x24, 8x12 (2x3 windows), 4x6.
BACKBONE = dict(
    image_size=128,
    patch_size=4,
    embed_dim=16,
    depths=[1, 1, 4, 1],
    num_heads=[1, 2, 2, 4],
    window_size=4,
    drop_path_rate=0.0,
    out_features=["stage1", "stage2", "stage3", "stage4"],
)
LABELS = {0: "cat", 1: "coffee", 2: "person", 3: "rocket", 4: "sky"}
HEAD = dict(
    feature_size=32,
    mask_feature_size=32,
    hidden_dim=32,
    encoder_feedforward_dim=64,
    encoder_layers=1,
    decoder_layers=2,
    num_attention_heads=2,
    dim_feedforward=64,
    num_queries=8,
    id2label=LABELS,
)
SETTINGS = dict(clustering_location=2, clustered_window_size=3, reconstruction_k=4, clustering_temperature=2.0)
KEEP_ALL = dict(threshold=0.0, mask_threshold=0.0, overlap_mask_area_threshold=0.0)  # random weights: keep segments
IDENTITY = dict(clustering_location=3, clustered_window_size=4, clustering_iterations=0, reconstruction_k=1)


@pytest.fixture(scope="module")
def m2f_repo(tmp_path_factory):
    """A tiny Mask2FormerForUniversalSegmentation (Swin backbone, random bias tables) in the hub layout."""
    torch.manual_seed(0)
    model = Mask2FormerForUniversalSegmentation(Mask2FormerConfig(backbone_config=SwinConfig(**BACKBONE), **HEAD))
    for module in model.modules():
        if isinstance(module, SwinRelativePositionBias):
            module.relative_position_bias_table.data.normal_()
    path = tmp_path_factory.mktemp("mask2former")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def vanilla(m2f_repo):
    return Mask2FormerForUniversalSegmentation.from_pretrained(m2f_repo).eval()


@pytest.fixture(scope="module")
def processor():
    # torchvision is not installed: the PIL backend is what Mask2FormerImageProcessor resolves to here
    return Mask2FormerImageProcessorPil(size={"shortest_edge": 128, "longest_edge": 192})


def images():
    return [Image.fromarray(photos.chelsea()), Image.fromarray(photos.coffee())]


def load(repo, **settings):
    return ExpeditedMask2FormerForUniversalSegmentation.from_pretrained(repo, **settings).eval()


def test_hub_layout_loads_with_an_empty_report(m2f_repo):
    model, info = ExpeditedMask2FormerForUniversalSegmentation.from_pretrained(
        m2f_repo, output_loading_info=True, **SETTINGS
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert isinstance(model.config, ExpeditedMask2FormerConfig)
    assert isinstance(model.config.backbone_config, ExpeditedSwinConfig)
    assert model.config.backbone_config.clustering_location == 2  # setting kwargs reach the backbone config
    assert type(model.model.pixel_level_module.encoder) is ExpeditedSwinBackbone


def test_expedite_false_is_bit_identical(m2f_repo, vanilla, processor):
    inputs = processor(images(), return_tensors="pt")
    with torch.no_grad():
        expected = vanilla(**inputs, output_hidden_states=True)
        out = load(m2f_repo, expedite=False)(**inputs, output_hidden_states=True)
    assert torch.equal(out.class_queries_logits, expected.class_queries_logits)
    assert torch.equal(out.masks_queries_logits, expected.masks_queries_logits)
    for a, b in zip(out.encoder_hidden_states, expected.encoder_hidden_states, strict=True):
        assert torch.equal(a, b)


def test_clustered_window_equal_to_the_window_reproduces_vanilla(m2f_repo, vanilla, processor):
    inputs = processor(images(), return_tensors="pt")
    with torch.no_grad():
        expected = vanilla(**inputs, output_hidden_states=True)
        out = load(m2f_repo, **IDENTITY)(**inputs, output_hidden_states=True)
    for a, b in zip(out.encoder_hidden_states, expected.encoder_hidden_states, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.masks_queries_logits, expected.masks_queries_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.class_queries_logits, expected.class_queries_logits, rtol=1e-5, atol=1e-5)


def test_clustered_outputs_keep_the_vanilla_shapes(m2f_repo, vanilla, processor):
    inputs = processor(images(), return_tensors="pt")
    with torch.no_grad():
        expected = vanilla(**inputs, output_hidden_states=True)
        out = load(m2f_repo, **SETTINGS)(**inputs, output_hidden_states=True)
    for name in ("encoder_hidden_states", "pixel_decoder_hidden_states"):
        assert [h.shape for h in getattr(out, name)] == [h.shape for h in getattr(expected, name)]
    assert out.masks_queries_logits.shape == expected.masks_queries_logits.shape
    assert torch.isfinite(out.masks_queries_logits).all()
    assert not torch.allclose(out.encoder_hidden_states[2], expected.encoder_hidden_states[2], atol=1e-3)


def test_post_processing_works_on_expedited_outputs(m2f_repo, vanilla, processor):
    pictures = images()
    sizes = [picture.size[::-1] for picture in pictures]
    inputs = processor(pictures, return_tensors="pt")
    with torch.no_grad():
        outputs = {"vanilla": vanilla(**inputs), "expedited": load(m2f_repo, **SETTINGS)(**inputs)}
    results = {}
    for name, output in outputs.items():
        semantic = processor.post_process_semantic_segmentation(output, target_sizes=sizes)
        instance = processor.post_process_instance_segmentation(output, **KEEP_ALL, target_sizes=sizes)
        panoptic = processor.post_process_panoptic_segmentation(output, **KEEP_ALL, target_sizes=sizes)
        results[name] = (semantic, instance, panoptic)
    for semantic, instance, panoptic in results.values():
        assert [tuple(s.shape) for s in semantic] == sizes
        assert [tuple(r["segmentation"].shape) for r in instance + panoptic] == sizes * 2
        assert all(r["segments_info"] for r in panoptic)
        assert all(set(np.unique(s.numpy())) <= set(LABELS) for s in semantic)


@pytest.mark.parametrize("subtask", ["panoptic", "instance", "semantic"])
def test_image_segmentation_pipeline(m2f_repo, processor, subtask):
    segmenter = pipeline("image-segmentation", model=load(m2f_repo, **SETTINGS), image_processor=processor)
    picture = images()[0]
    kwargs = {} if subtask == "semantic" else KEEP_ALL
    segments = segmenter(picture, subtask=subtask, **kwargs)
    assert segments and all(segment["label"] in LABELS.values() for segment in segments)
    assert all(segment["mask"].size == picture.size and segment["mask"].mode == "L" for segment in segments)
    assert (subtask == "semantic") == all(segment["score"] is None for segment in segments)


def test_save_writes_the_hub_layout_and_reloads_expedited(m2f_repo, processor, tmp_path):
    model = load(m2f_repo, **SETTINGS)
    model.save_pretrained(tmp_path)
    assert set(load_file(tmp_path / "model.safetensors")) == set(load_file(m2f_repo / "model.safetensors"))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "expedited_mask2former"
    assert saved["backbone_config"]["model_type"] == "expedited_swin"
    assert saved["backbone_config"]["clustered_window_size"] == 3
    reloaded = AutoModelForUniversalSegmentation.from_pretrained(str(tmp_path)).eval()
    assert type(reloaded) is ExpeditedMask2FormerForUniversalSegmentation
    inputs = processor(images()[:1], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).masks_queries_logits, model(**inputs).masks_queries_logits)


def test_config_conversion_and_unsupported_backbones():
    vanilla = Mask2FormerConfig(backbone_config=SwinConfig(**BACKBONE), **HEAD)
    config = expedite_mask2former_config(vanilla, clustering_location=3, clustered_window_size=2)
    assert type(config) is ExpeditedMask2FormerConfig and type(config.backbone_config) is ExpeditedSwinConfig
    assert (config.backbone_config.clustering_location, config.backbone_config.num_clusters) == (3, [2, 2])
    again = expedite_mask2former_config(config, expedite=False)  # an expedited config keeps its other settings
    assert not again.backbone_config.expedite and again.backbone_config.clustering_location == 3
    default = ExpeditedMask2FormerConfig()  # Mask2Former's default backbone: depths [2, 2, 18, 2], window 7
    assert (default.backbone_config.clustering_location, default.backbone_config.clustered_window_size) == (10, 5)
    with pytest.raises(ValueError, match="Swin backbone.*'resnet'"):
        expedite_mask2former_config(Mask2FormerConfig(backbone_config=ResNetConfig()))
    with pytest.raises(ValueError, match="Mask2Former config"):
        expedite_mask2former_config(SwinConfig())
    with pytest.raises(ValueError, match="clustered_window_size"):
        expedite_mask2former_config(vanilla, clustered_window_size=6)


@pytest.mark.parametrize(
    "name,location,temperature,window,k",
    [
        ("coco-panoptic", 10, 20.0, 7, 10),
        ("coco-instance", 12, 100.0, 11, 60),
        ("ade20k-panoptic", 14, 100.0, 7, 49),
        ("ade20k-semantic", 7, 100.0, 5, 10),
    ],
)
def test_official_presets_convert_the_published_settings(name, location, temperature, window, k):
    swin_large = SwinConfig(embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48], window_size=12)
    preset = get_preset("mask2former", name)
    config = expedite_mask2former_config(Mask2FormerConfig(backbone_config=swin_large), **preset.settings)
    backbone = config.backbone_config
    assert (backbone.clustering_location, backbone.clustered_window_size, backbone.clustering_window_size) == (
        location,
        8,
        window,
    )
    assert backbone.clustering_temperature == backbone.reconstruction_temperature == temperature
    assert backbone.reconstruction_k == k and backbone.reconstruction_normalization == "l2"
    assert backbone.official_shift_mask and preset.source and "937 ->" in preset.published


SWIN_LARGE = dict(embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48], window_size=12, image_size=384)


@pytest.mark.parametrize("preset,published", [("coco-panoptic", 663 / 937), ("ade20k-semantic", 620 / 937)])
def test_swin_large_backbone_flops_ratio_matches_the_paper(preset, published):
    """The paper's backbone-only GFLOPs at 1152x1152 (fvcore). Every cost of the backbone is per token and every stage
    map of a 384x384 input (96, 48, 24, 12) is a multiple of the window, as at 1152x1152 (288, 144, 72, 36), so the
    ratio counted at 384x384 is the 1152x1152 ratio. The vanilla forward is counted on the meta device."""
    config = SwinConfig(**SWIN_LARGE, out_features=["stage1", "stage2", "stage3", "stage4"], drop_path_rate=0.0)
    config._attn_implementation = "eager"  # the same attention kernels on the meta device and on CPU
    with torch.device("meta"):
        vanilla = SwinBackbone(config).eval()
    vanilla_flops = count_flops(vanilla, {"pixel_values": torch.empty(1, 3, 384, 384, device="meta")})
    expedited = ExpeditedSwinBackbone(expedite_swin_config(config, **get_preset("mask2former", preset).settings))
    pixels = torch.from_numpy(np.asarray(Image.fromarray(photos.astronaut()).resize((384, 384)), np.float32) / 255)
    expedited_flops = count_flops(expedited.eval(), {"pixel_values": pixels.permute(2, 0, 1)[None]})
    assert vanilla_flops / 2e9 == pytest.approx(937 / 9, rel=0.01)  # 1152x1152 / 384x384 = 9 times the tokens
    assert expedited_flops / vanilla_flops == pytest.approx(published, rel=0.05)
