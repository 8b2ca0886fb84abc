"""Expedited ViT: loading hub layouts, parity with transformers, shapes, attention backends, compile, bad input."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from skimage import data as photos
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil, ViTModel

from hf_expedite import ExpeditedViTConfig, ExpeditedViTForImageClassification, ExpeditedViTModel

TINY = dict(
    hidden_size=32,
    num_hidden_layers=6,
    num_attention_heads=4,
    intermediate_size=64,
    image_size=64,
    patch_size=8,
    num_labels=5,
)
SETTINGS = dict(clustering_location=2, num_clusters=[5, 5], reconstruction_k=4, clustering_temperature=2.0)


@pytest.fixture(scope="module")
def vit_repo(tmp_path_factory):
    """A tiny ViTForImageClassification saved in the hub layout, standing in for a hub repository."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vit")
    ViTForImageClassification(ViTConfig(**TINY)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def vanilla(vit_repo):
    return ViTForImageClassification.from_pretrained(vit_repo).eval()


def pixels(batch=2, height=64, width=64, seed=0):
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("cls", [ExpeditedViTModel, ExpeditedViTForImageClassification])
def test_hub_layout_loads_with_an_empty_report(vit_repo, cls):
    if cls is ExpeditedViTModel:  # a base model from a head checkpoint: only the pooler/head differ, as in vanilla
        _, info = cls.from_pretrained(vit_repo, add_pooling_layer=False, output_loading_info=True)
        assert info["missing_keys"] == set() and info["unexpected_keys"] == {"classifier.weight", "classifier.bias"}
        return
    _, info = cls.from_pretrained(vit_repo, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]


def test_base_model_layout_loads(tmp_path):
    ViTModel(ViTConfig(**TINY)).save_pretrained(tmp_path)
    _, info = ExpeditedViTModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_unsupported_layout_raises_instead_of_leaving_random_weights(vit_repo, tmp_path):
    weights = load_file(vit_repo / "model.safetensors")
    renamed = {k.replace("attention.attention.query", "attn.q"): v for k, v in weights.items()}
    save_file(renamed, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((vit_repo / "config.json").read_text())
    with pytest.raises(RuntimeError, match="could not load the encoder weights"):
        ExpeditedViTForImageClassification.from_pretrained(tmp_path)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_expedite_off_is_bit_identical(vit_repo, attn):
    vanilla = ViTForImageClassification.from_pretrained(vit_repo, attn_implementation=attn).eval()
    model = ExpeditedViTForImageClassification.from_pretrained(vit_repo, expedite=False, attn_implementation=attn)
    x = pixels()
    with torch.no_grad():
        a = vanilla(x, output_hidden_states=True)
        b = model.eval()(x, output_hidden_states=True)
        base_a = vanilla.vit(x, output_hidden_states=True)
        base_b = model.vit(x, output_hidden_states=True)
    assert torch.equal(a.logits, b.logits)
    assert torch.equal(base_a.last_hidden_state, base_b.last_hidden_state)
    assert len(a.hidden_states) == len(b.hidden_states) == TINY["num_hidden_layers"] + 1
    assert all(torch.equal(p, q) for p, q in zip(a.hidden_states, b.hidden_states))


@pytest.mark.parametrize("reconstruction_location", [None, 4, 6])
def test_hidden_states_keep_the_vanilla_shape(vit_repo, reconstruction_location):
    model = ExpeditedViTModel.from_pretrained(
        vit_repo, reconstruction_location=reconstruction_location, add_pooling_layer=False, **SETTINGS
    ).eval()
    with torch.no_grad():
        out = model(pixels(), output_hidden_states=True)
    assert out.last_hidden_state.shape == (2, 65, 32)
    assert [h.shape for h in out.hidden_states] == [(2, 65, 32)] * 7
    # only the requested indices are returned, as the parent numbers them (transformers >= 5.23: 0 = the embeddings;
    # before: 0 = the first block's output)
    selected = model(pixels(), output_hidden_states=[0, 4])
    reference = ViTModel.from_pretrained(vit_repo, add_pooling_layer=False)(pixels(), output_hidden_states=[0, 4])
    assert [h is not None for h in selected.hidden_states] == [h is not None for h in reference.hidden_states]
    offset = len(out.hidden_states) - len(selected.hidden_states)
    torch.testing.assert_close(selected.hidden_states[4], out.hidden_states[4 + offset])


def test_hidden_states_requested_through_the_config(vit_repo):
    model = ExpeditedViTModel.from_pretrained(vit_repo, output_hidden_states=True, **SETTINGS).eval()
    with torch.no_grad():
        out = model(pixels())
    assert [h.shape for h in out.hidden_states] == [(2, 65, 32)] * 7


def test_full_resolution_blocks_after_reconstruction_see_every_token(vit_repo, vanilla):
    """Reconstruction after layer 4: layers 5 and 6 receive 1 + N tokens and the state before clustering is exact."""
    model = ExpeditedViTModel.from_pretrained(vit_repo, reconstruction_location=4, add_pooling_layer=False, **SETTINGS)
    seen = []
    handles = [layer.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1])) for layer in model.layers]
    with torch.no_grad():
        out = model.eval()(pixels(), output_hidden_states=True)
        ref = vanilla.vit(pixels(), output_hidden_states=True)
    for handle in handles:
        handle.remove()
    assert seen == [65, 65, 26, 26, 65, 65]
    for index in range(3):  # embeddings and the two layers before clustering are untouched
        assert torch.equal(out.hidden_states[index], ref.hidden_states[index])


def test_non_square_inputs_with_interpolated_positions(vit_repo):
    model = ExpeditedViTForImageClassification.from_pretrained(vit_repo, **SETTINGS).eval()
    x = pixels(batch=3, height=48, width=96)  # 6 x 12 token grid, 5 x 5 clusters of another aspect ratio
    with torch.no_grad():
        out = model(x, interpolate_pos_encoding=True, output_hidden_states=True)
        singles = torch.cat([model(x[i : i + 1], interpolate_pos_encoding=True).logits for i in range(3)])
    assert out.logits.shape == (3, 5)
    assert all(h.shape == (3, 73, 32) for h in out.hidden_states)
    torch.testing.assert_close(out.logits, singles, rtol=0, atol=1e-5)


def test_eager_and_sdpa_agree(vit_repo):
    x = pixels()
    logits = []
    for attn in ("eager", "sdpa"):
        model = ExpeditedViTForImageClassification.from_pretrained(vit_repo, attn_implementation=attn, **SETTINGS)
        with torch.no_grad():
            logits.append(model.eval()(x).logits)
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=1e-5)


def test_torch_compile_fullgraph_including_a_first_call_with_hidden_states(vit_repo):
    model = ExpeditedViTModel.from_pretrained(vit_repo, add_pooling_layer=False, **SETTINGS).eval()
    x = pixels()
    with torch.no_grad():
        expected = model(x, output_hidden_states=True)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        out = compiled(x, output_hidden_states=True)
    torch.testing.assert_close(out.last_hidden_state, expected.last_hidden_state, rtol=0, atol=1e-5)
    assert len(out.hidden_states) == 7 and all(h.shape == (2, 65, 32) for h in out.hidden_states)


def _official_dense_reference(vit: ViTModel, x: torch.Tensor, alpha: int, grid, clusters, tau_c, tau_r, k, window):
    """The official algorithm written densely from the spec (expedite-algorithm.md 1 and 2.2), inverse temperatures."""
    h = vit.embeddings(x, interpolate_pos_encoding=True)
    for layer in vit.layers[:alpha]:
        h = layer(h)
    cls, z = h[:, :1], h[:, 1:]
    batch, n, c = z.shape
    s = F.adaptive_avg_pool2d(z.transpose(1, 2).reshape(batch, c, *grid), clusters).flatten(2)  # (B, C, M)
    labels = torch.arange(clusters[0] * clusters[1], dtype=torch.float32).view(1, 1, *clusters)
    home = F.interpolate(labels, size=grid, mode="nearest").flatten().long()
    cells = torch.arange(clusters[0] * clusters[1])
    near = ((home[None] % clusters[1] - cells[:, None] % clusters[1]).abs() <= window // 2) & (
        (home[None] // clusters[1] - cells[:, None] // clusters[1]).abs() <= window // 2
    )
    penalty = (~near).float() * 1e16  # (M, N)
    for _ in range(5):
        d = (z**2).sum(-1)[:, None, :] + (s**2).sum(1)[:, :, None] - 2 * torch.einsum("bcm,bnc->bmn", s, z)
        a = torch.softmax(-tau_c * (d + penalty), dim=1)
        s = torch.einsum("bmn,bnc->bcm", a, z) / a.sum(-1)[:, None, :].clamp_min(1e-16)
    s_alpha = s.transpose(1, 2)
    d_r = (z**2).sum(-1)[:, :, None] + (s_alpha**2).sum(-1)[:, None, :] - 2 * z @ s_alpha.transpose(1, 2)
    w = torch.exp(-tau_r * d_r)
    w = w * (w >= w.topk(k, dim=-1).values[..., -1:])
    w = F.normalize(w, dim=2)
    h = torch.cat([cls, s_alpha], 1)
    for layer in vit.layers[alpha:]:
        h = layer(h)
    h = torch.cat([h[:, :1], w @ h[:, 1:]], 1)
    return vit.layernorm(h)


def test_parity_with_the_official_algorithm(vit_repo, vanilla):
    official = dict(tau_c=0.5, tau_r=0.25, k=6, window=3)  # inverse temperatures as the official configs store them
    model = ExpeditedViTModel.from_pretrained(
        vit_repo,
        add_pooling_layer=False,
        clustering_location=3,
        num_clusters=[4, 5],
        clustering_temperature=1 / official["tau_c"],
        reconstruction_temperature=1 / official["tau_r"],
        reconstruction_k=official["k"],
        clustering_window_size=official["window"],
        reconstruction_normalization="l2",
    ).eval()
    x = pixels(height=64, width=80)  # 8 x 10 tokens -> 4 x 5 clusters
    with torch.no_grad():
        ours = model(x, interpolate_pos_encoding=True).last_hidden_state
        reference = _official_dense_reference(vanilla.vit, x, 3, (8, 10), (4, 5), **official)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-4)
    # and it is a real reduction: the vanilla model differs
    assert (ours - vanilla.vit(x, interpolate_pos_encoding=True).last_hidden_state).abs().max() > 1e-2


def test_real_photograph_fidelity(vit_repo, vanilla):
    """On a real photograph: a cluster grid equal to the token grid reproduces vanilla; a real reduction stays close."""
    processor = ViTImageProcessorPil(size={"height": 64, "width": 64})
    batch = processor([photos.astronaut(), photos.coffee()], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        reference = vanilla(batch).logits
        identity = ExpeditedViTForImageClassification.from_pretrained(
            vit_repo, clustering_location=2, num_clusters=[8, 8], clustering_temperature=1e-3,
            reconstruction_temperature=1e-3,
        ).eval()(batch).logits
        reduced = ExpeditedViTForImageClassification.from_pretrained(vit_repo, **SETTINGS).eval()(batch).logits
    torch.testing.assert_close(identity, reference, rtol=0, atol=1e-4)
    correlation = np.corrcoef(reduced.flatten().numpy(), reference.flatten().numpy())[0, 1]
    assert correlation > 0.9, correlation  # measured 0.971 with this tiny random model


@pytest.mark.parametrize(
    "settings,field",
    [
        (dict(clustering_location=6), "clustering_location"),
        (dict(clustering_location=-1), "clustering_location"),
        (dict(clustering_location=3, reconstruction_location=3), "reconstruction_location"),
        (dict(clustering_location=3, reconstruction_location=7), "reconstruction_location"),
        (dict(clustering_window_size=4), "clustering_window_size"),
        (dict(reconstruction_k=0), "reconstruction_k"),
        (dict(num_clusters=[2, 2], reconstruction_k=5), "reconstruction_k"),
        (dict(clustering_temperature=0.0), "clustering_temperature"),
        (dict(reconstruction_temperature=-1.0), "reconstruction_temperature"),
        (dict(reconstruction_mode="soft"), "reconstruction_mode"),
        (dict(reconstruction_normalization="l3"), "reconstruction_normalization"),
        (dict(cluster_ratio=1.5), "cluster_ratio"),
        (dict(num_clusters=[4, 4], cluster_ratio=0.5), "num_clusters"),
    ],
)
def test_invalid_settings_raise_at_config_construction(settings, field):
    with pytest.raises(ValueError, match=field):
        ExpeditedViTConfig(**TINY, **settings)


def test_defaults_come_from_the_default_preset():
    config = ExpeditedViTConfig(num_hidden_layers=24)
    assert (config.clustering_location, config.cluster_ratio, config.num_clusters) == (10, 0.7, None)
    assert config.clustering_temperature == config.reconstruction_temperature == 50.0
    assert math.isclose(ExpeditedViTConfig(num_hidden_layers=12).clustering_location, 5)


def test_runtime_errors(vit_repo):
    model = ExpeditedViTModel.from_pretrained(vit_repo, add_pooling_layer=False, **SETTINGS).eval()
    with pytest.raises(ValueError, match="larger than the token grid"):
        model(pixels(height=32, width=32), interpolate_pos_encoding=True)  # 4 x 4 tokens, 5 x 5 clusters
    with pytest.raises(ValueError, match="attention_mask"):
        model(pixels(), attention_mask=torch.ones(2, 65))
