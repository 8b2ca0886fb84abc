"""Expedited DINOv2 backbones (plain and with registers), Depth Anything and DPT with a DINOv2 backbone.

Depth Anything keeps its vanilla class: the expedited model is ``DepthAnythingForDepthEstimation`` built from a config
whose ``backbone_config`` is expedited. Tiny random-init models are saved with ``save_pretrained`` and loaded back;
inputs are photographs from ``skimage.data`` (non-square, as the Depth Anything processor keeps the aspect ratio).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from transformers import (
    DepthAnythingConfig,
    DepthAnythingForDepthEstimation,
    Dinov2Backbone,
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersBackbone,
    Dinov2WithRegistersConfig,
    DPTConfig,
    DPTForDepthEstimation,
    DPTImageProcessorPil,
    SwinConfig,
    pipeline,
)

import hf_expedite
from hf_expedite import (
    ExpeditedDepthAnythingConfig,
    ExpeditedDepthAnythingForDepthEstimation,
    ExpeditedDinov2Backbone,
    ExpeditedDinov2Config,
    ExpeditedDinov2WithRegistersBackbone,
    ExpeditedDPTConfig,
    ExpeditedDPTForDepthEstimation,
)
from hf_expedite.benchmark.photos import photograph
from hf_expedite.hourglass import RECONSTRUCTION_SCOPE
from hf_expedite.models.dinov2 import expedite_dinov2_config
from hf_expedite.models.depth_anything import expedite_depth_anything_config
from hf_expedite.models.dpt import expedite_dpt_config

PHOTOS = ("astronaut", "coffee", "chelsea")
IDENTITY = {"clustering_temperature": 1e-4, "reconstruction_mode": "hard"}  # with a grid equal to the token grid


def dinov2(**overrides) -> dict:
    """A tiny DINOv2 backbone config (as a dict, the way hub configs nest it): 6 blocks, patch 8."""
    sizes = dict(model_type="dinov2", hidden_size=32, num_hidden_layers=6, num_attention_heads=2, image_size=64)
    return {**sizes, "patch_size": 8, "out_indices": [1, 2, 4, 6], "reshape_hidden_states": False, **overrides}


def depth_anything_config(initializer_range: float = 0.02, **backbone) -> DepthAnythingConfig:
    hidden = backbone.get("hidden_size", 32)
    return DepthAnythingConfig(
        backbone_config=dinov2(initializer_range=initializer_range, **backbone),
        reassemble_hidden_size=hidden,
        patch_size=8,
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
        initializer_range=initializer_range,
    )


def dpt_dinov2_config() -> DPTConfig:
    """``facebook/dpt-dinov2-small-nyu`` layout, tiny: no backbone layernorm (its head projection needs 256 fusion
    channels, so it is left out)."""
    return DPTConfig(
        backbone_config=dinov2(apply_layernorm=False),
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        use_bias_in_fusion_residual=False,
    )


def fidelity_config() -> DepthAnythingConfig:
    """Not degenerate (see ``test_dpt.fidelity_config``): wider, and initializer_range 0.1 instead of 0.02."""
    return depth_anything_config(initializer_range=0.1, hidden_size=64, num_attention_heads=4, out_indices=[1, 3, 5, 6])


def processor(size: int = 64) -> DPTImageProcessorPil:
    """The Depth Anything preprocessing: shorter side to ``size``, aspect kept, sides multiple of the patch (8)."""
    return DPTImageProcessorPil(
        size={"height": size, "width": size},
        keep_aspect_ratio=True,
        ensure_multiple_of=8,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )


def pixels(name: str, size: int = 64) -> torch.Tensor:
    return processor(size)(images=photograph(name), return_tensors="pt").pixel_values


def count_reconstructions(model: torch.nn.Module, pixel_values: torch.Tensor, **kwargs) -> tuple[int, object]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile, torch.no_grad():
        outputs = model(pixel_values, **kwargs)
    return sum(event.name == RECONSTRUCTION_SCOPE for event in profile.events()), outputs


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1])


@pytest.mark.parametrize("reshape", [False, True])
def test_dinov2_backbone_loads_hub_layouts_and_matches_vanilla(reshape, tmp_path):
    config = Dinov2Config(**{k: v for k, v in dinov2(reshape_hidden_states=reshape).items() if k != "model_type"})
    torch.manual_seed(0)
    vanilla = Dinov2Backbone(config).eval()
    vanilla.save_pretrained(tmp_path / "backbone")
    Dinov2Model(config).save_pretrained(tmp_path / "model")  # hub DINOv2 repos hold a Dinov2Model
    settings = {"clustering_location": 2, "cluster_ratio": 0.75, "reconstruction_k": 4}
    for folder in ("backbone", "model"):
        _, info = ExpeditedDinov2Backbone.from_pretrained(
            tmp_path / folder, config=expedite_dinov2_config(config, **settings), output_loading_info=True
        )
        assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    off = ExpeditedDinov2Backbone.from_pretrained(tmp_path / "backbone", config=expedite_dinov2_config(config,
                                                                                                    expedite=False))
    expedited = ExpeditedDinov2Backbone.from_pretrained(
        tmp_path / "backbone", config=expedite_dinov2_config(config, **settings)
    ).eval()
    pixel_values = torch.cat([pixels("coffee"), pixels("chelsea")])  # 64 x 96: 8 x 12 tokens
    with torch.no_grad():
        reference = vanilla(pixel_values, output_hidden_states=True)
        same = off.eval()(pixel_values, output_hidden_states=True)
        fast = expedited(pixel_values, output_hidden_states=True)
    assert all(torch.equal(a, b) for a, b in zip(same.feature_maps, reference.feature_maps, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(same.hidden_states, reference.hidden_states, strict=True))
    assert [f.shape for f in fast.feature_maps] == [f.shape for f in reference.feature_maps]
    assert [h.shape for h in fast.hidden_states] == [h.shape for h in reference.hidden_states]
    assert torch.equal(fast.feature_maps[1], reference.feature_maps[1])  # stage 2: before clustering
    assert not torch.equal(fast.feature_maps[2], reference.feature_maps[2])


def test_registers_are_carried_through_untouched(tmp_path):
    config = Dinov2WithRegistersConfig(**{k: v for k, v in dinov2().items() if k != "model_type"}, num_register_tokens=4)
    torch.manual_seed(0)
    vanilla = Dinov2WithRegistersBackbone(config).eval()
    vanilla.save_pretrained(tmp_path)
    pixel_values = pixels("coffee")  # 8 x 12 tokens
    identity = expedite_dinov2_config(config, clustering_location=2, num_clusters=[8, 12], **IDENTITY)
    model, info = ExpeditedDinov2WithRegistersBackbone.from_pretrained(
        tmp_path, config=identity, output_loading_info=True, attn_implementation="eager"
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    reduced = ExpeditedDinov2WithRegistersBackbone.from_pretrained(
        tmp_path, config=expedite_dinov2_config(config, clustering_location=2, num_clusters=[4, 6], reconstruction_k=4),
        attn_implementation="eager",
    ).eval()
    with torch.no_grad():
        reference = vanilla(pixel_values, output_hidden_states=True)
        same = model.eval()(pixel_values, output_hidden_states=True)
        fast = reduced(pixel_values, output_hidden_states=True, output_attentions=True)
    # A grid equal to the token grid reproduces every state, the 1 + 4 prefix tokens included: they are not clustered.
    for a, b in zip(same.hidden_states, reference.hidden_states, strict=True):
        assert (a - b).abs().max() <= 1e-3 * b.abs().max()
    assert all(h.shape == (1, 1 + 4 + 96, 32) for h in fast.hidden_states)
    assert [a.shape[-1] for a in fast.attentions] == [101, 101, 29, 29, 29, 29]  # 1 + 4 + 4 * 6 after clustering


def test_depth_anything_conversion_load_and_parity(tmp_path):
    vanilla_config = depth_anything_config()
    torch.manual_seed(0)
    vanilla = DepthAnythingForDepthEstimation(vanilla_config).eval()
    vanilla.save_pretrained(tmp_path / "vanilla")
    config = expedite_depth_anything_config(vanilla_config, clustering_location=2, cluster_ratio=0.75)
    assert type(config) is ExpeditedDepthAnythingConfig and isinstance(config.backbone_config, ExpeditedDinov2Config)
    assert config.model_type == "expedited_depth_anything"
    assert type(vanilla_config.backbone_config) is Dinov2Config  # the input config is left alone
    model, info = ExpeditedDepthAnythingForDepthEstimation.from_pretrained(
        tmp_path / "vanilla", config=config, output_loading_info=True
    )
    assert isinstance(model.backbone, ExpeditedDinov2Backbone)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    off = ExpeditedDepthAnythingForDepthEstimation.from_pretrained(
        tmp_path / "vanilla", config=expedite_depth_anything_config(vanilla_config, expedite=False)
    ).eval()
    model.eval()
    for shape_source in (["astronaut", "astronaut"], ["coffee", "chelsea"]):  # square and non-square batches of 2
        pixel_values = torch.cat([pixels(name) for name in shape_source])
        with torch.no_grad():
            reference = vanilla(pixel_values).predicted_depth
            assert torch.equal(off(pixel_values).predicted_depth, reference)
            depth = model(pixel_values).predicted_depth
        assert depth.shape == reference.shape == (2, *pixel_values.shape[-2:])
        assert not torch.equal(depth, reference)
    # Saved, it reloads expedited through the transformers Auto class, and its weights through the vanilla class.
    model.save_pretrained(tmp_path / "expedited")
    reloaded = transformers.AutoModelForDepthEstimation.from_pretrained(tmp_path / "expedited").eval()
    assert type(reloaded) is ExpeditedDepthAnythingForDepthEstimation
    assert isinstance(reloaded.backbone, ExpeditedDinov2Backbone)
    assert reloaded.config.backbone_config.cluster_ratio == 0.75
    with torch.no_grad():
        assert torch.equal(reloaded(pixel_values).predicted_depth, depth)
    _, info = DepthAnythingForDepthEstimation.from_pretrained(tmp_path / "expedited", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert type(hf_expedite.AutoModelForDepthEstimation.from_pretrained(tmp_path / "expedited", expedite=False)) is (
        DepthAnythingForDepthEstimation
    )


def test_depth_anything_reconstructs_only_the_neck_features(tmp_path):
    # 6 blocks, clustering after 2: states 3..6 reduced; the neck reads stages 1, 2, 4, 6 (transformers >= 5.25 asks
    # the backbone for every hidden state: the expedited head tells it what is read).
    torch.manual_seed(0)
    DepthAnythingForDepthEstimation(depth_anything_config()).save_pretrained(tmp_path)
    settings = {"clustering_location": 2, "cluster_ratio": 0.75}
    loaded = hf_expedite.AutoModelForDepthEstimation.from_pretrained(tmp_path, expedite=settings).eval()
    config = DepthAnythingConfig.from_pretrained(tmp_path)
    built = hf_expedite.AutoModelForDepthEstimation.from_config(config, expedite=settings)
    twin = hf_expedite.expedite(DepthAnythingForDepthEstimation.from_pretrained(tmp_path).eval(), settings)
    pixel_values = pixels("coffee")
    for model in (loaded, built.eval(), twin):
        assert type(model) is ExpeditedDepthAnythingForDepthEstimation
        count, outputs = count_reconstructions(model, pixel_values)
        assert count == 2 and outputs.hidden_states is None
        count, outputs = count_reconstructions(model, pixel_values, output_hidden_states=True)
        assert count == 4 and all(h.shape == (1, 97, 32) for h in outputs.hidden_states)
    assert type(hf_expedite.expedite(twin, expedite=False)) is DepthAnythingForDepthEstimation


def test_dpt_with_dinov2_backbone(tmp_path):
    vanilla_config = dpt_dinov2_config()
    torch.manual_seed(0)
    vanilla = DPTForDepthEstimation(vanilla_config).eval()
    vanilla.save_pretrained(tmp_path)
    config = expedite_dpt_config(vanilla_config, clustering_location=2, cluster_ratio=0.75)
    assert isinstance(config, ExpeditedDPTConfig) and isinstance(config.backbone_config, ExpeditedDinov2Config)
    # The settings are validated against the backbone's 6 blocks and kept in sync with the backbone config.
    assert config.backbone_config.clustering_location == config.clustering_location == 2
    assert config.backbone_config.cluster_ratio == 0.75 and config.backbone_config.clustering_temperature == 1.0
    model, info = ExpeditedDPTForDepthEstimation.from_pretrained(tmp_path, config=config, output_loading_info=True)
    assert isinstance(model.backbone, ExpeditedDinov2Backbone)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    off = ExpeditedDPTForDepthEstimation.from_pretrained(
        tmp_path, config=expedite_dpt_config(vanilla_config, expedite=False)
    ).eval()
    model.eval()
    pixel_values = torch.cat([pixels("coffee"), pixels("chelsea")])
    with torch.no_grad():
        reference = vanilla(pixel_values).predicted_depth
        assert torch.equal(off(pixel_values).predicted_depth, reference)
    # DPT forces output_hidden_states=True on its backbone; still only the neck's reduced states are reconstructed.
    count, outputs = count_reconstructions(model, pixel_values)
    assert count == 2 and outputs.predicted_depth.shape == reference.shape and outputs.hidden_states is None
    count, outputs = count_reconstructions(model, pixel_values, output_hidden_states=True)
    assert count == 4 and all(h.shape == (2, 97, 32) for h in outputs.hidden_states)
    model.save_pretrained(tmp_path / "expedited")
    reloaded = transformers.AutoModelForDepthEstimation.from_pretrained(tmp_path / "expedited").eval()
    assert type(reloaded) is ExpeditedDPTForDepthEstimation and isinstance(reloaded.backbone, ExpeditedDinov2Backbone)
    assert reloaded.config.backbone_config.cluster_ratio == 0.75
    with torch.no_grad():
        assert torch.equal(reloaded(pixel_values).predicted_depth, outputs.predicted_depth)
    with pytest.raises(ValueError, match="backbone_config"):
        hf_expedite.ExpeditedDPTForSemanticSegmentation(config)  # transformers' DPT segmentation has no such path
    # A vanilla DPT config whose backbone config alone is expedited keeps the backbone's settings.
    backbone_only = DPTConfig.from_dict({**vanilla_config.to_dict(), "backbone_config": config.backbone_config})
    assert expedite_dpt_config(backbone_only).cluster_ratio == 0.75
    assert expedite_dpt_config(backbone_only, num_clusters=[4, 4], reconstruction_k=4).cluster_ratio is None


def test_pipeline_on_photographs_of_varying_size():
    torch.manual_seed(0)
    model = ExpeditedDepthAnythingForDepthEstimation(expedite_depth_anything_config(fidelity_config())).eval()  # default
    image_processor = processor()
    depth = pipeline("depth-estimation", model=model, image_processor=image_processor)
    images = [photograph(name) for name in PHOTOS]  # 512x512, 600x400, 451x300: 8x8 and 8x12 tokens
    for image, result in zip(images, depth(images), strict=True):
        assert result["depth"].size == image.size
    inputs = image_processor(images=images[1], return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    post = image_processor.post_process_depth_estimation(outputs, target_sizes=[(images[1].height, images[1].width)])
    assert post[0]["predicted_depth"].shape == (400, 600)


def test_fidelity_on_photographs():
    torch.manual_seed(0)
    vanilla = DepthAnythingForDepthEstimation(fidelity_config()).eval()
    settings = {
        "identity": {"clustering_location": 3, "cluster_ratio": 1.0, **IDENTITY},  # grid = token grid
        "default": {},  # after 4 of 6 blocks, 70% of the tokens per side
        "crushed": {"clustering_location": 1, "num_clusters": [2, 2], "reconstruction_k": 4},
    }
    models = {}
    for label, values in settings.items():
        models[label] = ExpeditedDepthAnythingForDepthEstimation(expedite_depth_anything_config(vanilla.config, **values))
        models[label].load_state_dict(vanilla.state_dict())
        models[label].eval()
    correlations, crushed_correlations = [], []
    for name in PHOTOS:
        pixel_values = pixels(name, 128)  # 16 x 16 or 16 x 24 tokens
        with torch.no_grad():
            reference = vanilla(pixel_values).predicted_depth
            depths = {label: model(pixel_values).predicted_depth for label, model in models.items()}
        assert (depths["identity"] - reference).abs().max() < 1e-3 * reference.abs().max()
        correlations.append(pearson(reference, depths["default"]))
        crushed_correlations.append(pearson(reference, depths["crushed"]))
    # Measured Pearson correlations with the vanilla depth: 0.956 (astronaut), 0.987 (coffee), 0.979 (chelsea). The
    # check is not vacuous: 2x2 clusters after one block give 0.72, 0.82, 0.85 and fail it.
    assert min(correlations) > 0.9
    assert min(crushed_correlations) < 0.9


def test_bad_backbones_and_inputs():
    swin = SwinConfig(embed_dim=16, depths=[1, 1], num_heads=[1, 1], out_features=["stage1", "stage2"])
    with pytest.raises(ValueError, match="dinov2, dinov2_with_registers"):
        expedite_depth_anything_config(DepthAnythingConfig(backbone_config=swin))
    with pytest.raises(ValueError, match="dinov2"):
        expedite_dpt_config(DPTConfig(backbone_config=swin, neck_hidden_sizes=[16, 32]))
    backbone = ExpeditedDinov2Backbone(expedite_dinov2_config(Dinov2Config(**{
        k: v for k, v in dinov2().items() if k != "model_type"}), num_clusters=[6, 6], reconstruction_k=4)).eval()
    with torch.no_grad(), pytest.raises(ValueError, match="larger than the token grid"):
        backbone(torch.randn(1, 3, 40, 64))  # 5 x 8 tokens < 6 x 6 clusters
    with torch.no_grad(), pytest.raises(ValueError, match="smaller than one patch"):
        backbone(torch.randn(1, 3, 4, 64))
    with pytest.raises(ValueError, match="clustering_location"):
        expedite_depth_anything_config(depth_anything_config(), clustering_location=6)


def test_presets_resolve_against_depth_anything_and_backbone_configs():
    assert "default" in hf_expedite.list_presets("dinov2")["dinov2"]
    config = depth_anything_config(num_hidden_layers=12, out_indices=[3, 6, 9, 12])
    default = hf_expedite.get_preset("dinov2", "default").resolve(config)
    assert default["clustering_location"] == 7 and default["cluster_ratio"] == 0.7
    assert expedite_depth_anything_config(config).backbone_config.clustering_location == 7
    backbone = expedite_dinov2_config(config.backbone_config)
    assert backbone.clustering_location == 7 and backbone.num_clusters is None
