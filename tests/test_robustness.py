"""Hostile inputs and misuse: image modes, unreadable files, bad counts, settings changed after construction, things
that are not transformers models, pickling, scripts that must refuse before writing anything."""

from __future__ import annotations

import copy
import importlib.util
import io
import json
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from transformers import ViTConfig, ViTModel

import hf_expedite
from hf_expedite.evaluation.datasets_io import ImageBatches, to_rgb

from test_fidelity import tiny_dpt_depth

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"clustering_location": 1, "num_clusters": [4, 4], "reconstruction_k": 4}


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"robustness_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sixteen_bit_gradient() -> PIL.Image.Image:
    values = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    return PIL.Image.fromarray(values)  # uint16: mode I;16


def _png(image: PIL.Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_sixteen_bit_images_are_scaled_not_clipped():
    image = _sixteen_bit_gradient()
    assert np.mean(np.asarray(image.convert("RGB")) == 255) > 0.99  # what convert("RGB") alone does
    rgb = np.asarray(to_rgb(image))
    assert rgb.shape == (48, 64, 3) and rgb.min() == 0 and rgb.max() == 255
    assert abs(rgb.mean() - 127.5) < 1.0
    reopened = PIL.Image.open(io.BytesIO(_png(image)))  # PIL opens 16-bit PNGs as "I" or "I;16"
    assert np.array_equal(np.asarray(to_rgb(reopened)), rgb)
    with pytest.raises(ValueError, match="mode F"):
        to_rgb(PIL.Image.fromarray(np.zeros((4, 4), dtype=np.float32)))


def test_dataset_rows_with_sixteen_bit_float_or_missing_images():
    photo = PIL.Image.fromarray(np.full((48, 64, 3), 90, dtype=np.uint8))
    float_image = PIL.Image.fromarray(np.ones((48, 64), dtype=np.float32))  # mode F
    buffer = io.BytesIO()
    float_image.save(buffer, format="TIFF")
    rows = [
        {"bytes": _png(photo), "path": None},
        {"bytes": _png(_sixteen_bit_gradient()), "path": None},
        None,  # a missing value, as in a Parquet export
        {"bytes": buffer.getvalue(), "path": None},
    ]
    dataset = datasets.Dataset.from_dict({"image": rows}, features=datasets.Features({"image": datasets.Image()}))
    batches = ImageBatches(dataset, batch_size=4, progress=False)
    with pytest.warns(UserWarning):
        (batch,) = list(batches)
    assert batch.indices == [0, 1]
    assert np.asarray(batch.images[1]).max() == 255 and np.asarray(batch.images[1]).mean() < 200
    skipped = {sample.index: sample.error for sample in batches.skipped}
    assert set(skipped) == {2, 3} and "missing value" in skipped[2] and "mode F" in skipped[3]


def test_fidelity_report_skips_a_decompression_bomb(tmp_path, monkeypatch):
    PIL.Image.new("RGB", (64, 64), "white").save(tmp_path / "small.png")
    PIL.Image.new("RGB", (400, 400), "white").save(tmp_path / "bomb.png")
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 20_000)  # 400 x 400 is more than twice that: an error
    with pytest.warns(UserWarning, match="Skipping .*bomb.png"):
        images = _script("fidelity_report").load_images([str(tmp_path)], None)
    assert [Path(name).name for name, _ in images] == ["small.png"]


@pytest.mark.parametrize(
    "script,arguments",
    [
        ("fidelity_report", ["model", "--max-images", "0"]),
        ("fidelity_report", ["model", "--max-images", "-2"]),
        ("benchmark", ["--repeats", "0"]),
        ("benchmark", ["--threads", "0"]),
    ],
)
def test_counts_are_checked_before_any_work(script, arguments, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _script(script).main(arguments)
    assert exit_info.value.code == 2 and "must be at least 1" in capsys.readouterr().err


def test_push_script_refuses_to_overwrite_its_base_or_to_miss_results(tmp_path, capsys):
    base = tiny_dpt_depth(tmp_path / "base")
    before = {path.name: path.stat().st_mtime_ns for path in base.iterdir()}
    push = _script("push_to_hub")
    for arguments, message in (
        ([str(base), "--output-dir", str(base)], "base model's folder"),
        ([str(base), "--output-dir", str(tmp_path / "out"), "--results", str(tmp_path / "absent.json")], "no such file"),
    ):
        with pytest.raises(SystemExit):
            push.main(arguments)
        assert message in capsys.readouterr().err
    assert {path.name: path.stat().st_mtime_ns for path in base.iterdir()} == before
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def vit() -> hf_expedite.ExpeditedViTModel:
    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=64, patch_size=8
    )
    return hf_expedite.expedite(ViTModel(config).eval(), SETTINGS)


@pytest.mark.parametrize(
    "name,value,message",
    [
        ("clustering_location", 99, "clustering_location=99"),
        ("reconstruction_location", 1, "reconstruction_location=1"),
        ("clustering_iterations", -1, "clustering_iterations=-1"),
    ],
)
def test_settings_changed_after_construction_are_checked_when_read(vit, name, value, message):
    model = copy.deepcopy(vit)
    setattr(model.config, name, value)
    with pytest.raises(ValueError, match=message):
        model(torch.randn(1, 3, 64, 64))


def test_expedite_refuses_what_is_not_a_transformers_model():
    with pytest.raises(TypeError, match="not a transformers model"):
        hf_expedite.expedite(torch.nn.Linear(3, 3))


def test_expedited_models_pickle_like_vanilla_ones(vit, tmp_path):
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = vit(pixels, output_hidden_states=True)
    torch.save(vit, tmp_path / "model.pt")
    for model in (torch.load(tmp_path / "model.pt", weights_only=False), copy.deepcopy(vit)):
        assert type(model) is hf_expedite.ExpeditedViTModel
        with torch.no_grad():
            out = model(pixels, output_hidden_states=True)
        assert torch.equal(out.last_hidden_state, expected.last_hidden_state)
        assert all(torch.equal(a, b) for a, b in zip(out.hidden_states, expected.hidden_states, strict=True))
    depth = hf_expedite.AutoModelForDepthEstimation.from_pretrained(tiny_dpt_depth(tmp_path / "dpt"), expedite=True)
    torch.save(depth, tmp_path / "depth.pt")
    assert type(torch.load(tmp_path / "depth.pt", weights_only=False)) is hf_expedite.ExpeditedDPTForDepthEstimation


BAD_SETTINGS = [
    ({"clustering_location": 2.0}, "clustering_location=2.0"),
    ({"reconstruction_location": 3.5}, "reconstruction_location=3.5"),
    ({"reconstruction_location": 4.0}, "reconstruction_location=4.0"),
    ({"clustering_iterations": 2.5}, "clustering_iterations=2.5"),
    ({"clustering_window_size": 3.0}, "clustering_window_size=3.0"),
    ({"reconstruction_k": 2.0}, "reconstruction_k=2.0"),
    ({"reconstruction_k": 20}, r"reconstruction_k=20`: an integer in 1..16"),
    ({"clustering_location": "1"}, "clustering_location='1'"),
    ({"clustering_location": True}, "clustering_location=True"),
    ({"num_clusters": [4, 4, 4]}, r"num_clusters=\[4, 4, 4\]"),
    ({"num_clusters": "4x4"}, "num_clusters='4x4'"),
    ({"num_clusters": None, "cluster_ratio": "half"}, "cluster_ratio='half'"),
    ({"expedite": "false"}, "expedite='false'"),
    ({"expedite": 0}, "expedite=0"),
    ({"reconstruction_temperature": 1e-300}, r"reconstruction_temperature=1e-300`: .*\[1e-06, 1e\+06\]"),
    ({"clustering_temperature": 1e-300}, "clustering_temperature=1e-300"),
    ({"clustering_temperature": float("inf")}, "clustering_temperature=inf"),
]


@pytest.mark.parametrize("settings,message", BAD_SETTINGS, ids=[str(i) for i in range(len(BAD_SETTINGS))])
def test_malformed_settings_are_value_errors_naming_the_field(settings, message, tmp_path):
    """kwargs, a dict and a hand-edited config.json alike: a ValueError naming field, value and range, before any
    weight is read."""
    vanilla = ViTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                        image_size=64, patch_size=8)  # fmt: skip
    with pytest.raises(ValueError, match=message):
        hf_expedite.expedite_config(vanilla, {**SETTINGS, **settings})
    good = hf_expedite.expedite_config(vanilla, SETTINGS)
    good.save_pretrained(tmp_path)
    edited = {**json.loads((tmp_path / "config.json").read_text()), **settings}
    (tmp_path / "config.json").write_text(json.dumps(edited))
    with pytest.raises(ValueError, match=message):
        hf_expedite.AutoModel.from_pretrained(tmp_path)


def test_a_small_fixed_grid_uses_all_clusters_unless_k_is_given(vit):
    vanilla = hf_expedite.expedite(vit, False)
    config = hf_expedite.expedite_config(vanilla.config, {"clustering_location": 2, "num_clusters": [2, 2]})
    assert config.reconstruction_k is None  # the default: 20, capped at the 4 clusters
    model = hf_expedite.expedite(vanilla, {"clustering_location": 2, "num_clusters": [2, 2]})
    assert model(torch.randn(1, 3, 64, 64)).last_hidden_state.shape == (1, 65, 32)
    ratio = hf_expedite.expedite(vanilla, {"clustering_location": 2, "cluster_ratio": 0.25, "reconstruction_k": 9})
    with pytest.raises(ValueError, match="reconstruction_k=9`: this input's cluster grid holds 4 clusters"):
        ratio(torch.randn(1, 3, 64, 64))  # an explicit k is checked against the grid the input gives


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1e-6, 1e6])
def test_extreme_valid_temperatures_never_give_nan(vit, dtype, temperature):
    model = hf_expedite.expedite(
        vit, {**SETTINGS, "clustering_temperature": temperature, "reconstruction_temperature": temperature}
    ).to(dtype)
    pixels = (torch.randn(2, 3, 64, 64) * 20).to(dtype)  # large activations
    with torch.no_grad():
        out = model(pixels, output_hidden_states=True)
    assert all(torch.isfinite(state).all() for state in (out.last_hidden_state, *out.hidden_states))


def test_patching_from_many_threads_leaves_a_consistent_state():
    import threading

    from hf_expedite.auto import TRANSFORMERS_AUTO_CLASSES

    errors = []

    def toggle(seed: int) -> None:
        try:
            for step in range(200):
                (hf_expedite.patch_transformers if (seed + step) % 2 else hf_expedite.unpatch_transformers)()
        except Exception as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=toggle, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    patched = [hasattr(c.from_pretrained, "transformers_original") for c in TRANSFORMERS_AUTO_CLASSES]
    assert all(patched) == hf_expedite.patching.is_patched() and (all(patched) or not any(patched))
    hf_expedite.unpatch_transformers()
    assert not any(hasattr(c.from_pretrained, "transformers_original") for c in TRANSFORMERS_AUTO_CLASSES)


def test_concurrent_forwards_give_the_sequential_results(vit):
    from concurrent.futures import ThreadPoolExecutor

    inputs = [torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    with torch.no_grad():
        sequential = [vit(x, output_hidden_states=True) for x in inputs]
        with ThreadPoolExecutor(3) as pool:
            concurrent = list(pool.map(lambda x: vit(x, output_hidden_states=True), inputs))
    for a, b in zip(sequential, concurrent, strict=True):
        assert torch.equal(a.last_hidden_state, b.last_hidden_state)
        assert all(torch.equal(x, y) for x, y in zip(a.hidden_states, b.hidden_states, strict=True))


def _gradient_owners(model: torch.nn.Module, loss: torch.Tensor) -> dict[str, bool]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {name: p.grad is not None and bool(p.grad.abs().sum() > 0) for name, p in model.named_parameters()}


def _swinv2():
    from transformers import Swinv2Config, Swinv2Model

    torch.manual_seed(0)
    config = Swinv2Config(image_size=64, patch_size=4, embed_dim=16, depths=[1, 2, 2, 1], num_heads=[1, 2, 2, 2],
                          window_size=4)  # fmt: skip
    return Swinv2Model(config), {"clustering_location": 1, "clustered_window_size": 2, "reconstruction_k": 3}


@pytest.mark.parametrize("family", ["vit", "swinv2", "dpt"])
def test_training_gradients_reach_every_parameter_they_reach_in_vanilla(family, vit, tmp_path):
    if family == "vit":
        vanilla, settings = hf_expedite.expedite(vit, False), SETTINGS
    elif family == "swinv2":
        vanilla, settings = _swinv2()
    else:
        vanilla = hf_expedite.AutoModelForDepthEstimation.from_pretrained(tiny_dpt_depth(tmp_path / "dpt"))
        settings = {"clustering_location": 1, "num_clusters": [4, 4], "reconstruction_k": 4}
    expedited = hf_expedite.expedite(vanilla, settings)
    pixels = torch.randn(2, 3, 64, 64)
    for model in (vanilla, expedited):
        model.train()

    def loss(model):
        out = model(pixels)
        return (out.predicted_depth if family == "dpt" else out.last_hidden_state).square().mean()

    reference, owners = _gradient_owners(vanilla, loss(vanilla)), _gradient_owners(expedited, loss(expedited))
    assert {name for name, has in reference.items() if has} <= {name for name, has in owners.items() if has}
    assert all(torch.isfinite(p.grad).all() for p in expedited.parameters() if p.grad is not None)


def test_gradient_checkpointing_trains_the_expedited_model(vit):
    model = hf_expedite.expedite(hf_expedite.expedite(vit, False), SETTINGS)
    model.gradient_checkpointing_enable()
    model.train()
    pixels = torch.randn(2, 3, 64, 64)
    checkpointed = _gradient_owners(model, model(pixels).last_hidden_state.square().mean())
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.gradient_checkpointing_disable()
    plain = _gradient_owners(model, model(pixels).last_hidden_state.square().mean())
    assert checkpointed == plain
    assert all(has for name, has in checkpointed.items() if not name.startswith("pooler."))  # the loss skips the pooler
    for name, p in model.named_parameters():
        if name in grads:
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-5, atol=1e-7)  # recomputed: rounding order only


def test_loading_a_vanilla_checkpoint_into_an_expedited_class_does_not_warn(tmp_path, caplog):
    import transformers

    path = tiny_dpt_depth(tmp_path / "dpt")
    transformers.logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            hf_expedite.AutoModelForDepthEstimation.from_pretrained(path, expedite=True)
            hf_expedite.ExpeditedDPTForDepthEstimation.from_pretrained(path)
    finally:
        transformers.logging.disable_propagation()
    assert "to instantiate a model of type" not in caplog.text


def test_missing_models_end_in_one_line_errors(tmp_path, capsys):
    from hf_expedite.evaluation.runner import InputError

    absent = str(tmp_path / "no-such-model")
    with pytest.raises(InputError, match="no-such-model"):
        _script("fidelity_report").main([absent])
    with pytest.raises(InputError, match="no-such-model"):
        _script("evaluate_depth").main([absent, "--dataset", str(tmp_path), "--output-dir", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_info:
        _script("push_to_hub").main([absent, "--output-dir", str(tmp_path / "pushed")])
    assert str(exit_info.value.code).startswith("error: ") and "no-such-model" in str(exit_info.value.code)


def test_a_base_checkpoint_loads_into_a_task_model_as_in_transformers(tmp_path):
    """Fine-tuning: the DPT encoder checkpoint into a depth model whose neck and head are new. transformers reports
    the new weights; so do the expedited classes (they raise only for weights that exist under unmapped names)."""
    from transformers import DPTConfig, DPTForDepthEstimation, DPTModel

    config = DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                       image_size=64, patch_size=8, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 8, 16, 16],
                       fusion_hidden_size=16)  # fmt: skip
    DPTModel(config, add_pooling_layer=False).save_pretrained(tmp_path)
    _, expected = DPTForDepthEstimation.from_pretrained(tmp_path, output_loading_info=True)
    model, info = hf_expedite.ExpeditedDPTForDepthEstimation.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == expected["missing_keys"] and info["missing_keys"]  # the new neck and head
    assert info["unexpected_keys"] == expected["unexpected_keys"]
