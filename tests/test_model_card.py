"""Generated model cards: valid YAML metadata, inherited license, settings and results tables, usage, citation."""

import json
import re

import huggingface_hub
import pytest
import yaml
from huggingface_hub import ModelCard
from transformers import ViTConfig

import hf_expedite
from hf_expedite.model_card import CITATION, base_model_metadata, load_results, render_model_card

TINY = dict(
    hidden_size=32, num_hidden_layers=6, num_attention_heads=4, intermediate_size=64, image_size=64, patch_size=8
)
RESULT = {
    "title": "Tiny ImageNet val",
    "metadata": {"device": "CPU", "batch size": 1},
    "vanilla": {"metrics": {"accuracy": 0.80, "loss": 1.5}, "images_per_second": 20.0, "latency_ms": 50.0},
    "expedited": {"metrics": {"accuracy": 0.78, "loss": None}, "images_per_second": 30.0, "latency_ms": 33.3},
    "ratios": {"accuracy": 0.975},  # extra keys written by the evaluation scripts are ignored
}


@pytest.fixture(scope="module")
def config():
    vanilla = ViTConfig(**TINY, architectures=["ViTForImageClassification"])
    return hf_expedite.expedite_config(vanilla, clustering_location=2, num_clusters=[4, 4], reconstruction_k=4)


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def metadata_of(card: str) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", card, flags=re.DOTALL)
    assert match, "the card must start with a YAML block"
    return yaml.safe_load(match.group(1))


def test_card_metadata_is_valid_yaml(config):
    card = render_model_card(
        config, base_model="google/vit-base-patch16-224", repo_id="me/vit-expedited", base_metadata={"license": "mit"}
    )
    metadata = metadata_of(card)
    assert metadata == {
        "base_model": "google/vit-base-patch16-224",
        "library_name": "transformers",
        "license": "mit",
        "pipeline_tag": "image-classification",
        "tags": ["expedite", "hf-expedite", "token-clustering", "vision", "vit"],
    }
    assert ModelCard(card).data.to_dict() == metadata  # the Hub's own parser agrees
    assert "$" not in card.replace("$$", "")  # every template field was filled


def test_license_is_inherited_from_a_local_base_card_and_omitted_offline(config, tmp_path, offline):
    (tmp_path / "README.md").write_text("---\nlicense: other\nlicense_name: vit-license\nlicense_link: LICENSE\n---\n")
    assert base_model_metadata(str(tmp_path))["license_name"] == "vit-license"
    metadata = metadata_of(render_model_card(config, base_model=str(tmp_path), repo_id="me/vit-expedited"))
    assert metadata["license"] == "other" and metadata["license_link"] == "LICENSE"
    assert "base_model" not in metadata  # a local folder is not a Hub id
    assert base_model_metadata("google/vit-base-patch16-224") == {}  # the Hub is unreachable: nothing inherited
    metadata = metadata_of(render_model_card(config, base_model="google/vit-base-patch16-224", repo_id="me/x"))
    assert "license" not in metadata and metadata["base_model"] == "google/vit-base-patch16-224"


def test_settings_table_usage_and_citation(config):
    card = render_model_card(
        config, base_model="google/vit-base-patch16-224", repo_id="me/vit-expedited", base_metadata={}
    )
    for name, value in hf_expedite.expedite_settings(config).items():
        assert f"| `{name}` | `{json.dumps(value)}` |" in card
    assert 'AutoModelForImageClassification.from_pretrained("me/vit-expedited")' in card
    assert 'from_pretrained("me/vit-expedited", expedite=False)' in card
    assert 'pipeline("image-classification", model="me/vit-expedited")' in card
    assert CITATION in card and "2210.01035" in CITATION and "Liang, Weicong" in CITATION
    assert "No evaluation results" in card and "trust_remote_code" not in card


def test_results_table_from_json(config, tmp_path):
    path = tmp_path / "report.json"
    path.write_text(json.dumps(RESULT))
    second = {"vanilla": {"images_per_second": 4.0}, "expedited": {"images_per_second": 6.0}}
    card = render_model_card(
        config, base_model="google/vit-base-patch16-224", repo_id="me/x", base_metadata={}, results=[path, second]
    )
    assert "### Tiny ImageNet val" in card and "- device: CPU" in card
    assert "| accuracy | 0.8 | 0.78 | 0.9750 |" in card
    assert "| loss | 1.5 | n/a | n/a |" in card
    assert "| images / s | 20 | 30 | 1.5000 |" in card and "| latency (ms) | 50 | 33.3 | 0.6660 |" in card
    assert card.count("measured speed-up: **1.50x**, faster") == 2
    assert load_results(str(path)) == [RESULT]


def test_card_of_a_local_base_reports_what_was_measured(config, tmp_path):
    """A local base is named by its folder (never an absolute path); ratios near 1 keep their digits; a slower
    measured run is not headlined as a speed-up."""
    base = tmp_path / "my-model"
    base.mkdir()
    result = {"vanilla": {"metrics": {"rmse": 0.3571}, "latency_ms": 100.0},
              "expedited": {"metrics": {"rmse": 0.3573}, "latency_ms": 105.0}}  # fmt: skip
    card = render_model_card(config, base_model=str(base), repo_id="me/x", base_metadata={}, results=result)
    assert str(tmp_path) not in card and "`my-model`" in card
    assert "| rmse | 0.3571 | 0.3573 | 1.0006 |" in card
    assert "measured speed-up: **0.95x**, not faster on the hardware measured" in card


def test_bad_results_and_vanilla_configs_are_rejected(config):
    with pytest.raises(ValueError, match="needs 'vanilla' and 'expedited'"):
        load_results({"metrics": {"accuracy": 1.0}})
    with pytest.raises(ValueError, match="not an expedited config"):
        render_model_card(ViTConfig(**TINY), base_model="b", repo_id="me/x", base_metadata={})


def test_depth_models_get_their_task_and_backbone_settings():
    from transformers import DepthAnythingConfig, Dinov2Config, DPTConfig

    dpt = DPTConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=64, patch_size=8,
        architectures=["DPTForDepthEstimation"],
    )  # fmt: skip
    config = hf_expedite.expedite_config(dpt)
    card = render_model_card(config, base_model="Intel/dpt-large", repo_id="me/x", base_metadata={})
    assert metadata_of(card)["pipeline_tag"] == "depth-estimation" and "dpt" in metadata_of(card)["tags"]
    assert "AutoModelForDepthEstimation.from_pretrained" in card
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64)
    depth_anything = DepthAnythingConfig(backbone_config=backbone, architectures=["DepthAnythingForDepthEstimation"])
    config = hf_expedite.expedite_config(depth_anything, clustering_location=1)
    card = render_model_card(config, base_model="depth-anything/small", repo_id="me/x", base_metadata={})
    assert "| `clustering_location` | `1` |" in card and metadata_of(card)["pipeline_tag"] == "depth-estimation"


def test_windowed_segmentation_models():
    from transformers import Mask2FormerConfig, SwinConfig

    swin = SwinConfig(embed_dim=16, depths=[1, 1, 4, 1], num_heads=[1, 1, 2, 2], window_size=4, image_size=64)
    mask2former = Mask2FormerConfig(backbone_config=swin, architectures=["Mask2FormerForUniversalSegmentation"])
    config = hf_expedite.expedite_config(mask2former, clustered_window_size=2, reconstruction_k=4)
    card = render_model_card(config, base_model="facebook/mask2former", repo_id="me/x", base_metadata={})
    assert metadata_of(card)["pipeline_tag"] == "image-segmentation" and "mask2former" in metadata_of(card)["tags"]
    assert "AutoModelForUniversalSegmentation.from_pretrained" in card and "end of the\nclustered stage" in card
    assert "| `clustered_window_size` | `2` |" in card and "| `official_shift_mask` | `false` |" in card
