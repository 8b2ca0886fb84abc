"""Expedited DPT (DPT-Large style ViT encoder and DPT-Hybrid): loading, parity, hidden states, pipelines, fidelity.

Tiny random-init models are saved with ``save_pretrained`` (the hub layout) and loaded back; inputs are photographs
from ``skimage.data``. The DINOv2-backbone DPT is covered in ``test_dinov2_depth_anything.py``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from packaging.version import Version
from transformers import (
    BeitConfig,
    DPTConfig,
    DPTForDepthEstimation,
    DPTForSemanticSegmentation,
    DPTImageProcessorPil,
    pipeline,
)

import hf_expedite
from hf_expedite import ExpeditedDPTConfig, ExpeditedDPTForDepthEstimation, ExpeditedDPTForSemanticSegmentation
from hf_expedite.benchmark.cases_dpt import dpt_hybrid_config, dpt_hybrid_nyu_480x640
from hf_expedite.benchmark.measure import count_flops
from hf_expedite.benchmark.photos import photograph
from hf_expedite.hourglass import RECONSTRUCTION_SCOPE
from hf_expedite.models.dpt import expedite_dpt_config

PHOTOS = ("astronaut", "coffee", "chelsea")
SELECTS_HIDDEN_STATES = Version(transformers.__version__) >= Version("5.23")  # output_hidden_states=[i] selects


def large_config(**overrides) -> DPTConfig:
    """DPT-Large layout, tiny: 6 ViT blocks, patch 8, the neck reads blocks 1, 3, 4 and 5."""
    sizes = dict(hidden_size=32, num_hidden_layers=6, num_attention_heads=2, intermediate_size=64, image_size=64)
    neck = dict(backbone_out_indices=[1, 3, 4, 5], neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16)
    return DPTConfig(**{**sizes, **neck, "patch_size": 8, "num_labels": 4, **overrides})


def hybrid_config() -> DPTConfig:
    """DPT-Hybrid layout, tiny: BiT stages (1 block each) + 4 ViT blocks, patch 16; the neck reads blocks 2 and 3."""
    bit = dict(
        model_type="bit",
        global_padding="same",
        layer_type="bottleneck",
        depths=[1, 1, 1],
        hidden_sizes=[8, 16, 32, 64],
        embedding_size=8,
        num_groups=2,
        out_features=["stage1", "stage2", "stage3"],
        embedding_dynamic_padding=True,
    )
    return DPTConfig(
        is_hybrid=True,
        backbone_config=bit,
        backbone_featmap_shape=[1, 32, 4, 4],
        backbone_out_indices=[0, 1, 2, 3],
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=64,
        patch_size=16,
        reassemble_factors=[1, 1, 1, 0.5],
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        num_labels=4,
    )


def fidelity_config() -> DPTConfig:
    """A small DPT-Large layout that is not degenerate: with the default initializer_range (0.02) the tiny convolution
    stack shrinks the depth to ~1e-7 and it barely depends on the image; 0.1 keeps it O(1) and image dependent."""
    return large_config(hidden_size=64, num_attention_heads=4, intermediate_size=128, image_size=128,
                        neck_hidden_sizes=[16, 32, 64, 64], fusion_hidden_size=32, initializer_range=0.1)


def processor(size: int, keep_aspect_ratio: bool = False) -> DPTImageProcessorPil:
    """The DPT image processor (the PIL one: torchvision is not installed)."""
    return DPTImageProcessorPil(
        size={"height": size, "width": size}, keep_aspect_ratio=keep_aspect_ratio, ensure_multiple_of=8
    )


def photo_pixels(size: int) -> torch.Tensor:
    return processor(size)(images=[photograph(name) for name in PHOTOS], return_tensors="pt").pixel_values


def saved(model: torch.nn.Module, path) -> str:
    model.save_pretrained(path)
    return str(path)


def count_reconstructions(model: torch.nn.Module, pixel_values: torch.Tensor, **kwargs) -> tuple[int, object]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile, torch.no_grad():
        outputs = model(pixel_values, **kwargs)
    return sum(event.name == RECONSTRUCTION_SCOPE for event in profile.events()), outputs


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1])


VARIANTS = {
    "large-depth": (large_config, DPTForDepthEstimation, ExpeditedDPTForDepthEstimation, "predicted_depth"),
    "large-segmentation": (large_config, DPTForSemanticSegmentation, ExpeditedDPTForSemanticSegmentation, "logits"),
    "hybrid-depth": (hybrid_config, DPTForDepthEstimation, ExpeditedDPTForDepthEstimation, "predicted_depth"),
    "hybrid-segmentation": (hybrid_config, DPTForSemanticSegmentation, ExpeditedDPTForSemanticSegmentation, "logits"),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_hub_checkpoint_loads_and_expedite_off_is_bit_identical(variant, tmp_path):
    make_config, vanilla_class, expedited_class, output = VARIANTS[variant]
    torch.manual_seed(0)
    vanilla = vanilla_class(make_config()).eval()
    path = saved(vanilla, tmp_path)
    settings = {"clustering_location": 2, "cluster_ratio": 0.75, "reconstruction_k": 4}
    expedited, info = expedited_class.from_pretrained(
        path, config=expedite_dpt_config(vanilla.config, **settings), output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    off = expedited_class.from_pretrained(path, config=expedite_dpt_config(vanilla.config, expedite=False))
    pixel_values = photo_pixels(64)
    with torch.no_grad():
        reference = vanilla(pixel_values, output_hidden_states=True)
        same = off.eval()(pixel_values, output_hidden_states=True)
        fast = expedited.eval()(pixel_values, output_hidden_states=True)
    assert torch.equal(same[output], reference[output])
    assert all(torch.equal(a, b) for a, b in zip(same.hidden_states, reference.hidden_states, strict=True))
    assert fast[output].shape == reference[output].shape
    assert [h.shape for h in fast.hidden_states] == [h.shape for h in reference.hidden_states]
    assert not torch.equal(fast[output], reference[output])  # clustering really ran
    # Before clustering (2 blocks) the hidden states are the vanilla ones.
    assert all(torch.equal(fast.hidden_states[i], reference.hidden_states[i]) for i in range(3))


def test_loading_by_class_with_setting_kwargs_and_save_reload_round_trip(tmp_path):
    torch.manual_seed(0)
    vanilla = DPTForDepthEstimation(large_config()).eval()
    path = saved(vanilla, tmp_path / "vanilla")
    expedited = ExpeditedDPTForDepthEstimation.from_pretrained(path, clustering_location=3, num_clusters=[6, 6])
    assert isinstance(expedited.config, ExpeditedDPTConfig)
    assert expedited.config.clustering_location == 3 and expedited.config.num_clusters == [6, 6]
    assert expedited.config.model_type == "expedited_dpt"
    saved_path = saved(expedited, tmp_path / "expedited")
    with open(f"{saved_path}/config.json") as file:
        assert json.load(file)["model_type"] == "expedited_dpt"
    reloaded = transformers.AutoModelForDepthEstimation.from_pretrained(saved_path).eval()
    assert type(reloaded) is ExpeditedDPTForDepthEstimation
    assert reloaded.config.num_clusters == [6, 6]
    pixel_values = photo_pixels(64)
    with torch.no_grad():
        assert torch.equal(reloaded(pixel_values).predicted_depth, expedited.eval()(pixel_values).predicted_depth)
    # The saved weights keep the hub layout: the vanilla class reads them with an empty report.
    _, info = DPTForDepthEstimation.from_pretrained(saved_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


@pytest.mark.parametrize("model_class", [ExpeditedDPTForDepthEstimation, ExpeditedDPTForSemanticSegmentation])
def test_only_hidden_states_somebody_reads_are_reconstructed(model_class):
    # 6 blocks, clustering after 2: hidden states 3..6 are reduced; the neck reads 2, 4, 5 and 6 (blocks 1, 3, 4, 5).
    torch.manual_seed(0)
    model = model_class(expedite_dpt_config(large_config(), clustering_location=2, num_clusters=[5, 5])).eval()
    pixel_values = photo_pixels(64)[:1]
    count, outputs = count_reconstructions(model, pixel_values)
    assert count == 3 and outputs.hidden_states is None
    count, outputs = count_reconstructions(model, pixel_values, output_hidden_states=True)
    assert count == 4 and all(h.shape == (1, 65, 32) for h in outputs.hidden_states)
    if SELECTS_HIDDEN_STATES:
        count, outputs = count_reconstructions(model, pixel_values, output_hidden_states=[3])
        assert count == 4 and [h is not None for h in outputs.hidden_states] == [False] * 3 + [True] + [False] * 3
        assert outputs.hidden_states[3].shape == (1, 65, 32)
    # The bare DPTModel reads nothing but last_hidden_state.
    count, outputs = count_reconstructions(model.dpt, pixel_values)
    assert count == 1 and outputs.last_hidden_state.shape == (1, 65, 32)


def test_hybrid_reconstructs_only_its_vit_features_and_keeps_bit_stages():
    # 4 ViT blocks, clustering after 1; the neck reads BiT stages 1-2 and blocks 2, 3 (hidden states 3, 4).
    torch.manual_seed(0)
    config = expedite_dpt_config(hybrid_config(), clustering_location=1, num_clusters=[3, 3], reconstruction_k=4)
    model = ExpeditedDPTForDepthEstimation(config).eval()
    off = ExpeditedDPTForDepthEstimation(expedite_dpt_config(hybrid_config(), expedite=False)).eval()
    off.load_state_dict(model.state_dict())
    pixel_values = photo_pixels(64)
    count, outputs = count_reconstructions(model, pixel_values)
    assert count == 2 and outputs.predicted_depth.shape == (3, 64, 64)
    with torch.no_grad():
        bit = model.dpt.embeddings(pixel_values).intermediate_activations
        bit_off = off.dpt.embeddings(pixel_values).intermediate_activations
    assert all(torch.equal(a, b) for a, b in zip(bit, bit_off, strict=True))


def test_every_input_shape_of_the_vanilla_model_and_non_square_depth():
    torch.manual_seed(0)
    vanilla = DPTForDepthEstimation(large_config()).eval()
    off = ExpeditedDPTForDepthEstimation(expedite_dpt_config(vanilla.config, expedite=False)).eval()
    off.load_state_dict(vanilla.state_dict())
    expedited = ExpeditedDPTForDepthEstimation(expedite_dpt_config(vanilla.config)).eval()  # default preset
    expedited.load_state_dict(vanilla.state_dict())
    with torch.no_grad():
        for size in (48, 64, 96):  # the vanilla DPT-Large path takes any square input (position embeddings resized)
            pixel_values = photo_pixels(size)[:2]
            reference = vanilla(pixel_values).predicted_depth
            assert torch.equal(off(pixel_values).predicted_depth, reference)
            assert expedited(pixel_values).predicted_depth.shape == reference.shape == (2, 2 * size, 2 * size)
        # Non-square: vanilla fails (its neck reshapes to sqrt(N) x sqrt(N)); the expedited class passes the grid.
        pixel_values = processor(64, keep_aspect_ratio=True)(images=photograph("coffee"), return_tensors="pt")
        pixel_values = pixel_values.pixel_values
        assert pixel_values.shape[-2:] == (64, 96)
        with pytest.raises(RuntimeError):
            vanilla(pixel_values)
        assert expedited(pixel_values).predicted_depth.shape == (1, 128, 192)  # patch 8: depth at twice the input
        assert off(pixel_values).predicted_depth.shape == (1, 128, 192)
        # The hybrid: vanilla only takes its image_size; the expedited class takes any multiple of the patch size.
        hybrid = ExpeditedDPTForDepthEstimation(expedite_dpt_config(hybrid_config(), cluster_ratio=0.75,
                                                                    reconstruction_k=4)).eval()
        assert hybrid(torch.randn(2, 3, 96, 128)).predicted_depth.shape == (2, 96, 128)


def test_depth_and_segmentation_pipelines_on_photographs():
    torch.manual_seed(0)
    depth_model = ExpeditedDPTForDepthEstimation(expedite_dpt_config(fidelity_config())).eval()
    depth = pipeline("depth-estimation", model=depth_model, image_processor=processor(128, keep_aspect_ratio=True))
    images = [photograph(name) for name in PHOTOS]
    for image, result in zip(images, depth(images), strict=True):
        assert result["depth"].size == image.size
        assert result["predicted_depth"].shape == (image.height, image.width)
    image_processor = processor(128)
    inputs = image_processor(images=images, return_tensors="pt")
    with torch.no_grad():
        outputs = depth_model(**inputs)
    sizes = [(image.height, image.width) for image in images]
    post = image_processor.post_process_depth_estimation(outputs, target_sizes=sizes)
    assert [tuple(item["predicted_depth"].shape) for item in post] == sizes

    segmentation_model = ExpeditedDPTForSemanticSegmentation(expedite_dpt_config(fidelity_config())).eval()
    segments = pipeline("image-segmentation", model=segmentation_model, image_processor=image_processor)
    result = segments(images[1])
    assert result and all(segment["mask"].size == images[1].size for segment in result)


def test_cluster_grid_equal_to_token_grid_reproduces_vanilla_depth():
    torch.manual_seed(0)
    vanilla = DPTForDepthEstimation(fidelity_config()).eval()
    pixel_values = photo_pixels(128)
    identity = {"clustering_location": 2, "num_clusters": [16, 16], "clustering_temperature": 1e-4}
    with torch.no_grad():
        reference = vanilla(pixel_values).predicted_depth
        for mode in ({"reconstruction_mode": "hard"}, {"reconstruction_mode": "knn", "reconstruction_k": 1}):
            model = ExpeditedDPTForDepthEstimation(expedite_dpt_config(vanilla.config, **identity, **mode)).eval()
            model.load_state_dict(vanilla.state_dict())
            depth = model(pixel_values).predicted_depth
            assert ((depth - reference).abs().max() / reference.abs().max()) < 1e-3


def test_reduced_depth_stays_correlated_with_vanilla_depth():
    torch.manual_seed(0)
    vanilla = DPTForDepthEstimation(fidelity_config()).eval()
    pixel_values = photo_pixels(128)  # 16x16 tokens
    default = ExpeditedDPTForDepthEstimation(expedite_dpt_config(vanilla.config)).eval()  # 11x11 after 4 of 6 blocks
    extreme = {"clustering_location": 1, "num_clusters": [2, 2], "reconstruction_k": 4}
    crushed = ExpeditedDPTForDepthEstimation(expedite_dpt_config(vanilla.config, **extreme)).eval()
    default.load_state_dict(vanilla.state_dict())
    crushed.load_state_dict(vanilla.state_dict())
    with torch.no_grad():
        reference, depth, crushed_depth = (m(pixel_values).predicted_depth for m in (vanilla, default, crushed))
    correlations = [pearson(reference[i], depth[i]) for i in range(len(PHOTOS))]
    # Measured Pearson correlations with the vanilla depth: 0.924 (astronaut), 0.991 (coffee), 0.970 (chelsea). The
    # check is not vacuous: 2x2 clusters after one block give 0.56, 0.89, 0.79 and fail it; the depths of two
    # different photographs correlate at about 0.2.
    assert min(correlations) > 0.85
    assert min(pearson(reference[i], crushed_depth[i]) for i in range(len(PHOTOS))) < 0.85


def test_bad_inputs_and_settings_fail_with_the_cause():
    torch.manual_seed(0)
    config = large_config()
    fixed = ExpeditedDPTForDepthEstimation(expedite_dpt_config(config, num_clusters=[6, 6])).eval()
    with pytest.raises(ValueError, match="larger than the token grid"):
        fixed(torch.randn(1, 3, 40, 40))  # 5x5 tokens < 6x6 clusters
    default = ExpeditedDPTForDepthEstimation(expedite_dpt_config(config)).eval()
    vanilla = DPTForDepthEstimation(config).eval()
    with torch.no_grad():  # the default adapts: 3x3 tokens -> 2x2 clusters (the k-NN then uses all 4 of them)
        tiny = torch.randn(1, 3, 24, 24)
        assert default(tiny).predicted_depth.shape == vanilla(tiny).predicted_depth.shape
        with pytest.raises(ValueError, match="smaller than one patch"):
            default(torch.randn(1, 3, 4, 4))  # no token at all (vanilla fails too, in the position embeddings)
    hybrid = ExpeditedDPTForDepthEstimation(expedite_dpt_config(hybrid_config(), cluster_ratio=0.75,
                                                                reconstruction_k=4)).eval()
    with pytest.raises(ValueError, match="multiples of its patch size"):
        hybrid(torch.randn(1, 3, 72, 72))
    with pytest.raises(ValueError, match="clustering_location"):
        expedite_dpt_config(config, clustering_location=6)
    with pytest.raises(ValueError, match=r"reconstruction_k=20`: an integer in 1..16"):
        expedite_dpt_config(config, num_clusters=[4, 4], reconstruction_k=20)  # an explicit k is checked
    assert expedite_dpt_config(config, num_clusters=[4, 4]).reconstruction_k is None  # the default: 20, capped
    beit = DPTConfig(backbone_config=BeitConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2),
                     neck_hidden_sizes=[8, 16, 32, 32])
    with pytest.raises(ValueError, match="dinov2"):
        expedite_dpt_config(beit)
    with pytest.raises(ValueError, match="dinov2"):
        ExpeditedDPTConfig.from_dict(beit.to_dict())


def test_presets():
    presets = hf_expedite.list_presets("dpt")["dpt"]
    assert {"default", "nyu", "kitti", "nyu-alpha6-24x24", "nyu-alpha4-16x16", "nyu-alpha2-14x14"} <= set(presets)
    hybrid = dpt_hybrid_config()  # the real sizes (12 ViT blocks)
    nyu = hf_expedite.get_preset("dpt", "nyu-alpha6-24x24").resolve(hybrid)
    assert nyu["clustering_location"] == 7 and nyu["num_clusters"] == [24, 24]  # README alpha=6 = -l 6 = 7 blocks
    assert nyu["reconstruction_mode"] == "hard" and nyu["clustering_temperature"] == 1.0
    assert hf_expedite.get_preset("dpt", "kitti").resolve(hybrid)["clustering_location"] == 5
    config = expedite_dpt_config(large_config(num_hidden_layers=24, backbone_out_indices=[5, 11, 17, 23]))
    assert config.clustering_location == 14 and config.cluster_ratio == 0.7 and config.num_clusters is None
    official = expedite_dpt_config(hybrid, **hf_expedite.get_preset("dpt", "nyu").resolve(hybrid))
    assert official.num_clusters == [28, 28] and official.reconstruction_mode == "hard"


def test_hybrid_nyu_setting_saves_at_least_the_papers_flops():
    # Full-size DPT-Hybrid at 480x640 with the paper's NYUv2 row alpha=6, 24x24 (hard): 560.2 -> 504.2 GFLOPs.
    # count_flops counts 2 FLOPs per multiply-add, including the CPU attention kernel.
    case = dpt_hybrid_nyu_480x640()
    expedited = count_flops(case.expedited, case.inputs)
    with torch.device("meta"):  # the vanilla FLOPs do not depend on values: count them without computing
        twin = type(case.vanilla)(case.vanilla.config)
    vanilla = count_flops(twin, {"pixel_values": case.inputs["pixel_values"].to("meta")})
    # Measured: 559.1 -> 502.4 GFLOPs (ratio 0.898).
    assert vanilla == pytest.approx(560.2e9, rel=0.01)
    assert expedited / vanilla <= 504.2 / 560.2
