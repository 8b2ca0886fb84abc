"""The user-facing switch: shadow Auto classes, ``expedite=...`` forms, kwargs routing, patching, ``expedite(model)``.

Tiny random-init models saved with ``save_pretrained`` stand in for hub repositories; inputs are real photographs.
"""

import inspect

import pytest
import torch
import transformers
from PIL import Image
from skimage import data as photos
from transformers import ConvNextConfig, ConvNextModel, ViTConfig, ViTForImageClassification, ViTImageProcessorPil

import hf_expedite
from hf_expedite import ExpeditedViTConfig, ExpeditedViTForImageClassification, ExpeditedViTModel, get_preset
from hf_expedite.auto import SHADOWED, TRANSFORMERS_AUTO_CLASSES

TINY = dict(
    hidden_size=32, num_hidden_layers=6, num_attention_heads=4, intermediate_size=64, image_size=64, patch_size=8,
    num_labels=5,
)  # fmt: skip
SETTINGS = {"clustering_location": 2, "num_clusters": [4, 4], "reconstruction_k": 4, "clustering_temperature": 2.0}


@pytest.fixture(scope="module")
def vit_repo(tmp_path_factory):
    """A tiny ViTForImageClassification with its image processor, in the hub layout."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vit")
    ViTForImageClassification(ViTConfig(**TINY)).save_pretrained(path)
    ViTImageProcessorPil(size={"height": 64, "width": 64}).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def expedited_repo(vit_repo, tmp_path_factory):
    """The same weights saved by the expedited class with SETTINGS: an already expedited repository."""
    path = tmp_path_factory.mktemp("vit_expedited")
    hf_expedite.AutoModelForImageClassification.from_pretrained(vit_repo, expedite=SETTINGS).save_pretrained(path)
    ViTImageProcessorPil(size={"height": 64, "width": 64}).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pixels():
    processor = ViTImageProcessorPil(size={"height": 64, "width": 64})
    return processor([photos.astronaut(), photos.coffee()], return_tensors="pt")["pixel_values"]


@pytest.fixture(scope="module")
def vanilla(vit_repo):
    return ViTForImageClassification.from_pretrained(vit_repo).eval()


def logits(model, pixels):
    with torch.no_grad():
        return model.eval()(pixels.to(model.dtype)).logits


def settings_of(config):
    return hf_expedite.expedite_settings(config)


def test_shadow_classes_are_the_transformers_classes_plus_the_switch():
    for name in SHADOWED:
        shadow, parent = getattr(hf_expedite, name), getattr(transformers, name)
        assert shadow.__name__ == name and issubclass(shadow, parent) and shadow is not parent
        assert "expedite" in inspect.signature(shadow.from_pretrained).parameters
        assert "expedite" in inspect.signature(shadow.from_config).parameters


def test_expedite_false_is_the_plain_transformers_model(vit_repo, vanilla, pixels):
    model = hf_expedite.AutoModelForImageClassification.from_pretrained(vit_repo, expedite=False)
    assert type(model) is ViTForImageClassification and type(model.config) is ViTConfig
    assert torch.equal(logits(model, pixels), logits(vanilla, pixels))
    assert type(hf_expedite.AutoModel.from_pretrained(vit_repo, expedite=False)) is transformers.ViTModel


def test_no_switch_loads_as_saved(vit_repo, expedited_repo):
    assert type(hf_expedite.AutoModelForImageClassification.from_pretrained(vit_repo)) is ViTForImageClassification
    model = hf_expedite.AutoModelForImageClassification.from_pretrained(expedited_repo)
    assert type(model) is ExpeditedViTForImageClassification
    assert {k: settings_of(model.config)[k] for k in SETTINGS} == SETTINGS


PARTIAL = {"clustering_location": 2, "num_clusters": [4, 4]}


@pytest.mark.parametrize(
    "form, requested",
    [
        ({"expedite": True}, {}),
        ({"expedite": "default"}, {}),
        ({"expedite": SETTINGS}, SETTINGS),
        (SETTINGS, SETTINGS),  # individual kwargs imply expedite=True
        ({"expedite": PARTIAL, "reconstruction_k": 4}, {**PARTIAL, "reconstruction_k": 4}),
        ({"expedite": "default", **SETTINGS}, SETTINGS),
        ({"expedite": {"clustering_location": 4, "cluster_ratio": 0.5, "reconstruction_k": 3}, **SETTINGS}, SETTINGS),
    ],
    ids=["true", "preset", "dict", "kwargs", "dict+kwargs", "preset+kwargs", "kwargs-over-dict"],
)
@pytest.mark.parametrize("auto", ["AutoModelForImageClassification", "AutoModel"])
def test_expedite_forms(vit_repo, vanilla, pixels, form, requested, auto):
    model = getattr(hf_expedite, auto).from_pretrained(vit_repo, **form)
    expected_cls = ExpeditedViTForImageClassification if auto != "AutoModel" else ExpeditedViTModel
    assert type(model) is expected_cls and model.config.expedite
    default = get_preset("vit", "default").resolve(ViTConfig(**TINY))
    if "num_clusters" in requested:
        default["cluster_ratio"] = None
    settings = settings_of(model.config)
    assert settings == {**settings, **default, **requested}  # the preset, then the requested settings on top
    if auto == "AutoModel":
        return
    out = logits(model, pixels)
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    assert not torch.equal(out, logits(vanilla, pixels))  # clustering really runs
    off = hf_expedite.AutoModelForImageClassification.from_pretrained(
        vit_repo, expedite={**requested, "expedite": False}
    )
    assert type(off) is ExpeditedViTForImageClassification and torch.equal(logits(off, pixels), logits(vanilla, pixels))


def test_named_preset_then_overrides(tmp_path):
    deeper = ViTConfig(**{**TINY, "num_hidden_layers": 12, "hidden_size": 16})
    ViTForImageClassification(deeper).save_pretrained(tmp_path)
    model = hf_expedite.AutoModelForImageClassification.from_pretrained(tmp_path, expedite="segmenter-ade20k")
    assert settings_of(model.config) == {**settings_of(model.config), **get_preset("vit", "segmenter-ade20k").settings}
    model = hf_expedite.AutoModel.from_pretrained(tmp_path, expedite="segmenter-ade20k", clustering_location=11)
    assert model.config.clustering_location == 11 and model.config.num_clusters == [28, 28]
    assert model.config.reconstruction_normalization == "l2"  # from the preset, not the field default


def test_kwargs_pass_through_like_transformers(vit_repo, tmp_path):
    kwargs = dict(dtype=torch.float64, attn_implementation="eager", layer_norm_eps=1e-3, local_files_only=True)
    reference = transformers.AutoModelForImageClassification.from_pretrained(vit_repo, **kwargs)
    model, info = hf_expedite.AutoModelForImageClassification.from_pretrained(
        vit_repo, expedite=SETTINGS, output_loading_info=True, **kwargs
    )
    assert type(model) is ExpeditedViTForImageClassification
    assert info["missing_keys"] == info["unexpected_keys"] == set() and not info["mismatched_keys"]
    assert model.dtype == reference.dtype == torch.float64
    assert model.config._attn_implementation == reference.config._attn_implementation == "eager"
    assert model.config.layer_norm_eps == reference.config.layer_norm_eps == 1e-3
    # hub kwargs reach both the config and the weights: a repository stored in a subfolder
    (tmp_path / "sub").mkdir()
    for name in ("config.json", "model.safetensors"):
        (tmp_path / "sub" / name).write_bytes((vit_repo / name).read_bytes())
    model = hf_expedite.AutoModel.from_pretrained(tmp_path, subfolder="sub", clustering_location=3)
    assert type(model) is ExpeditedViTModel and model.config.clustering_location == 3
    # num_labels is a config kwarg: the head is re-sized exactly as transformers does it
    model = hf_expedite.AutoModelForImageClassification.from_pretrained(
        vit_repo, expedite=True, num_labels=2, ignore_mismatched_sizes=True
    )
    assert model.classifier.out_features == 2


def test_already_expedited_repository(expedited_repo, vanilla, pixels):
    saved = hf_expedite.AutoModelForImageClassification.from_pretrained(expedited_repo)
    through_transformers = transformers.AutoModelForImageClassification.from_pretrained(expedited_repo)
    assert type(through_transformers) is ExpeditedViTForImageClassification
    assert torch.equal(logits(saved, pixels), logits(through_transformers, pixels))
    # True keeps the saved settings; kwargs apply on top of them
    kept = hf_expedite.AutoModelForImageClassification.from_pretrained(expedited_repo, expedite=True)
    assert settings_of(kept.config) == settings_of(saved.config)
    moved = hf_expedite.AutoModelForImageClassification.from_pretrained(expedited_repo, clustering_location=3)
    assert moved.config.clustering_location == 3 and moved.config.num_clusters == [4, 4]
    # a preset replaces every saved setting
    preset = hf_expedite.AutoModelForImageClassification.from_pretrained(expedited_repo, expedite="default")
    assert settings_of(preset.config) == settings_of(hf_expedite.expedite_config(ViTConfig(**TINY), True))
    # False gives the vanilla class, config and outputs
    plain = hf_expedite.AutoModelForImageClassification.from_pretrained(expedited_repo, expedite=False)
    assert type(plain) is ViTForImageClassification and type(plain.config) is ViTConfig
    assert plain.config.architectures == ["ViTForImageClassification"]
    assert not any(hasattr(plain.config, name) for name in SETTINGS)
    assert torch.equal(logits(plain, pixels), logits(vanilla, pixels))


def test_from_config(vit_repo, expedited_repo):
    config = transformers.AutoConfig.from_pretrained(vit_repo)
    model = hf_expedite.AutoModelForImageClassification.from_config(config, expedite=True, attn_implementation="eager")
    assert type(model) is ExpeditedViTForImageClassification and model.config._attn_implementation == "eager"
    model = hf_expedite.AutoModel.from_config(config, clustering_location=4)
    assert type(model) is ExpeditedViTModel and model.config.clustering_location == 4
    assert type(hf_expedite.AutoModel.from_config(config)) is transformers.ViTModel
    expedited_config = transformers.AutoConfig.from_pretrained(expedited_repo)
    assert type(hf_expedite.AutoModel.from_config(expedited_config)) is ExpeditedViTModel
    assert type(hf_expedite.AutoModel.from_config(expedited_config, expedite=False)) is transformers.ViTModel


def test_expedite_an_already_loaded_model_shares_its_weights(vit_repo, pixels):
    model = ViTForImageClassification.from_pretrained(vit_repo, dtype=torch.float64).train()
    model.vit.layernorm.eval()
    fast = hf_expedite.expedite(model, SETTINGS)
    assert type(fast) is ExpeditedViTForImageClassification
    assert {k: settings_of(fast.config)[k] for k in SETTINGS} == SETTINGS
    fast_state, state = fast.state_dict(), model.state_dict()
    assert fast_state.keys() == state.keys()
    assert all(fast_state[k].data_ptr() == state[k].data_ptr() for k in state)
    assert fast.dtype == torch.float64 and fast.device == model.device
    assert fast.training and not fast.vit.layernorm.training
    assert fast.config._attn_implementation == model.config._attn_implementation
    reference = hf_expedite.AutoModelForImageClassification.from_pretrained(
        vit_repo, expedite=SETTINGS, dtype=torch.float64
    )
    assert torch.equal(logits(fast, pixels), logits(reference, pixels))
    off = hf_expedite.expedite(model, {"expedite": False})
    assert torch.equal(logits(off, pixels), logits(model, pixels))
    back = hf_expedite.expedite(fast, False)
    assert type(back) is ViTForImageClassification and type(back.config) is ViTConfig
    assert all(back.state_dict()[k].data_ptr() == state[k].data_ptr() for k in state)
    assert torch.equal(logits(back, pixels), logits(model, pixels))
    base = hf_expedite.expedite(model.vit, True)
    assert type(base) is ExpeditedViTModel and base.embeddings.cls_token is model.vit.embeddings.cls_token
    assert hf_expedite.expedite(model) is not model and hf_expedite.expedite(model, None) is model


@pytest.fixture(scope="module")
def corrupt_repo(vit_repo, tmp_path_factory):
    """A valid config with unreadable weights: any error raised here was raised before weights were read."""
    path = tmp_path_factory.mktemp("corrupt")
    (path / "config.json").write_text((vit_repo / "config.json").read_text())
    (path / "model.safetensors").write_bytes(b"not a safetensors file")
    return path


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"clustering_locaton": 2}, r"Unknown Expedite setting 'clustering_locaton' \(did you mean 'clustering_loc"),
        ({"expedite": {"num_cluster": [4, 4]}}, r"Unknown Expedite setting 'num_cluster'.*Valid settings: expedite, "),
        ({"expedite": "segmenter-ade2k"}, r"Unknown Expedite preset 'segmenter-ade2k'.*vit: default, segmenter-ade20k"),
        ({"num_clusters": [4, 4], "cluster_ratio": 0.5}, r"Set either `num_clusters`.*or `cluster_ratio`"),
        ({"expedite": False, "clustering_location": 2}, r"expedite=False loads the vanilla model"),
        ({"expedite": {"num_clusters": [4, 4], "cluster_ratio": 0.5}}, r"Set either `num_clusters`"),
        ({"clustered_window_size": 4}, r"only apply to windowed \(Swin-style\) models"),
        ({"clustering_location": 9}, r"`clustering_location=9`.*0\.\.5"),
        ({"expedite": 1}, r"must be a bool, a preset name or a dict"),
    ],
)
def test_bad_requests_fail_before_any_weight_is_read(corrupt_repo, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        hf_expedite.AutoModelForImageClassification.from_pretrained(corrupt_repo, **kwargs)
    with pytest.raises(Exception, match="deserializing header"):  # the same repository fails once weights are read
        hf_expedite.AutoModelForImageClassification.from_pretrained(corrupt_repo, expedite=True)


def test_unsupported_architecture_names_the_supported_ones(tmp_path):
    ConvNextModel(ConvNextConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 8, 8, 8])).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"unreadable")  # the error must come before the weights
    with pytest.raises(ValueError, match=r"does not support model type 'convnext'.*Supported model types: .*vit"):
        hf_expedite.AutoModel.from_pretrained(tmp_path, expedite=True)
    assert "vit" in hf_expedite.supported_model_types()


def _patched_state():
    names = ("from_pretrained", "from_config")
    return {(cls, name): cls.__dict__.get(name) for cls in TRANSFORMERS_AUTO_CLASSES for name in names}


def test_patch_transformers_and_pipelines(vit_repo, expedited_repo, vanilla, pixels):
    original = _patched_state()
    assert not any(hasattr(getattr(cls, name), "transformers_original") for cls, name in original)  # import: no patch
    with pytest.raises(TypeError):
        transformers.AutoModelForImageClassification.from_pretrained(vit_repo, expedite=True)
    hf_expedite.patch_transformers()
    try:
        hf_expedite.patch_transformers()  # idempotent
        model = transformers.AutoModelForImageClassification.from_pretrained(vit_repo, expedite=SETTINGS)
        assert type(model) is ExpeditedViTForImageClassification
        assert torch.equal(logits(model, pixels), logits(hf_expedite.expedite(vanilla, SETTINGS), pixels))
        assert type(transformers.AutoModel.from_pretrained(vit_repo, clustering_location=2)) is ExpeditedViTModel
        assert type(transformers.AutoModelForImageClassification.from_pretrained(vit_repo)) is ViTForImageClassification
        config = transformers.AutoConfig.from_pretrained(vit_repo)
        assert type(transformers.AutoModel.from_config(config, expedite=True)) is ExpeditedViTModel
        classifier = transformers.pipeline("image-classification", model=str(vit_repo), model_kwargs={"expedite": True})
        assert type(classifier.model) is ExpeditedViTForImageClassification
        predictions = classifier(photos.astronaut(), top_k=5)
        assert len(predictions) == 5 and abs(sum(p["score"] for p in predictions) - 1) < 1e-4
        plain = transformers.pipeline(
            "image-classification", model=str(expedited_repo), model_kwargs={"expedite": False}
        )
        assert type(plain.model) is ViTForImageClassification
    finally:
        hf_expedite.unpatch_transformers()
    assert _patched_state() == original and all(_patched_state()[k] is original[k] for k in original)
    assert "from_pretrained" not in transformers.AutoBackbone.__dict__  # inherited before, removed again
    with hf_expedite.patched_transformers():
        assert type(transformers.AutoModel.from_pretrained(vit_repo, expedite=True)) is ExpeditedViTModel
    assert all(_patched_state()[k] is original[k] for k in original)


def test_shadow_classes_work_while_transformers_is_patched(vit_repo):
    with hf_expedite.patched_transformers():
        assert type(hf_expedite.AutoModel.from_pretrained(vit_repo, expedite=True)) is ExpeditedViTModel
        assert type(hf_expedite.AutoModel.from_pretrained(vit_repo)) is transformers.ViTModel


def test_registration_is_idempotent():
    from hf_expedite.registry import register_config, register_model

    before = transformers.AutoModelForImageClassification._model_mapping[ExpeditedViTConfig]
    register_config(ExpeditedViTConfig)
    register_model(transformers.AutoModelForImageClassification, ExpeditedViTConfig, ExpeditedViTForImageClassification)
    assert transformers.AutoModelForImageClassification._model_mapping[ExpeditedViTConfig] is before
    assert transformers.AutoConfig.for_model("expedited_vit", **TINY).model_type == "expedited_vit"


# The other wired architectures, each through the shadow class of its task; tiny configs in the hub layout.
def _dinov2(**extra):
    return transformers.Dinov2Config(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=64, patch_size=8,
        **extra,
    )  # fmt: skip


def _swin(config_class=transformers.SwinConfig, **extra):
    sizes = dict(embed_dim=16, depths=[1, 1, 4, 1], num_heads=[1, 1, 2, 2], window_size=4, image_size=64)
    return config_class(**{**sizes, **extra})


STAGES = ["stage1", "stage2", "stage3", "stage4"]
WINDOWED = {"clustering_location": 3, "clustered_window_size": 2, "reconstruction_k": 4}
ARCHITECTURES = {
    "dpt-depth": (
        lambda: transformers.DPTForDepthEstimation(transformers.DPTConfig(**DPT)),
        "AutoModelForDepthEstimation",
        {"clustering_location": 2, "num_clusters": [4, 4], "reconstruction_k": 4},
    ),
    "dpt-segmentation": (
        lambda: transformers.DPTForSemanticSegmentation(transformers.DPTConfig(**DPT, num_labels=3)),
        "AutoModelForSemanticSegmentation",
        {"clustering_location": 2, "num_clusters": [4, 4], "reconstruction_k": 4},
    ),
    "depth-anything": (
        lambda: transformers.DepthAnythingForDepthEstimation(
            transformers.DepthAnythingConfig(
                backbone_config=_dinov2(out_indices=[1, 2, 3, 4], reshape_hidden_states=False),
                reassemble_hidden_size=32, patch_size=8, neck_hidden_sizes=[8, 8, 8, 8], fusion_hidden_size=8,
                head_hidden_size=8,
            )  # fmt: skip
        ),
        "AutoModelForDepthEstimation",
        {"clustering_location": 2, "num_clusters": [4, 4], "reconstruction_k": 4},
    ),
    "dpt-swinv2": (
        lambda: transformers.DPTForDepthEstimation(
            transformers.DPTConfig(
                backbone_config=_swin(transformers.Swinv2Config, patch_size=2, out_features=STAGES),
                neck_hidden_sizes=[16, 32, 64, 128],
                fusion_hidden_size=16, head_hidden_size=8,
            )  # fmt: skip
        ),
        "AutoModelForDepthEstimation",
        {"clustering_location": 2, "clustered_window_size": 2, "reconstruction_k": 3},
    ),
    "mask2former": (
        lambda: transformers.Mask2FormerForUniversalSegmentation(
            transformers.Mask2FormerConfig(
                backbone_config=_swin(out_features=STAGES), hidden_dim=32, mask_feature_size=32, feature_size=32, encoder_layers=1, decoder_layers=2, num_queries=5,
                encoder_feedforward_dim=32, dim_feedforward=32, num_attention_heads=2, num_labels=3,
            )  # fmt: skip
        ),
        "AutoModelForUniversalSegmentation",
        WINDOWED,
    ),
    "swinv2": (lambda: transformers.Swinv2Model(_swin(transformers.Swinv2Config)), "AutoModel", WINDOWED),
    "upernet-swin": (
        lambda: transformers.UperNetForSemanticSegmentation(
            transformers.UperNetConfig(backbone_config=_swin(out_features=STAGES), hidden_size=16,
                                       auxiliary_in_channels=64, num_labels=3)  # fmt: skip
        ),
        "AutoModelForSemanticSegmentation",
        WINDOWED,
    ),
    **{
        name: (
            lambda config_class=config_class, model_class=model_class: model_class(
                config_class(**{k: v for k, v in DPT.items() if k in EOMT_SIZES}, num_blocks=1, num_queries=4,
                             num_register_tokens=2, num_labels=3)  # fmt: skip
            ),
            "AutoModelForUniversalSegmentation",
            {"clustering_location": 1, "num_clusters": [4, 4], "reconstruction_k": 4},
        )
        for name, config_class, model_class in (
            ("eomt", transformers.EomtConfig, transformers.EomtForUniversalSegmentation),
            ("eomt-dinov3", transformers.EomtDinov3Config, transformers.EomtDinov3ForUniversalSegmentation),
        )
    },
    "dinov3": (
        lambda: transformers.DINOv3ViTModel(
            transformers.DINOv3ViTConfig(**{k: v for k, v in DPT.items() if k in EOMT_SIZES}, num_register_tokens=2)
        ),
        "AutoModel",
        {"clustering_location": 2, "num_clusters": [4, 4], "reconstruction_k": 4},
    ),
    **{
        name: (
            lambda config_class=config_class, vision_class=vision_class, model_class=model_class, extra=extra: (
                model_class(
                    config_class(
                        vision_config=vision_class(
                            hidden_size=32, num_hidden_layers=3, num_attention_heads=2, image_size=64, patch_size=8,
                            window_size=3, global_attn_indexes=[1], output_channels=16, num_pos_feats=8,
                            initializer_range=0.02,
                        ),
                        prompt_encoder_config={"hidden_size": 16, "image_size": 64, "patch_size": 8,
                                               "mask_input_channels": 4},
                        mask_decoder_config={"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                                             "mlp_dim": 32, "iou_head_hidden_dim": 16, **extra},
                    )
                )
            ),  # fmt: skip
            "AutoModelForMaskGeneration",
            {"clustering_location": 1, "clustered_window_size": 2, "reconstruction_k": 3},
        )
        for name, config_class, vision_class, model_class, extra in (
            ("sam", transformers.SamConfig, transformers.SamVisionConfig, transformers.SamModel, {}),
            ("sam-hq", transformers.SamHQConfig, transformers.SamHQVisionConfig, transformers.SamHQModel,
             {"vit_dim": 32}),
        )  # fmt: skip
    },
}
EOMT_SIZES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "image_size", "patch_size")
DPT = dict(
    hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=64, patch_size=8,
    backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 8, 8, 8], fusion_hidden_size=8, head_hidden_size=8,
)  # fmt: skip


def is_expedited_model(model):
    return any(type(module).__module__.startswith("hf_expedite.") for module in model.modules())


def first_output(model, pixels):
    with torch.no_grad():
        return model.eval()(pixels)[0]


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def architecture(request, tmp_path_factory):
    build, auto, settings = ARCHITECTURES[request.param]
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp(request.param)
    build().save_pretrained(path)
    return path, getattr(hf_expedite, auto), settings


def test_every_wired_architecture_through_its_shadow_class(architecture, pixels, tmp_path):
    path, auto, settings = architecture
    x = pixels[:1]
    vanilla = auto.from_pretrained(path, expedite=False)
    assert not is_expedited_model(vanilla) and not hf_expedite.conversion.is_expedited(vanilla.config)
    reference = first_output(vanilla, x)
    default = auto.from_pretrained(path, expedite=True)
    assert is_expedited_model(default) and hf_expedite.conversion.settings_holder(default.config).expedite
    model = auto.from_pretrained(path, **settings)  # individual setting kwargs
    saved = hf_expedite.expedite_settings(hf_expedite.conversion.settings_holder(model.config))
    assert is_expedited_model(model) and {name: saved[name] for name in settings} == settings
    out = first_output(model, x)
    assert out.shape == reference.shape and torch.isfinite(out).all() and not torch.equal(out, reference)
    off = auto.from_pretrained(path, expedite={**settings, "expedite": False})
    assert is_expedited_model(off) and torch.equal(first_output(off, x), reference)  # bit-identical when off
    # round trip: an expedited folder loads expedited without a flag, and as the vanilla model with expedite=False
    model.save_pretrained(tmp_path)
    again = auto.from_pretrained(tmp_path)
    assert is_expedited_model(again) and torch.equal(first_output(again, x), out)
    plain = auto.from_pretrained(tmp_path, expedite=False)
    assert type(plain) is type(vanilla) and not hf_expedite.conversion.is_expedited(plain.config)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), vanilla.state_dict().values()))
    assert torch.equal(first_output(hf_expedite.expedite(vanilla, settings), x), out)


def test_backbones_from_config():
    # (transformers 5.24's AutoBackbone.from_pretrained rejects local folders: it asks the Hub whether the repo exists)
    config = _dinov2(out_indices=[2, 4])
    backbone = hf_expedite.AutoBackbone.from_config(config, expedite=True, clustering_location=1)
    assert type(backbone).__name__ == "ExpeditedDinov2Backbone" and backbone.config.clustering_location == 1
    assert type(hf_expedite.AutoBackbone.from_config(config)) is transformers.Dinov2Backbone
    config = _swin(out_features=["stage2", "stage3"])
    backbone = hf_expedite.AutoBackbone.from_config(config, expedite="coco-panoptic", **WINDOWED)
    assert type(backbone).__name__ == "ExpeditedSwinBackbone" and backbone.config.clustered_window_size == 2
    assert backbone.config.official_shift_mask and backbone.config.clustering_iterations == 5  # from the preset
    backbone = hf_expedite.AutoBackbone.from_config(_swin(transformers.Swinv2Config), expedite=True)
    assert type(backbone).__name__ == "ExpeditedSwinv2Backbone"


def test_depth_estimation_pipeline_with_the_patch(tmp_path):
    torch.manual_seed(0)
    transformers.DPTForDepthEstimation(transformers.DPTConfig(**DPT)).save_pretrained(tmp_path)
    transformers.DPTImageProcessorPil(size={"height": 64, "width": 64}).save_pretrained(tmp_path)
    with hf_expedite.patched_transformers():
        depth = transformers.pipeline("depth-estimation", model=str(tmp_path), model_kwargs={"expedite": True})
        assert type(depth.model).__name__ == "ExpeditedDPTForDepthEstimation"
        result = depth(Image.fromarray(photos.astronaut()))
    assert result["predicted_depth"].ndim == 2 and result["depth"].size == (512, 512)
