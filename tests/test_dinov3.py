"""Expedited DINOv3 ViT (model and backbone): the hub layout, parity with expedite off and with the identity
setting, the cluster tokens' rotary positions, vanilla output shapes, Auto loading and save/reload."""

import json

import pytest
import torch
from transformers import DINOv3ViTBackbone, DINOv3ViTConfig, DINOv3ViTModel

import hf_expedite
from hf_expedite import ExpeditedDINOv3ViTBackbone, ExpeditedDINOv3ViTConfig, ExpeditedDINOv3ViTModel
from hf_expedite.benchmark.photos import photo_batch
from hf_expedite.models.dinov3 import cell_centres, cluster_rotary_embeddings, expedite_dinov3_vit_config

# 8x8 patches; a 64x96 input gives an 8x12 token grid. CLS + 2 registers.
TINY = dict(
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=2,
    intermediate_size=64,
    image_size=64,
    patch_size=8,
    num_register_tokens=2,
    out_features=["stage2", "stage4"],
)
SETTINGS = dict(clustering_location=1, num_clusters=[4, 6], reconstruction_k=4)
IDENTITY = dict(clustering_location=1, num_clusters=[8, 12], clustering_iterations=0, reconstruction_k=1)
PREFIX = 3


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("dinov3")
    DINOv3ViTModel(DINOv3ViTConfig(**TINY)).save_pretrained(path)  # the hub layout: `layer.N...`, renamed at load
    return path


@pytest.fixture(scope="module")
def pixels():
    return photo_batch(64, 96, batch_size=2, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def run(model, pixels, **kwargs):
    with torch.no_grad():
        return model.eval()(pixels, **kwargs)


@pytest.mark.parametrize("expedited_class", [ExpeditedDINOv3ViTModel, ExpeditedDINOv3ViTBackbone])
def test_hub_layout_loads_with_an_empty_report(repo, expedited_class):
    model, info = expedited_class.from_pretrained(repo, output_loading_info=True, **SETTINGS)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert isinstance(model.config, ExpeditedDINOv3ViTConfig) and model.config.num_clusters == [4, 6]
    vanilla = DINOv3ViTModel.from_pretrained(repo)
    assert torch.equal(model.model.layer[0].attention.q_proj.weight, vanilla.model.layer[0].attention.q_proj.weight)


def test_auto_classes(repo):
    assert type(hf_expedite.AutoModel.from_pretrained(repo, expedite=True)) is ExpeditedDINOv3ViTModel
    # (transformers' AutoBackbone.from_pretrained asks the Hub whether a local folder is a repo: from_config here)
    backbone = hf_expedite.AutoBackbone.from_config(DINOv3ViTConfig(**TINY), expedite=True)
    assert type(backbone) is ExpeditedDINOv3ViTBackbone
    assert type(hf_expedite.AutoModel.from_pretrained(repo, expedite=False)) is DINOv3ViTModel


def test_expedite_false_is_bit_identical(repo, pixels):
    options = dict(output_hidden_states=True, output_attentions=True)
    vanilla = run(DINOv3ViTModel.from_pretrained(repo, attn_implementation="eager"), pixels, **options)
    off = run(ExpeditedDINOv3ViTModel.from_pretrained(repo, attn_implementation="eager", expedite=False), pixels,
              **options)  # fmt: skip
    assert torch.equal(off.last_hidden_state, vanilla.last_hidden_state)
    assert torch.equal(off.pooler_output, vanilla.pooler_output)
    assert all(torch.equal(a, b) for a, b in zip(off.hidden_states, vanilla.hidden_states, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(off.attentions, vanilla.attentions, strict=True))
    maps = run(DINOv3ViTBackbone.from_pretrained(repo, out_features=TINY["out_features"]), pixels).feature_maps
    off_maps = run(ExpeditedDINOv3ViTBackbone.from_pretrained(repo, expedite=False), pixels).feature_maps
    assert all(torch.equal(a, b) for a, b in zip(off_maps, maps, strict=True))


def test_cluster_positions_are_the_cell_centres(repo):
    assert cell_centres(8, 4) == [1.0, 3.0, 5.0, 7.0]  # 2 patches per cell: centres 0.5, 1.5 -> 1.0, ...
    assert cell_centres(5, 2) == [1.5, 3.5]  # uneven adaptive cells 0..2 and 2..4 overlap on patch 2
    assert cell_centres(6, 6) == [0.5, 1.5, 2.5, 3.5, 4.5, 5.5]
    model = DINOv3ViTModel.from_pretrained(repo).eval()
    cos, sin = model.rope_embeddings(torch.zeros(1, 3, 64, 96))
    own_cos, own_sin = cluster_rotary_embeddings(model.rope_embeddings, (8, 12), (8, 12), torch.float32, "cpu")
    assert torch.equal(own_cos, cos) and torch.equal(own_sin, sin)  # one cell per token: the model's own RoPE
    half_cos, _ = cluster_rotary_embeddings(model.rope_embeddings, (8, 12), (4, 6), torch.float32, "cpu")
    coarse, _ = model.rope_embeddings(torch.zeros(1, 3, 32, 48))  # a 4x6 grid's centres are the 2x2 cells' centres
    torch.testing.assert_close(half_cos, coarse, rtol=0, atol=1e-6)  # the same angles, rounded differently


def test_cluster_grid_equal_to_the_token_grid_reproduces_vanilla(repo, pixels):
    """Every token its own cluster with its own position; only float32 rounding of the distance products in the
    top-1 choice could differ (hence the tolerance)."""
    vanilla = run(DINOv3ViTModel.from_pretrained(repo), pixels)
    same = run(ExpeditedDINOv3ViTModel.from_pretrained(repo, **IDENTITY), pixels)
    torch.testing.assert_close(same.last_hidden_state, vanilla.last_hidden_state, rtol=1e-5, atol=1e-5)


def test_clustered_outputs_keep_the_vanilla_shapes(repo, pixels):
    options = dict(output_hidden_states=True, output_attentions=True)
    vanilla = run(DINOv3ViTModel.from_pretrained(repo, attn_implementation="eager"), pixels, **options)
    out = run(ExpeditedDINOv3ViTModel.from_pretrained(repo, attn_implementation="eager", **SETTINGS), pixels, **options)
    assert out.last_hidden_state.shape == vanilla.last_hidden_state.shape == (2, PREFIX + 96, 32)
    assert [h.shape for h in out.hidden_states] == [h.shape for h in vanilla.hidden_states]
    assert [a.shape[-1] for a in out.attentions] == [PREFIX + 96] + [PREFIX + 24] * 3
    assert torch.equal(out.hidden_states[1], vanilla.hidden_states[1])  # before clustering nothing changes
    assert not torch.allclose(out.last_hidden_state, vanilla.last_hidden_state, atol=1e-3)
    backbone = run(ExpeditedDINOv3ViTBackbone.from_pretrained(repo, **SETTINGS), pixels)
    assert [tuple(m.shape) for m in backbone.feature_maps] == [(2, 32, 8, 12)] * 2
    assert all(torch.isfinite(m).all() for m in backbone.feature_maps)


def test_config_settings_and_errors():
    default = ExpeditedDINOv3ViTConfig(**TINY)  # the DPT default scaled to 4 blocks: after 2, 70% per side
    assert (default.clustering_location, default.cluster_ratio) == (2, 0.7)
    with pytest.raises(ValueError, match="clustering_location=4"):
        ExpeditedDINOv3ViTConfig(**TINY, clustering_location=4)
    with pytest.raises(ValueError, match="DINOv3ViT config"):
        expedite_dinov3_vit_config(hf_expedite.ExpeditedViTConfig())
    assert not expedite_dinov3_vit_config(DINOv3ViTConfig(**TINY), expedite=False).expedite


def test_save_and_reload(repo, pixels, tmp_path):
    model = ExpeditedDINOv3ViTModel.from_pretrained(repo, **SETTINGS)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "expedited_dinov3_vit" and saved["num_clusters"] == [4, 6]
    reloaded = hf_expedite.AutoModel.from_pretrained(str(tmp_path))
    assert type(reloaded) is ExpeditedDINOv3ViTModel
    assert torch.equal(run(reloaded, pixels).last_hidden_state, run(model, pixels).last_hidden_state)
    info = DINOv3ViTModel.from_pretrained(tmp_path, output_loading_info=True)[1]
    assert not info["missing_keys"] and not info["unexpected_keys"]
