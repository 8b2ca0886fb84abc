"""Expedited Swinv2 (model, backbone, DPT-Swinv2): hub layouts, parity, the k == K oracle, the CPB bias, bad input."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, DPTConfig, DPTForDepthEstimation, Swinv2Backbone, Swinv2Config
from transformers import Swinv2Model

from hf_expedite import ExpeditedSwinv2Backbone, ExpeditedSwinv2Config, ExpeditedSwinv2Model
from hf_expedite.benchmark.photos import photo_batch
from hf_expedite.models.swinv2 import (
    ExpeditedSwinv2SelfAttention,
    ExpeditedSwinv2Stage,
    drop_dpt_reassemble_stage,
    expedite_swinv2_config,
)

# 64x64 images, patch 2: stage maps 32, 16, 8, 4 (window 4 everywhere; stage 4 has no shift); stage 2 = blocks 2..5.
TINY = dict(
    image_size=64,
    patch_size=2,
    embed_dim=16,
    depths=[2, 4, 2, 2],
    num_heads=[2, 2, 4, 4],
    window_size=4,
    drop_path_rate=0.0,
    out_features=["stage1", "stage2", "stage3", "stage4"],
)
SETTINGS = dict(clustering_location=2, clustered_window_size=2, reconstruction_k=3, clustering_temperature=2.0)
IDENTITY = dict(clustered_window_size=4, clustering_iterations=0, reconstruction_k=1)  # k == K, one-hot weights
PRETRAINED_WINDOWS = {"no-pretrained-window": [0, 0, 0, 0], "pretrained-window": [3, 6, 3, 2]}


@pytest.fixture(scope="module", params=list(PRETRAINED_WINDOWS), ids=list(PRETRAINED_WINDOWS))
def swinv2_repo(request, tmp_path_factory):
    """A tiny Swinv2Model in the hub layout (with and without pretrained window sizes, which change the CPB input)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("swinv2")
    Swinv2Model(Swinv2Config(**TINY, pretrained_window_sizes=PRETRAINED_WINDOWS[request.param])).save_pretrained(path)
    return path


def photos(height=64, width=64, batch=2):
    return photo_batch(height, width, batch, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def load(repo, **settings):
    return ExpeditedSwinv2Model.from_pretrained(repo, **settings).eval()


def test_hub_layouts_load_with_an_empty_report(swinv2_repo, tmp_path):
    model, info = ExpeditedSwinv2Model.from_pretrained(swinv2_repo, output_loading_info=True, **SETTINGS)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert type(model.encoder.layers[1]) is ExpeditedSwinv2Stage and model.config.model_type == "expedited_swinv2"
    Swinv2Backbone(Swinv2Config.from_pretrained(swinv2_repo)).save_pretrained(tmp_path)
    _, info = ExpeditedSwinv2Backbone.from_pretrained(tmp_path, output_loading_info=True, **SETTINGS)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]


def test_expedite_false_is_bit_identical(swinv2_repo):
    vanilla = Swinv2Model.from_pretrained(swinv2_repo).eval()
    x = photos()
    with torch.no_grad():
        expected = vanilla(x, output_hidden_states=True, output_attentions=True)
        for model in (load(swinv2_repo, expedite=False), load(swinv2_repo, **SETTINGS)):
            model.config.expedite = False
            out = model(x, output_hidden_states=True, output_attentions=True)
            assert torch.equal(out.last_hidden_state, expected.last_hidden_state)
            assert torch.equal(out.pooler_output, expected.pooler_output)
            for name in ("hidden_states", "reshaped_hidden_states", "attentions"):
                assert all(torch.equal(a, b) for a, b in zip(getattr(out, name), getattr(expected, name), strict=True))


@pytest.mark.parametrize("location,reconstruction", [(2, None), (3, None), (2, 5)], ids=["stage", "odd-start", "mid"])
def test_clustered_window_equal_to_the_window_reproduces_vanilla(swinv2_repo, location, reconstruction):
    """k == K: the clustered path's own partition, double shift mask and CPB table must give the vanilla outputs."""
    vanilla = Swinv2Model.from_pretrained(swinv2_repo).eval()
    model = load(swinv2_repo, clustering_location=location, reconstruction_location=reconstruction, **IDENTITY)
    x = photos()
    with torch.no_grad():
        expected, out = vanilla(x, output_hidden_states=True), model(x, output_hidden_states=True)
    for a, b in zip((out.last_hidden_state, *out.hidden_states), (expected.last_hidden_state, *expected.hidden_states)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_clustered_outputs_keep_the_vanilla_shapes(swinv2_repo):
    vanilla = Swinv2Model.from_pretrained(swinv2_repo).eval()
    model = load(swinv2_repo, **SETTINGS)
    for height, width in ((64, 64), (64, 88)):  # 64x88: stage-2 map 16 x 22, padded to 16 x 24
        x = photos(height, width)
        with torch.no_grad():
            expected = vanilla(x, output_hidden_states=True, output_attentions=True)
            out = model(x, output_hidden_states=True, output_attentions=True)
        assert [h.shape for h in out.hidden_states] == [h.shape for h in expected.hidden_states]
        assert [h.shape for h in out.reshaped_hidden_states] == [h.shape for h in expected.reshaped_hidden_states]
        assert torch.isfinite(out.last_hidden_state).all()
        assert not torch.allclose(out.last_hidden_state, expected.last_hidden_state, atol=1e-3)
        windows = (height // 16) * -(-width // 16)  # 4x4 windows of the stage-2 map, each now 2x2 tokens
        assert out.attentions[1].shape == (2 * windows, 2, 4, 4)


def test_clustered_bias_evaluates_the_cpb_mlp_at_original_patch_offsets(swinv2_repo):
    model = load(swinv2_repo, **SETTINGS)
    attention = model.encoder.layers[1].blocks[0].attention.self
    assert type(attention) is ExpeditedSwinv2SelfAttention
    vanilla_bias = 16 * torch.sigmoid(
        attention.continuous_position_bias_mlp(attention.relative_coords_table).view(7, 7, 2)
    )  # (dy + 3, dx + 3, heads) for offsets of a 4x4 window
    full_window = vanilla_bias.view(49, 2)[attention.relative_position_index.view(-1)].view(16, 16, 2)
    torch.testing.assert_close(attention.clustered_window_bias(4), full_window.permute(2, 0, 1))
    clustered = attention.clustered_window_bias(2)  # (heads, 4, 4) over a 2x2 window
    # K / k = 2: a one-cluster step is two patches. Token 0 = (0, 0), token 3 = (1, 1): offset (-1, -1) -> (-2, -2)
    torch.testing.assert_close(clustered[:, 0, 3], vanilla_bias[1, 1])
    torch.testing.assert_close(clustered[:, 1, 2], vanilla_bias[1, 5])  # (0, 1) - (1, 0) = (-1, 1) -> (-2, 2)
    torch.testing.assert_close(clustered[:, 0, 0], vanilla_bias[3, 3])


def test_windows_fixed_by_the_image_size_are_respected():
    config = ExpeditedSwinv2Config(**{**TINY, "image_size": 32}, clustering_location=6, clustered_window_size=2)
    assert config.num_clusters == [2, 2]  # stage 3 of a 32x32 image: 4x4 tokens, window 4
    with pytest.raises(ValueError, match=r"clustered_window_size.*1\.\.2"):  # stage 4: 2x2 tokens, window clamped
        ExpeditedSwinv2Config(**{**TINY, "image_size": 32}, clustering_location=8, clustered_window_size=3)


def test_backbone_feature_maps_keep_the_vanilla_shapes(swinv2_repo, tmp_path):
    Swinv2Backbone(Swinv2Config.from_pretrained(swinv2_repo)).save_pretrained(tmp_path)
    vanilla = Swinv2Backbone.from_pretrained(tmp_path).eval()
    model = ExpeditedSwinv2Backbone.from_pretrained(tmp_path, **SETTINGS).eval()
    x = photos()
    with torch.no_grad():
        expected, out = vanilla(x).feature_maps, model(x).feature_maps
        disabled = ExpeditedSwinv2Backbone.from_pretrained(tmp_path, expedite=False).eval()(x).feature_maps
    assert [f.shape for f in out] == [f.shape for f in expected]
    assert torch.equal(out[0], expected[0]) and all(torch.equal(a, b) for a, b in zip(disabled, expected, strict=True))


class DPTWithExpeditedSwinv2(DPTForDepthEstimation):
    """What a DPT class must do for an expedited Swinv2 backbone: drop the ViT reassemble stage before post_init."""

    def __init__(self, config):
        super().__init__(config)
        drop_dpt_reassemble_stage(self)
        self.post_init()


@pytest.fixture(scope="module")
def dpt_repo(tmp_path_factory):
    """A tiny DPT with a Swinv2 backbone (the Intel/dpt-swinv2-* layout)."""
    torch.manual_seed(0)
    backbone = Swinv2Config(**TINY)
    config = DPTConfig(backbone_config=backbone, neck_hidden_sizes=[16, 32, 64, 128], fusion_hidden_size=32)
    path = tmp_path_factory.mktemp("dpt_swinv2")
    DPTForDepthEstimation(config).save_pretrained(path)
    return path


def expedited_dpt_config(repo, **settings):
    config = DPTConfig.from_pretrained(repo)
    config.backbone_config = expedite_swinv2_config(config.backbone_config, **settings)
    return config


def test_dpt_with_an_expedited_swinv2_backbone(dpt_repo):
    vanilla = DPTForDepthEstimation.from_pretrained(dpt_repo).eval()
    x = photos()
    trap = DPTForDepthEstimation(expedited_dpt_config(dpt_repo, **SETTINGS))
    assert trap.neck.reassemble_stage is not None  # the neck checks model_type == "swinv2" (internals e17)
    with torch.no_grad():
        expected = vanilla(x).predicted_depth
        for settings in (SETTINGS, {"expedite": False}, {"clustering_location": 3, **IDENTITY}):
            model, info = DPTWithExpeditedSwinv2.from_pretrained(
                dpt_repo, config=expedited_dpt_config(dpt_repo, **settings), output_loading_info=True
            )
            assert not info["missing_keys"] and not info["unexpected_keys"]
            assert type(model.backbone) is ExpeditedSwinv2Backbone and model.neck.reassemble_stage is None
            depth = model.eval()(x).predicted_depth
            if settings is SETTINGS:
                assert depth.shape == expected.shape and torch.isfinite(depth).all()
                assert not torch.allclose(depth, expected, atol=1e-4)
            elif settings.get("expedite") is False:
                assert torch.equal(depth, expected)
            else:
                torch.testing.assert_close(depth, expected, rtol=1e-5, atol=1e-5)


def test_save_writes_the_hub_layout_and_reloads_expedited(swinv2_repo, tmp_path):
    model = load(swinv2_repo, **SETTINGS)
    model.save_pretrained(tmp_path)
    assert set(load_file(tmp_path / "model.safetensors")) == set(load_file(swinv2_repo / "model.safetensors"))
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "expedited_swinv2"
    config = AutoConfig.from_pretrained(tmp_path)
    assert type(config) is ExpeditedSwinv2Config and config.clustered_window_size == 2
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(reloaded) is ExpeditedSwinv2Model
    x = photos()
    with torch.no_grad():
        assert torch.equal(reloaded(x).last_hidden_state, model(x).last_hidden_state)


def test_conversion_and_default_preset():
    base = Swinv2Config(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=12, image_size=384)
    config = expedite_swinv2_config(base)
    assert (config.clustering_location, config.clustered_window_size, config.reconstruction_k) == (10, 8, 10)
    tiny = expedite_swinv2_config(Swinv2Config(image_size=256, window_size=8))  # swinv2-tiny-window8-256
    assert (tiny.clustering_location, tiny.clustered_window_size) == (6, 5)
    with pytest.raises(ValueError, match="Swinv2 config"):
        expedite_swinv2_config(DPTConfig())


@pytest.mark.parametrize(
    "settings,match",
    [
        (dict(clustered_window_size=5), "clustered_window_size"),
        (dict(clustering_location=10), "clustering_location"),
        (dict(clustering_location=3, reconstruction_location=8), "stage boundary"),
        (dict(cluster_ratio=0.5), "cluster_ratio"),
    ],
)
def test_bad_settings_fail_at_config_construction(settings, match):
    with pytest.raises(ValueError, match=match):
        ExpeditedSwinv2Config(**TINY, **{**SETTINGS, **settings})


def test_a_stage_map_smaller_than_one_window_fails_clearly(swinv2_repo):
    with pytest.raises(ValueError, match="smaller than one 4 x 4 attention window"):
        load(swinv2_repo, **SETTINGS)(photos(12, 64))


def test_dpt_swinv2_through_the_expedited_dpt_class(dpt_repo):
    """DPT-SwinV2 (Intel/dpt-swinv2-* layout) loads into ExpeditedDPTForDepthEstimation; settings go to the backbone."""
    from transformers import pipeline

    from hf_expedite import ExpeditedDPTForDepthEstimation
    from hf_expedite.benchmark.photos import photograph
    from transformers import DPTImageProcessorPil

    vanilla = DPTForDepthEstimation.from_pretrained(dpt_repo).eval()
    model, info = ExpeditedDPTForDepthEstimation.from_pretrained(dpt_repo, output_loading_info=True, **SETTINGS)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.config.backbone_config.model_type == "expedited_swinv2" and model.config.clustering_location == 2
    assert model.config.backbone_config.clustered_window_size == 2
    x = photos()
    with torch.no_grad():
        expected = vanilla(x).predicted_depth
        reduced = model.eval()(x).predicted_depth
        model.config.backbone_config.expedite = False
        disabled = model(x).predicted_depth
    assert torch.equal(disabled, expected)
    assert reduced.shape == expected.shape and not torch.equal(reduced, expected)
    model.config.backbone_config.expedite = True
    processor = DPTImageProcessorPil(size={"height": 64, "width": 64}, keep_aspect_ratio=False)
    depth = pipeline("depth-estimation", model=model, image_processor=processor)(photograph("coffee"))
    assert depth["depth"].size == photograph("coffee").size
