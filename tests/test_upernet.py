"""Expedited UperNet with a Swin backbone: the hub layout, parity with expedite off and with the identity setting,
vanilla output shapes, configs and their errors, Auto loading, save/reload and the image-segmentation pipeline on
real photographs."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from skimage import data as photos
from transformers import (
    ConvNextConfig,
    SwinConfig,
    UperNetConfig,
    UperNetForSemanticSegmentation,
    pipeline,
)
from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil
from transformers.models.swin.modeling_swin import SwinRelativePositionBias

import hf_expedite
from hf_expedite import ExpeditedSwinConfig, ExpeditedUperNetConfig, ExpeditedUperNetForSemanticSegmentation
from hf_expedite.models.swin import ExpeditedSwinBackbone
from hf_expedite.models.upernet import expedite_upernet_config

# Mask2Former's tiny Swin (a 128x192 input: stage 3 is 8x12, 2x3 windows of 4) and its settings.
from test_mask2former import BACKBONE, IDENTITY, LABELS, SETTINGS

HEAD = dict(hidden_size=16, auxiliary_in_channels=64, auxiliary_channels=8, id2label=LABELS)


@pytest.fixture(scope="module")
def upernet_repo(tmp_path_factory):
    """A tiny UperNetForSemanticSegmentation (Swin backbone, random bias tables) in the hub layout."""
    torch.manual_seed(0)
    model = UperNetForSemanticSegmentation(UperNetConfig(backbone_config=SwinConfig(**BACKBONE), **HEAD))
    for module in model.modules():
        if isinstance(module, SwinRelativePositionBias):
            module.relative_position_bias_table.data.normal_()
    path = tmp_path_factory.mktemp("upernet")
    model.save_pretrained(path)
    # UperNet checkpoints ship a SegformerImageProcessor; transformers 5.20 cannot load its PIL variant without
    # torchvision (not installed here), and DPT's resizes and normalises the same way.
    DPTImageProcessorPil(size={"height": 128, "width": 192}).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def vanilla(upernet_repo):
    return UperNetForSemanticSegmentation.from_pretrained(upernet_repo).eval()


@pytest.fixture(scope="module")
def processor(upernet_repo):
    return DPTImageProcessorPil.from_pretrained(upernet_repo)


def images():
    return [Image.fromarray(photos.chelsea()), Image.fromarray(photos.coffee())]


def load(repo, **settings):
    return ExpeditedUperNetForSemanticSegmentation.from_pretrained(repo, **settings).eval()


def forward(model, inputs):
    with torch.no_grad():
        return model(**inputs, output_hidden_states=True)


def test_hub_layout_loads_with_an_empty_report(upernet_repo):
    model, info = ExpeditedUperNetForSemanticSegmentation.from_pretrained(
        upernet_repo, output_loading_info=True, **SETTINGS
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert isinstance(model.config, ExpeditedUperNetConfig)
    assert isinstance(model.config.backbone_config, ExpeditedSwinConfig)
    assert model.config.backbone_config.clustering_location == 2  # setting kwargs reach the backbone config
    assert type(model.backbone) is ExpeditedSwinBackbone


def test_auto_class_with_expedite(upernet_repo):
    model = hf_expedite.AutoModelForSemanticSegmentation.from_pretrained(upernet_repo, expedite=True)
    assert type(model) is ExpeditedUperNetForSemanticSegmentation and model.config.backbone_config.expedite
    plain = hf_expedite.AutoModelForSemanticSegmentation.from_pretrained(upernet_repo, expedite=False)
    assert type(plain) is UperNetForSemanticSegmentation


def test_expedite_false_is_bit_identical(upernet_repo, vanilla, processor):
    inputs = processor(images(), return_tensors="pt")
    expected, out = forward(vanilla, inputs), forward(load(upernet_repo, expedite=False), inputs)
    assert torch.equal(out.logits, expected.logits)
    for a, b in zip(out.hidden_states, expected.hidden_states, strict=True):
        assert torch.equal(a, b)


def test_clustered_window_equal_to_the_window_reproduces_vanilla(upernet_repo, vanilla, processor):
    """Window 4 -> 4 with no iteration and top-1 reconstruction is the identity; only the order of float32 sums in
    the windowed attention path differs, hence the tolerance."""
    inputs = processor(images(), return_tensors="pt")
    expected, out = forward(vanilla, inputs), forward(load(upernet_repo, **IDENTITY), inputs)
    torch.testing.assert_close(out.logits, expected.logits, rtol=1e-5, atol=1e-5)


def test_clustered_outputs_keep_the_vanilla_shapes(upernet_repo, vanilla, processor):
    inputs = processor(images(), return_tensors="pt")
    expected, out = forward(vanilla, inputs), forward(load(upernet_repo, **SETTINGS), inputs)
    assert out.logits.shape == expected.logits.shape == (2, len(LABELS), 128, 192)
    assert [h.shape for h in out.hidden_states] == [h.shape for h in expected.hidden_states]
    assert torch.isfinite(out.logits).all()
    assert not torch.allclose(out.logits, expected.logits, atol=1e-3)


def test_training_loss_with_the_auxiliary_head(upernet_repo, processor):
    """The UperNet loss (main + auxiliary head) runs and back-propagates through the expedited backbone."""
    model = load(upernet_repo, **SETTINGS).train()
    inputs = processor(images(), return_tensors="pt")
    labels = torch.randint(0, len(LABELS), (2, 128, 192))
    loss = model(**inputs, labels=labels).loss
    loss.backward()
    assert torch.isfinite(loss) and next(model.backbone.parameters()).grad is not None


def test_image_segmentation_pipeline_on_photographs(upernet_repo, processor):
    segmenter = pipeline("image-segmentation", model=load(upernet_repo, **SETTINGS), image_processor=processor)
    for picture in images():
        segments = segmenter(picture)
        assert segments and all(segment["label"] in LABELS.values() for segment in segments)
        assert all(segment["mask"].size == picture.size for segment in segments)
        covered = sum(np.asarray(segment["mask"]) > 0 for segment in segments)
        assert (covered == 1).all()  # semantic segments tile the image


def test_save_writes_the_hub_layout_and_reloads_expedited(upernet_repo, processor, tmp_path):
    model = load(upernet_repo, **SETTINGS)
    model.save_pretrained(tmp_path)
    assert set(load_file(tmp_path / "model.safetensors")) == set(load_file(upernet_repo / "model.safetensors"))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "expedited_upernet"
    assert saved["backbone_config"]["model_type"] == "expedited_swin"
    assert saved["backbone_config"]["clustered_window_size"] == 3
    reloaded = hf_expedite.AutoModelForSemanticSegmentation.from_pretrained(str(tmp_path)).eval()
    assert type(reloaded) is ExpeditedUperNetForSemanticSegmentation
    inputs = processor(images()[:1], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, model(**inputs).logits)
    vanilla = UperNetForSemanticSegmentation.from_pretrained(tmp_path, output_loading_info=True)[1]
    assert not vanilla["missing_keys"] and not vanilla["unexpected_keys"]  # the vanilla class reads the weights


def test_config_conversion_and_unsupported_backbones():
    vanilla = UperNetConfig(backbone_config=SwinConfig(**BACKBONE), **HEAD)
    config = expedite_upernet_config(vanilla, clustering_location=3, clustered_window_size=2)
    assert type(config) is ExpeditedUperNetConfig and type(config.backbone_config) is ExpeditedSwinConfig
    assert (config.backbone_config.clustering_location, config.backbone_config.num_clusters) == (3, [2, 2])
    assert config.backbone_config.out_features == BACKBONE["out_features"]
    again = expedite_upernet_config(config, expedite=False)  # an expedited config keeps its other settings
    assert not again.backbone_config.expedite and again.backbone_config.clustering_location == 3
    default = ExpeditedUperNetConfig()  # a Swin-T-like default backbone: depths [2, 2, 6, 2], window 7
    assert default.backbone_config.out_features == ["stage1", "stage2", "stage3", "stage4"]
    assert (default.backbone_config.clustering_location, default.backbone_config.clustered_window_size) == (6, 5)
    with pytest.raises(ValueError, match="upernet with a Swin backbone.*'convnext'"):
        expedite_upernet_config(UperNetConfig(backbone_config=ConvNextConfig()))
    with pytest.raises(ValueError, match="UperNet config"):
        expedite_upernet_config(SwinConfig())
    with pytest.raises(ValueError, match="clustered_window_size"):
        expedite_upernet_config(vanilla, clustered_window_size=6)
