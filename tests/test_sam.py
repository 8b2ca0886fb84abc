"""Expedited SAM: the hub layouts (SamModel, SamVisionModel), parity with expedite off and with the identity setting,
image embeddings and hidden states of the vanilla shapes, prompts (points, boxes) and automatic mask generation on
real photographs, configs, presets and errors, save/reload."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from skimage import data as photos
from transformers import (
    SamConfig,
    SamHQConfig,
    SamHQModel,
    SamHQVisionConfig,
    SamModel,
    SamProcessor,
    SamVisionConfig,
    SamVisionModel,
    pipeline,
)
from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil
from transformers.models.sam.modeling_sam import SamVisionAttention

import hf_expedite
from hf_expedite import (
    ExpeditedSamConfig,
    ExpeditedSamHQModel,
    ExpeditedSamHQVisionConfig,
    ExpeditedSamModel,
    ExpeditedSamVisionConfig,
    ExpeditedSamVisionModel,
)
from hf_expedite.fidelity import fidelity_report
from hf_expedite.models.sam import expedite_sam_config, expedite_sam_vision_config
from hf_expedite.presets import get_preset

from test_fidelity import seeded_init

REPO_ROOT = Path(__file__).resolve().parents[1]
# 128x128 inputs, 8x8 patches -> a 16x16 token map; window 6: padded to 18, 3x3 windows; global blocks 1 and 3.
VISION = dict(
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=2,
    image_size=128,
    patch_size=8,
    window_size=6,
    global_attn_indexes=[1, 3],
    output_channels=16,
    num_pos_feats=8,
)
PROMPT = dict(hidden_size=16, image_size=128, patch_size=8, mask_input_channels=4)
DECODER = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, mlp_dim=32, iou_head_hidden_dim=16)
SETTINGS = dict(clustering_location=1, clustered_window_size=4, reconstruction_k=4)


def sam_config() -> SamConfig:
    return SamConfig(vision_config=SamVisionConfig(**VISION), prompt_encoder_config=PROMPT, mask_decoder_config=DECODER)


@pytest.fixture(scope="module")
def sam_repo(tmp_path_factory):
    """A tiny SamModel in the hub layout (SAM initialises its encoder at 1e-10: every matrix drawn at unit scale, and
    random relative-position tables), with its image processor."""
    torch.manual_seed(0)
    model = SamModel(sam_config())
    seeded_init(model)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, SamVisionAttention):
                module.rel_pos_h.normal_()
                module.rel_pos_w.normal_()
    path = tmp_path_factory.mktemp("sam")
    model.save_pretrained(path)
    SamImageProcessorPil(
        size={"longest_edge": 128},
        pad_size={"height": 128, "width": 128},
        mask_size={"longest_edge": 64},
        mask_pad_size={"height": 64, "width": 64},
    ).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def processor(sam_repo):
    return SamProcessor(image_processor=SamImageProcessorPil.from_pretrained(sam_repo))


@pytest.fixture(scope="module")
def vanilla(sam_repo):
    return SamModel.from_pretrained(sam_repo, attn_implementation="eager").eval()


def images():
    return [Image.fromarray(photos.astronaut()), Image.fromarray(photos.coffee())]


def load(repo, **settings):
    return ExpeditedSamModel.from_pretrained(repo, attn_implementation="eager", **settings).eval()


def encode(model, processor, **kwargs):
    pixel_values = processor(images=images(), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return model.vision_encoder(pixel_values, **kwargs)


def test_hub_layouts_load_with_an_empty_report(sam_repo, tmp_path):
    model, info = ExpeditedSamModel.from_pretrained(sam_repo, output_loading_info=True, **SETTINGS)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert isinstance(model.config, ExpeditedSamConfig)
    assert isinstance(model.config.vision_config, ExpeditedSamVisionConfig)
    assert model.config.vision_config.clustered_window_size == 4  # setting kwargs reach the vision config
    SamVisionModel(SamVisionConfig(**VISION)).save_pretrained(tmp_path)
    vision, info = ExpeditedSamVisionModel.from_pretrained(tmp_path, output_loading_info=True, **SETTINGS)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    for auto_class in (hf_expedite.AutoModel, hf_expedite.AutoModelForMaskGeneration):
        assert type(auto_class.from_pretrained(sam_repo, expedite=True)) is ExpeditedSamModel
    assert type(hf_expedite.AutoModel.from_pretrained(sam_repo, expedite=False)) is SamModel
    assert type(hf_expedite.AutoModel.from_pretrained(tmp_path, expedite=True)) is ExpeditedSamVisionModel


def test_expedite_false_is_bit_identical(sam_repo, vanilla, processor):
    options = dict(output_hidden_states=True, output_attentions=True)
    expected, out = encode(vanilla, processor, **options), encode(load(sam_repo, expedite=False), processor, **options)
    assert torch.equal(out.last_hidden_state, expected.last_hidden_state)
    assert all(torch.equal(a, b) for a, b in zip(out.hidden_states, expected.hidden_states, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(out.attentions, expected.attentions, strict=True))


def test_clustering_without_padding_reproduces_vanilla(sam_repo, vanilla, processor):
    """With a window dividing the token map there is no padding, and clustering every 4x4 window to 4x4 with no
    iteration and top-1 reconstruction makes every token its own cluster: the vanilla encoder up to float32 rounding
    of the distance products (the tolerance). (With padding the global blocks would also see the padding tokens, as
    in the official code, and differ.)"""
    config = sam_config()
    config.vision_config.window_size = 4  # 16 = 4 x 4 windows
    torch.manual_seed(1)
    model = SamModel(config).eval()
    seeded_init(model)
    twin = ExpeditedSamModel(expedite_sam_config(config, clustering_location=1, clustered_window_size=4,
                                                 clustering_iterations=0, reconstruction_k=1)).eval()  # fmt: skip
    twin.load_state_dict(model.state_dict())
    pixel_values = processor(images=images(), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = model.vision_encoder(pixel_values).last_hidden_state
        torch.testing.assert_close(twin.vision_encoder(pixel_values).last_hidden_state, expected, rtol=1e-5, atol=1e-5)


def test_clustered_outputs_keep_the_vanilla_shapes(sam_repo, vanilla, processor):
    options = dict(output_hidden_states=True, output_attentions=True)
    expected, out = encode(vanilla, processor, **options), encode(load(sam_repo, **SETTINGS), processor, **options)
    assert out.last_hidden_state.shape == expected.last_hidden_state.shape == (2, 16, 16, 16)
    assert [h.shape for h in out.hidden_states] == [h.shape for h in expected.hidden_states]
    assert torch.equal(out.hidden_states[1], expected.hidden_states[1])  # before clustering nothing changes
    # Block 1 (global) attends over the 12x12 clustered map (3x3 windows of 4x4); block 2 in 4x4 windows.
    assert out.attentions[1].shape[-1] == 144 and out.attentions[2].shape[-1] == 16
    assert torch.isfinite(out.last_hidden_state).all()
    assert not torch.allclose(out.last_hidden_state, expected.last_hidden_state, atol=1e-3)


def test_points_and_boxes_on_photographs(sam_repo, vanilla, processor):
    model = load(sam_repo, **SETTINGS)
    pictures = images()
    points = processor(images=pictures, input_points=[[[200, 150]], [[100, 120]]], return_tensors="pt")
    boxes = processor(images=pictures, input_boxes=[[[50, 60, 300, 400]], [[10, 20, 200, 300]]], return_tensors="pt")
    for inputs in (points, boxes):
        prompts = {k: v for k, v in inputs.items() if k not in ("original_sizes", "reshaped_input_sizes")}
        with torch.no_grad():
            out, expected = model(**prompts), vanilla(**prompts)
        assert out.pred_masks.shape == expected.pred_masks.shape and out.iou_scores.shape == expected.iou_scores.shape
        masks = processor.image_processor.post_process_masks(
            out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"]
        )
        assert [tuple(m.shape[-2:]) for m in masks] == [picture.size[::-1] for picture in pictures]
    # Embeddings computed once and reused, as interactive use does.
    embeddings = model.get_image_embeddings(points["pixel_values"])
    with torch.no_grad():
        reused = model(image_embeddings=embeddings, input_points=points["input_points"])
        direct = model(pixel_values=points["pixel_values"], input_points=points["input_points"])
    assert torch.equal(reused.pred_masks, direct.pred_masks)


def test_mask_generation_pipeline_up_to_its_nms(sam_repo, processor):
    """The mask-generation pipeline's own point grid, batching, mask post-processing and filtering on an expedited
    model. Its last step, box NMS, is torchvision's (not installed here): see the next test."""
    generator = pipeline("mask-generation", model=load(sam_repo, **SETTINGS), image_processor=processor.image_processor)
    preprocess, forward, _ = generator._sanitize_parameters(points_per_crop=6, points_per_batch=16, pred_iou_thresh=0,
                                                            stability_score_thresh=0)  # fmt: skip
    picture = images()[1]
    outputs = [generator.forward(batch, **forward) for batch in generator.preprocess(picture, **preprocess)]
    assert len(outputs) == 3 and outputs[-1]["is_last"]  # a 6x6 point grid in batches of 16
    boxes = torch.cat([output["boxes"] for output in outputs])
    assert len(boxes) == sum(len(output["masks"]) for output in outputs) > 0
    assert (boxes[:, 2] <= picture.width).all() and (boxes[:, 3] <= picture.height).all()


def test_mask_generation_pipeline(sam_repo, processor):
    pytest.importorskip("torchvision.ops")
    generator = pipeline("mask-generation", model=load(sam_repo, **SETTINGS), image_processor=processor.image_processor)
    picture = images()[1]
    result = generator(picture, points_per_crop=6, points_per_batch=16, pred_iou_thresh=0, stability_score_thresh=0)
    assert result["masks"] and all(mask.shape == picture.size[::-1] for mask in result["masks"])


def test_configs_presets_and_errors():
    huge = SamVisionConfig(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16,
                           global_attn_indexes=[7, 15, 23, 31])  # fmt: skip
    default = expedite_sam_vision_config(huge)  # the official scripts' setting: block 6, 14 -> 10
    assert (default.clustering_location, default.clustered_window_size, default.num_clusters) == (6, 10, [10, 10])
    assert default.clustering_temperature == default.reconstruction_temperature == 200.0
    assert expedite_sam_vision_config(SamVisionConfig()).clustering_location == 2  # ViT-B: 12 blocks
    official = expedite_sam_vision_config(huge, **get_preset("sam", "vit-h-6-81").settings)
    assert (official.clustering_location, official.clustered_window_size) == (6, 9)
    assert official.reconstruction_normalization == "l2" and "1.49x" in get_preset("sam", "vit-h-6-81").published
    with pytest.raises(ValueError, match="clustered_window_size=15.*1..14"):
        expedite_sam_vision_config(huge, clustered_window_size=15)
    with pytest.raises(ValueError, match="official_shift_mask"):
        expedite_sam_vision_config(huge, official_shift_mask=True)
    with pytest.raises(ValueError, match="clustering_location=32"):
        expedite_sam_vision_config(huge, clustering_location=32)
    with pytest.raises(ValueError, match="cluster_ratio"):
        expedite_sam_vision_config(huge, cluster_ratio=0.5)
    config = expedite_sam_config(sam_config(), clustered_window_size=3)
    assert type(config.vision_config) is ExpeditedSamVisionConfig and config.vision_config.num_clusters == [3, 3]
    assert not expedite_sam_config(config, expedite=False).vision_config.expedite


def test_save_writes_the_hub_layout_and_reloads_expedited(sam_repo, processor, tmp_path):
    model = load(sam_repo, **SETTINGS)
    model.save_pretrained(tmp_path)
    assert set(load_file(tmp_path / "model.safetensors")) == set(load_file(sam_repo / "model.safetensors"))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "expedited_sam"
    assert saved["vision_config"]["model_type"] == "expedited_sam_vision_model"
    assert saved["vision_config"]["clustered_window_size"] == 4
    reloaded = hf_expedite.AutoModelForMaskGeneration.from_pretrained(str(tmp_path), attn_implementation="eager")
    assert type(reloaded) is ExpeditedSamModel
    assert torch.equal(encode(reloaded.eval(), processor).last_hidden_state, encode(model, processor).last_hidden_state)
    info = SamModel.from_pretrained(tmp_path, output_loading_info=True)[1]
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_fidelity_report_on_point_prompts(sam_repo, processor, tmp_path):
    """Label-free fidelity: the masks of a 4x4 grid of point prompts, expedited vs vanilla, through the function and
    through scripts/fidelity_report.py (task chosen from the checkpoint)."""
    vanilla = SamModel.from_pretrained(sam_repo).eval()
    same = ExpeditedSamModel.from_pretrained(sam_repo, expedite=False).eval()
    exact = fidelity_report(vanilla, same, processor.image_processor, images(), "masks")
    assert exact.summary == {"mask_iou_vs_vanilla": 1.0, "pixel_agreement": 1.0}
    reduced = fidelity_report(vanilla, load(sam_repo, **SETTINGS), processor.image_processor, images(), "masks")
    assert 0.0 < reduced.summary["mask_iou_vs_vanilla"] < 1.0
    script = importlib.util.spec_from_file_location("fidelity_report_sam", REPO_ROOT / "scripts/fidelity_report.py")
    module = importlib.util.module_from_spec(script)
    script.loader.exec_module(module)
    payload = module.main([str(sam_repo), "--expedite", json.dumps(SETTINGS), "--max-images", "2",
                           "--output-dir", str(tmp_path)])  # fmt: skip
    row = payload[json.dumps(SETTINGS)]
    assert row["summary"]["mask_iou_vs_vanilla"] == pytest.approx(reduced.summary["mask_iou_vs_vanilla"], abs=0.05)
    assert json.loads((tmp_path / "fidelity.json").read_text())["task"] == "masks"
    assert len(list((tmp_path / "pictures").rglob("*.png"))) == 2


def test_a_map_smaller_than_one_window_is_padded_as_by_vanilla_sam(sam_repo, processor):
    """A 16x16 token map with window 20: vanilla SAM pads it to one window, and so does clustering (20 -> 8)."""
    config = sam_config()
    config.vision_config.window_size = 20
    torch.manual_seed(0)
    model = SamModel(config).eval()
    seeded_init(model)
    twin = ExpeditedSamModel(expedite_sam_config(config, clustering_location=1, clustered_window_size=8)).eval()
    twin.load_state_dict(model.state_dict())
    pixel_values = processor(images=images(), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = model.vision_encoder(pixel_values).last_hidden_state
        out = twin.vision_encoder(pixel_values, output_attentions=True)
    assert out.last_hidden_state.shape == expected.shape and torch.isfinite(out.last_hidden_state).all()


# ---------------------------------------------------------------- SAM-HQ: the same encoder, plus the global blocks'
# outputs for the HQ mask decoder (intermediate_embeddings).


@pytest.fixture(scope="module")
def sam_hq_repo(tmp_path_factory):
    torch.manual_seed(0)
    config = SamHQConfig(vision_config=SamHQVisionConfig(**VISION), prompt_encoder_config=PROMPT,
                         mask_decoder_config={**DECODER, "vit_dim": VISION["hidden_size"]})  # fmt: skip
    model = SamHQModel(config)
    seeded_init(model)
    path = tmp_path_factory.mktemp("sam_hq")
    model.save_pretrained(path)
    return path


def test_sam_hq_loads_runs_and_reconstructs_the_intermediate_embeddings(sam_hq_repo, processor):
    vanilla = SamHQModel.from_pretrained(sam_hq_repo).eval()
    model, info = ExpeditedSamHQModel.from_pretrained(sam_hq_repo, output_loading_info=True, **SETTINGS)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert isinstance(model.config.vision_config, ExpeditedSamHQVisionConfig)
    auto = hf_expedite.AutoModelForMaskGeneration.from_pretrained(sam_hq_repo, expedite=True)
    assert type(auto) is ExpeditedSamHQModel
    off = ExpeditedSamHQModel.from_pretrained(sam_hq_repo, expedite=False).eval()
    inputs = processor(images=images(), input_points=[[[200, 150]], [[100, 120]]], return_tensors="pt")
    prompts = {k: v for k, v in inputs.items() if k not in ("original_sizes", "reshaped_input_sizes")}
    with torch.no_grad():
        expected = vanilla.vision_encoder(prompts["pixel_values"])
        exact = off.vision_encoder(prompts["pixel_values"])
        assert torch.equal(exact.last_hidden_state, expected.last_hidden_state)
        assert all(torch.equal(a, b) for a, b in zip(exact.intermediate_embeddings, expected.intermediate_embeddings))
        encoded = model.eval().vision_encoder(prompts["pixel_values"])
        masks, reference = model(**prompts).pred_masks, vanilla(**prompts).pred_masks
    # One intermediate embedding per global block (1 and 3), both after clustering: reconstructed to the full map.
    assert [e.shape for e in encoded.intermediate_embeddings] == [e.shape for e in expected.intermediate_embeddings]
    assert len(encoded.intermediate_embeddings) == 2 and encoded.intermediate_embeddings[0].shape[1:3] == (16, 16)
    assert masks.shape == reference.shape and torch.isfinite(masks).all()
    assert not torch.allclose(encoded.intermediate_embeddings[0], expected.intermediate_embeddings[0], atol=1e-3)
