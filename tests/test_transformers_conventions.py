"""Conventions transformers' own model tests and tools rely on, kept by the expedited classes.

Each case was a failure of transformers' common model tests (``tests/models/*``, run with the expedited classes
substituted): hidden states selected by (negative) index, ``config.gradient_checkpointing``, a config edited after it
was built, and the class-name tables pipelines and the Trainer consult.
"""

from __future__ import annotations

import inspect
import logging

import pytest
import torch
import transformers
from PIL import Image
from skimage import data as photos
from transformers import (
    DPTConfig,
    DPTModel,
    Mask2FormerConfig,
    Mask2FormerForUniversalSegmentation,
    ViTConfig,
    ViTModel,
    pipeline,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_BACKBONE_MAPPING_NAMES,
    MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES,
    MODEL_MAPPING_NAMES,
)

import hf_expedite
from hf_expedite.compat import SELECTS_HIDDEN_STATES

VIT = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37)
DPT = dict(VIT, backbone_out_indices=[0, 1, 2], neck_hidden_sizes=[8, 16, 16], fusion_hidden_size=16)
SWIN = dict(image_size=32, patch_size=2, embed_dim=8, depths=[1, 2, 1], num_heads=[2, 2, 2], window_size=4)


def pixels(size: int = 32, batch: int = 2) -> torch.Tensor:
    image = torch.from_numpy(photos.astronaut()[::8, ::8][:size, :size].copy()).permute(2, 0, 1).float() / 255
    return image.expand(batch, -1, -1, -1).contiguous()


def model_pairs():
    """(vanilla class, vanilla config, expedited class, expedited config kwargs) for the sequence encoders."""
    return [
        (ViTModel, ViTConfig(**VIT), hf_expedite.ExpeditedViTModel, hf_expedite.ExpeditedViTConfig, VIT),
        (DPTModel, DPTConfig(**DPT), hf_expedite.ExpeditedDPTModel, hf_expedite.ExpeditedDPTConfig, DPT),
    ]


@pytest.mark.parametrize("pair", model_pairs(), ids=["vit", "dpt"])
@pytest.mark.parametrize("selection", [[0, 2, -1], [-1], [3], [-4, 1]])
def test_hidden_states_selected_by_index_as_the_parent(pair, selection):
    vanilla_class, vanilla_config, expedited_class, expedited_config, sizes = pair
    torch.manual_seed(0)
    vanilla = vanilla_class(vanilla_config).eval()
    off = expedited_class(expedited_config(expedite=False, **sizes)).eval()
    on = expedited_class(expedited_config(clustering_location=1, num_clusters=[2, 2], **sizes)).eval()
    off.load_state_dict(vanilla.state_dict())
    on.load_state_dict(vanilla.state_dict())
    with torch.no_grad():
        reference = vanilla(pixels(), output_hidden_states=selection).hidden_states
        exact = off(pixels(), output_hidden_states=selection).hidden_states
        reduced = on(pixels(), output_hidden_states=selection).hidden_states
    assert len(exact) == len(reduced) == len(reference) == (4 if SELECTS_HIDDEN_STATES else 3)  # 5.20-5.22: no embeddings
    for want, got_off, got_on in zip(reference, exact, reduced, strict=True):
        assert (got_off is None) == (got_on is None) == (want is None)
        if want is not None:
            assert torch.equal(got_off, want) and got_on.shape == want.shape


def expedited_models():
    """One instance-maker per expedited model class, all with ``config.gradient_checkpointing = True``."""

    def flagged(config):
        config.gradient_checkpointing = True
        return config

    vit = lambda: flagged(hf_expedite.ExpeditedViTConfig(expedite=False, **VIT))  # noqa: E731
    dinov2 = lambda: flagged(hf_expedite.ExpeditedDinov2Config(expedite=False, **VIT))  # noqa: E731
    swin = lambda: flagged(hf_expedite.ExpeditedSwinConfig(expedite=False, **SWIN))  # noqa: E731
    return {
        "vit": lambda: hf_expedite.ExpeditedViTModel(vit()),
        "vit-classification": lambda: hf_expedite.ExpeditedViTForImageClassification(config=vit()),
        "dpt-depth": lambda: hf_expedite.ExpeditedDPTForDepthEstimation(
            flagged(hf_expedite.ExpeditedDPTConfig(expedite=False, **DPT))
        ),
        "dpt-segmentation": lambda: hf_expedite.ExpeditedDPTForSemanticSegmentation(
            flagged(hf_expedite.ExpeditedDPTConfig(expedite=False, **DPT))
        ),
        "dinov2-backbone": lambda: hf_expedite.ExpeditedDinov2Backbone(dinov2()),
        "swin-backbone": lambda: hf_expedite.ExpeditedSwinBackbone(swin()),
        "swinv2": lambda: hf_expedite.ExpeditedSwinv2Model(
            flagged(hf_expedite.ExpeditedSwinv2Config(expedite=False, **SWIN))
        ),
    }


@pytest.mark.parametrize("name", list(expedited_models()))
def test_gradient_checkpointing_requested_in_the_config(name):
    # transformers' post_init consumes the flag in the first (often vanilla, then replaced) submodule it builds.
    model = expedited_models()[name]()
    layers = [m for m in model.modules() if hasattr(m, "gradient_checkpointing")]
    assert layers and all(m.gradient_checkpointing for m in layers)
    assert not hasattr(model.config, "gradient_checkpointing")  # consumed, as by the parent: not saved


def test_a_vanilla_config_edited_after_it_was_built_saves_and_loads(tmp_path):
    # transformers' Mask2Former tests shrink the default Swin backbone after building the config: with expedite off
    # the preset's (now out-of-range) settings are dormant, so the model builds, saves and loads like the parent.
    config = hf_expedite.ExpeditedMask2FormerConfig(expedite=False)
    config.backbone_config.depths = [1, 1, 1, 1]
    model = hf_expedite.ExpeditedMask2FormerForUniversalSegmentation(config)
    model.save_pretrained(tmp_path)
    reloaded = hf_expedite.ExpeditedMask2FormerForUniversalSegmentation.from_pretrained(tmp_path)
    assert reloaded.config.backbone_config.depths == [1, 1, 1, 1]
    vanilla = Mask2FormerForUniversalSegmentation(Mask2FormerConfig())
    assert sum(p.numel() for p in reloaded.parameters()) < sum(p.numel() for p in vanilla.parameters())
    # Turned on, the stale setting is named before anything runs.
    reloaded.config.backbone_config.expedite = True
    with pytest.raises(ValueError, match="clustering_location"):
        reloaded(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="expedite"):
        hf_expedite.ExpeditedViTConfig(expedite="false", **VIT)  # flags are still checked with expedite off


def test_class_name_tables_know_the_expedited_classes():
    assert MODEL_MAPPING_NAMES["expedited_vit"] == "ExpeditedViTModel"
    assert MODEL_FOR_BACKBONE_MAPPING_NAMES["expedited_swin"] == "ExpeditedSwinBackbone"
    assert MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES["expedited_dpt"] == "ExpeditedDPTForSemanticSegmentation"
    # The Auto classes still resolve through their registry (the name tables are never imported from).
    config = hf_expedite.ExpeditedViTConfig(**VIT)
    assert type(transformers.AutoModel.from_config(config)) is hf_expedite.ExpeditedViTModel


def test_segmentation_pipeline_accepts_the_expedited_model_without_an_error_log(caplog):
    model = hf_expedite.ExpeditedDPTForSemanticSegmentation(
        hf_expedite.ExpeditedDPTConfig(clustering_location=1, num_clusters=[2, 2], num_labels=3, **DPT)
    ).eval()
    processor = transformers.DPTImageProcessor(size={"height": 32, "width": 32})
    with caplog.at_level(logging.ERROR, logger="transformers"):
        segments = pipeline("image-segmentation", model=model, image_processor=processor)(
            Image.fromarray(photos.astronaut())
        )
    assert segments and not [r for r in caplog.records if "is not supported" in r.getMessage()]


@pytest.mark.parametrize(
    "model_class",
    [
        hf_expedite.ExpeditedViTModel,
        hf_expedite.ExpeditedDPTModel,
        hf_expedite.ExpeditedDPTForDepthEstimation,
        hf_expedite.ExpeditedDPTForSemanticSegmentation,
        hf_expedite.ExpeditedDinov2Backbone,
        hf_expedite.ExpeditedDepthAnythingForDepthEstimation,
    ],
)
def test_forward_advertises_the_transformers_kwargs_it_takes(model_class):
    # transformers' tests (and docs) read the evaluated `**kwargs: Unpack[TransformersKwargs]` annotation.
    kwargs = inspect.signature(model_class.forward).parameters["kwargs"]
    assert "output_attentions" in kwargs.annotation.__args__[0].__annotations__


def test_attn_implementation_reaches_the_converted_backbone_config():
    # DPT turns a DINOv2 backbone_config into an expedited one inside __post_init__, after transformers propagated
    # `attn_implementation` to it; the conversion must keep it.
    config = hf_expedite.ExpeditedDPTConfig(
        backbone_config=transformers.Dinov2Config(**VIT, out_indices=[1, 2]),
        neck_hidden_sizes=[8, 16],
        attn_implementation="eager",
    )
    assert isinstance(config.backbone_config, hf_expedite.ExpeditedDinov2Config)
    assert config._attn_implementation == config.backbone_config._attn_implementation == "eager"
