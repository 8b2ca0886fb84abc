"""Expedited Swin (v1) backbone: hub layouts, parity with transformers, the k == K oracle, windows, bias, bad input."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoBackbone, AutoConfig, SwinBackbone, SwinConfig, ViTConfig
from transformers.models.swin.modeling_swin import SwinLayer, SwinRelativePositionBias

from hf_expedite import ExpeditedSwinBackbone, ExpeditedSwinConfig
from hf_expedite.benchmark.photos import photo_batch
from hf_expedite.models.swin import ExpeditedSwinAttention, ExpeditedSwinStage, expedite_swin_config
from hf_expedite.ops import cluster_tokens
from hf_expedite.windows import cluster_windows, shifted_window_mask

# 64x64 images, patch 2: stage maps 32, 16, 8 (window 4: 8x8, 4x4, 2x2 windows); 8 blocks, stage 2 = blocks 2..5.
TINY = dict(
    image_size=64,
    patch_size=2,
    embed_dim=16,
    depths=[2, 4, 2],
    num_heads=[2, 2, 4],
    window_size=4,
    drop_path_rate=0.0,
    out_features=["stage1", "stage2", "stage3"],
)
SETTINGS = dict(clustering_location=2, clustered_window_size=3, reconstruction_k=4, clustering_temperature=2.0)
IDENTITY = dict(clustered_window_size=4, clustering_iterations=0, reconstruction_k=1)  # k == K, one-hot weights


@pytest.fixture(scope="module")
def swin_repo(tmp_path_factory):
    """A tiny SwinBackbone in the hub layout, with random (not zero) relative-position-bias tables."""
    torch.manual_seed(0)
    model = SwinBackbone(SwinConfig(**TINY))
    for module in model.modules():
        if isinstance(module, SwinRelativePositionBias):
            module.relative_position_bias_table.data.normal_()
    path = tmp_path_factory.mktemp("swin")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def vanilla(swin_repo):
    return SwinBackbone.from_pretrained(swin_repo).eval()


def photos(height=64, width=64, batch=2):
    return photo_batch(height, width, batch, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def load(repo, **settings):
    return ExpeditedSwinBackbone.from_pretrained(repo, **settings).eval()


def test_hub_layout_loads_with_an_empty_report(swin_repo):
    model, info = ExpeditedSwinBackbone.from_pretrained(swin_repo, output_loading_info=True, **SETTINGS)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert isinstance(model.config, ExpeditedSwinConfig) and model.config.model_type == "expedited_swin"
    assert model.config.clustered_window_size == 3 and model.config.num_clusters == [3, 3]
    stage = model.swin.encoder.layers[1]
    assert type(stage) is ExpeditedSwinStage and all(type(b.attention) is ExpeditedSwinAttention for b in stage.blocks)


def test_expedite_false_is_bit_identical(swin_repo, vanilla):
    x = photos()
    with torch.no_grad():
        expected = vanilla(x, output_hidden_states=True, output_attentions=True)
        for model in (load(swin_repo, expedite=False), load(swin_repo, **SETTINGS)):
            model.config.expedite = False  # also switchable at run time: the swapped stage runs the vanilla forward
            out = model(x, output_hidden_states=True, output_attentions=True)
            for name in ("feature_maps", "hidden_states", "attentions"):
                assert all(torch.equal(a, b) for a, b in zip(getattr(out, name), getattr(expected, name), strict=True))


@pytest.mark.parametrize(
    "location,reconstruction", [(2, None), (3, None), (2, 4), (6, None)], ids=["stage", "odd-start", "mid", "last"]
)
def test_clustered_window_equal_to_the_window_reproduces_vanilla(swin_repo, vanilla, location, reconstruction):
    """With k == K, no iterations and top-1 weights clustering and reconstruction are the identity, so the clustered
    path (its own window partition, shift mask, bias lookup and shifted blocks) must give the vanilla outputs."""
    model = load(swin_repo, clustering_location=location, reconstruction_location=reconstruction, **IDENTITY)
    x = photos()
    with torch.no_grad():
        expected, out = vanilla(x, output_hidden_states=True), model(x, output_hidden_states=True)
    for a, b in zip(out.feature_maps + out.hidden_states, expected.feature_maps + expected.hidden_states, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_clustered_outputs_keep_the_vanilla_shapes(swin_repo, vanilla):
    model = load(swin_repo, attn_implementation="eager", **SETTINGS)  # eager: attention weights are returned
    for height, width in ((64, 64), (72, 88)):  # 72x88: stage maps 18x22 / 9x11, padded to window multiples
        x = photos(height, width)
        with torch.no_grad():
            expected = vanilla(x, output_hidden_states=True, output_attentions=True)
            out = model(x, output_hidden_states=True, output_attentions=True)
        assert [f.shape for f in out.feature_maps] == [f.shape for f in expected.feature_maps]
        assert [h.shape for h in out.hidden_states] == [h.shape for h in expected.hidden_states]
        assert all(torch.isfinite(f).all() for f in out.feature_maps)
        assert not torch.allclose(out.feature_maps[1], expected.feature_maps[1], atol=1e-3)
        torch.testing.assert_close(out.feature_maps[0], expected.feature_maps[0])  # stage 1 runs before clustering
        # the last stage-2 block attends over 3x3 clustered windows: (B * windows of the reduced map, heads, 9, 9)
        windows = -(-height // 16) * -(-width // 16)  # stage-2 map: (height / 4) x (width / 4), 4x4 windows
        assert out.attentions[1].shape == (2 * windows, 2, 9, 9)


def test_settings_changed_after_construction_take_effect(swin_repo):
    model, x = load(swin_repo, **SETTINGS), photos()
    model.config.clustering_location = 6  # now in stage 3: every stage and block was swapped, each knows its place
    with torch.no_grad():
        assert torch.equal(model(x).feature_maps[-1], load(swin_repo, **{**SETTINGS, "clustering_location": 6})(x)[0][-1])


def test_batch_items_are_clustered_independently(swin_repo):
    # float64: in float32, batch-size dependent rounding of the matrix products can flip a top-k choice
    model, x = load(swin_repo, **SETTINGS).double(), photos(batch=2).double()
    with torch.no_grad():
        together = model(x).feature_maps[-1]
        alone = torch.cat([model(x[i : i + 1]).feature_maps[-1] for i in range(2)])
    torch.testing.assert_close(together, alone, rtol=1e-10, atol=1e-10)


def test_window_clustering_partitions_pads_and_reconstructs_in_place():
    config = ExpeditedSwinConfig(**TINY, clustering_location=2, clustered_window_size=2, reconstruction_k=1)
    tokens = torch.randn(2, 6 * 7, 8, generator=torch.Generator().manual_seed(0))
    reduced, clustering = cluster_windows(tokens, (6, 7), 4, 2, config)
    assert clustering.padded_grid == (8, 8) and clustering.reduced_grid == (4, 4) and reduced.shape == (2, 16, 8)
    # window (i, j) of the zero-padded map -> block (i, j) of the reduced map, clustered on its own 4x4 grid
    padded = F.pad(tokens.view(2, 6, 7, 8), (0, 0, 0, 1, 0, 2))
    reduced_map = reduced.view(2, 4, 4, 8)
    for i in range(2):
        for j in range(2):
            window = padded[:, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4].reshape(2, 16, 8)
            expected = cluster_tokens(
                window, (4, 4), (2, 2), config.clustering_iterations, config.clustering_temperature,
                config.clustering_window_size,
            )
            torch.testing.assert_close(reduced_map[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].reshape(2, 4, 8), expected)
    identity = ExpeditedSwinConfig(**TINY, clustering_location=2, **IDENTITY)
    reduced, clustering = cluster_windows(tokens, (6, 7), 4, 4, identity)
    torch.testing.assert_close(clustering.reconstruct(reduced), tokens)  # every token back in its place, crop done


@pytest.mark.parametrize("size,window,shift", [((8, 8), 4, 2), ((12, 8), 4, 1), ((9, 6), 3, 1)])
def test_shifted_window_mask_matches_transformers(size, window, shift):
    layer = SwinLayer(SwinConfig(**{**TINY, "window_size": window}), 16, size, 2, shift_size=shift)
    expected = layer.get_attn_mask(*size, dtype=torch.float32, device=torch.device("cpu"))
    assert torch.equal(shifted_window_mask(*size, window, shift, torch.float32, torch.device("cpu")), expected)
    assert shifted_window_mask(*size, window, 0, torch.float32, torch.device("cpu")) is None


def test_official_shift_mask_uses_the_original_shift_on_the_clustered_map(swin_repo):
    # the official mask after clustering: window k = 3 but regions cut at the old shift K // 2 = 2, not k // 2 = 1
    official = shifted_window_mask(6, 6, 3, 2, torch.float32, torch.device("cpu"))
    correct = shifted_window_mask(6, 6, 3, 1, torch.float32, torch.device("cpu"))
    assert not torch.equal(official, correct)
    assert torch.equal(official[0], torch.zeros(9, 9))  # the top-left window lies in one region either way
    x = photos()
    with torch.no_grad():
        fixed = load(swin_repo, **SETTINGS)(x).feature_maps[1]
        buggy = load(swin_repo, **SETTINGS, official_shift_mask=True)(x).feature_maps[1]
    assert not torch.allclose(fixed, buggy, atol=1e-4)


def test_clustered_bias_is_the_loaded_table_resized_bilinearly(swin_repo):
    model = load(swin_repo, **SETTINGS)
    attention = model.swin.encoder.layers[1].blocks[0].attention
    table = attention.relative_position_bias.relative_position_bias_table  # (7 * 7, heads)
    resized = F.interpolate(table.T.reshape(1, 2, 7, 7), size=(5, 5), mode="bilinear", align_corners=False)
    bias = attention.clustered_window_bias(3)  # (1, heads, 9, 9)
    # tokens 0 = (0, 0) and 8 = (2, 2) of a 3x3 window: offset (-2, -2) -> cell (0, 0) of the 5x5 table
    torch.testing.assert_close(bias[0, :, 0, 8], resized[0, :, 0, 0])
    torch.testing.assert_close(bias[0, :, 4, 4], resized[0, :, 2, 2])
    torch.testing.assert_close(attention.clustered_window_bias(4), attention.relative_position_bias())
    with torch.no_grad():
        model(photos())
    assert table.shape == (49, 2) and set(model.state_dict()) == set(load(swin_repo, expedite=False).state_dict())


def test_eager_and_sdpa_attention_agree(swin_repo):
    x = photos().double()  # float64: float32 rounding could flip a top-k choice (eager keeps a float32 softmax)
    with torch.no_grad():
        eager = load(swin_repo, attn_implementation="eager", **SETTINGS).double()(x).feature_maps
        sdpa = load(swin_repo, attn_implementation="sdpa", **SETTINGS).double()(x).feature_maps
    for a, b in zip(eager, sdpa, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_torch_compile_fullgraph(swin_repo):
    model = load(swin_repo, **SETTINGS)
    x = photos()
    with torch.no_grad():
        expected = model(x).feature_maps
        out = torch.compile(model, fullgraph=True, backend="aot_eager")(x).feature_maps
    for a, b in zip(out, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_save_writes_the_hub_layout_and_reloads_expedited(swin_repo, tmp_path):
    model = load(swin_repo, **SETTINGS)
    model.save_pretrained(tmp_path)
    assert set(load_file(tmp_path / "model.safetensors")) == set(load_file(swin_repo / "model.safetensors"))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "expedited_swin" and saved["clustered_window_size"] == 3
    config = AutoConfig.from_pretrained(tmp_path)  # (AutoBackbone.from_pretrained needs the Hub for local paths)
    assert type(config) is ExpeditedSwinConfig and type(AutoBackbone.from_config(config)) is ExpeditedSwinBackbone
    reloaded = ExpeditedSwinBackbone.from_pretrained(tmp_path).eval()
    x = photos()
    with torch.no_grad():
        assert torch.equal(reloaded(x).feature_maps[-1], model(x).feature_maps[-1])
    _, info = SwinBackbone.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_setting_overrides_replace_the_saved_window_choice(swin_repo, tmp_path):
    load(swin_repo, **SETTINGS).save_pretrained(tmp_path)
    assert ExpeditedSwinConfig.from_pretrained(tmp_path, clustered_window_size=2).num_clusters == [2, 2]
    assert ExpeditedSwinConfig.from_pretrained(tmp_path, num_clusters=[2, 2]).clustered_window_size == 2


def test_conversion_and_default_preset_follow_the_stage_depths():
    large = SwinConfig(embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48], window_size=12)
    config = expedite_swin_config(large)
    assert (config.clustering_location, config.clustered_window_size, config.reconstruction_k) == (10, 8, 10)
    assert config.expedite and not config.official_shift_mask and config.reconstruction_normalization == "l1"
    tiny = expedite_swin_config(SwinConfig(depths=[2, 2, 6, 2], window_size=7))  # Swin-T: block 6, 7 -> 5
    assert (tiny.clustering_location, tiny.clustered_window_size) == (6, 5)
    official = expedite_swin_config(large, clustering_location=12, reconstruction_location=16, clustered_window_size=6)
    assert (official.clustering_location, official.reconstruction_location, official.num_clusters) == (12, 16, [6, 6])
    with pytest.raises(ValueError, match="Swin config"):
        expedite_swin_config(ViTConfig())


@pytest.mark.parametrize(
    "settings,match",
    [
        (dict(clustered_window_size=5), "clustered_window_size"),
        (dict(clustered_window_size=0), "clustered_window_size"),
        (dict(clustering_location=8), "clustering_location"),
        (dict(clustering_location=-1), "clustering_location"),
        (dict(clustering_location=3, reconstruction_location=7), "stage boundary"),
        (dict(clustering_location=3, reconstruction_location=3), "reconstruction_location"),
        (dict(cluster_ratio=0.5), "cluster_ratio"),
        (dict(num_clusters=[2, 3]), "num_clusters"),
        (dict(clustered_window_size=2, reconstruction_k=5), "reconstruction_k"),
    ],
)
def test_bad_settings_fail_at_config_construction(settings, match):
    with pytest.raises(ValueError, match=match):
        ExpeditedSwinConfig(**TINY, **{**SETTINGS, **settings})


def test_a_stage_map_smaller_than_one_window_fails_clearly(swin_repo):
    model = load(swin_repo, **SETTINGS)
    with pytest.raises(ValueError, match="smaller than one 4 x 4 attention window"):
        model(photos(12, 64))  # stage-2 map: 3 x 16 tokens
