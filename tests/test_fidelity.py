"""Label-free fidelity (hf_expedite.fidelity, scripts/fidelity_report.py) on tiny saved models and real photographs.

With a cluster grid equal to the token grid (sharp temperature, hard reconstruction) the expedited model is the
vanilla one up to rounding, so the agreement must be ~perfect; with a real reduction it must drop measurably while
staying sensible. The tiny-model builders here are shared with test_evaluation_scripts.py.
"""

import importlib.util
import json
import math
import zlib
from pathlib import Path

import numpy as np

import pytest
import torch
from PIL import Image
from transformers import (
    DPTConfig,
    DPTForDepthEstimation,
    DPTForSemanticSegmentation,
    Mask2FormerConfig,
    Mask2FormerForUniversalSegmentation,
    SwinConfig,
    UperNetConfig,
    UperNetForSemanticSegmentation,
)
from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil
from transformers.models.mask2former.image_processing_pil_mask2former import Mask2FormerImageProcessorPil

import hf_expedite
from hf_expedite.benchmark.photos import photograph
from hf_expedite.fidelity import depth_agreement, fidelity_report, panoptic_classes

REPO_ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins")

# DPT-Large layout in miniature: 64x64 inputs, 8x8 patches -> an 8x8 token grid, 4 blocks.
TINY_DPT = dict(
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=2,
    intermediate_size=64,
    image_size=64,
    patch_size=8,
    backbone_out_indices=[0, 1, 2, 3],
    neck_hidden_sizes=[8, 16, 16, 16],
    fusion_hidden_size=16,
    reassemble_factors=[4, 2, 1, 0.5],
)
DPT_SAME_GRID = {"num_clusters": [8, 8], "clustering_location": 1, "clustering_temperature": 1e-4,
                 "reconstruction_mode": "hard"}
DPT_REDUCED = {"num_clusters": [4, 4], "clustering_location": 1, "reconstruction_k": 4}
# Swin windows of 4 (stage 3 has 2 blocks): clustering inside each window keeps 4x4 or reduces it to 2x2.
M2F_SAME_GRID = {"clustered_window_size": 4, "clustering_temperature": 1e-4, "reconstruction_mode": "hard"}
M2F_REDUCED = {"clustered_window_size": 2}
PANOPTIC_POST_PROCESSING = {"threshold": 0.0, "overlap_mask_area_threshold": 0.0}


def photos(names=PHOTOS, size=None) -> list[Image.Image]:
    """scikit-image photographs as RGB images, optionally resized to ``size`` (width, height)."""
    return [photograph(name) if size is None else photograph(name).resize(size) for name in names]


def tiny_dpt_depth(path: Path) -> Path:
    """A random DPT depth model whose outputs are scaled to ~1-5 "metres" (its ReLU head is positively homogeneous),
    saved with a PIL image processor."""
    torch.manual_seed(0)
    model = DPTForDepthEstimation(DPTConfig(**TINY_DPT)).eval()
    inputs = DPTImageProcessorPil(size={"height": 64, "width": 64})(images=photos(), return_tensors="pt")
    with torch.no_grad():
        scale = 3.0 / model(**inputs).predicted_depth.mean()
        model.head.head[4].weight.mul_(scale)
        model.head.head[4].bias.mul_(scale)
    model.save_pretrained(path)
    DPTImageProcessorPil(size={"height": 64, "width": 64}).save_pretrained(path)
    return path


def tiny_dpt_segmentation(path: Path) -> Path:
    """A random 5-class DPT segmentation model, saved with a PIL image processor."""
    torch.manual_seed(0)
    DPTForSemanticSegmentation(DPTConfig(**TINY_DPT, num_labels=5)).save_pretrained(path)
    DPTImageProcessorPil(size={"height": 64, "width": 64}).save_pretrained(path)
    return path


def seeded_init(model: torch.nn.Module) -> None:
    """Draw every matrix (and conv kernel) of ``model`` from a generator seeded by the parameter's name.

    transformers' init schemes change between releases; the tiny test models must not, so that what they predict
    (how many segments, say) is the same on every supported release. Vectors (norms, biases) keep the library init.
    """
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() > 1:
                generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
                fan_in = parameter[0].numel()
                parameter.copy_(torch.randn(parameter.shape, generator=generator) / math.sqrt(fan_in))


def tiny_swin() -> SwinConfig:
    """The tiny Swin backbone of the segmentation models here: 64x64 inputs, window 4, all four stages out."""
    return SwinConfig(
        image_size=64,
        patch_size=4,
        embed_dim=16,
        depths=[1, 1, 2, 1],
        num_heads=[1, 1, 2, 2],
        window_size=4,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )


def tiny_upernet(path: Path) -> Path:
    """A random 5-class UperNet on a tiny Swin (64x64 inputs), saved with a PIL image processor."""
    torch.manual_seed(0)
    swin = tiny_swin()
    config = UperNetConfig(backbone_config=swin, num_labels=5, hidden_size=16, auxiliary_in_channels=64)
    model = UperNetForSemanticSegmentation(config).eval()
    seeded_init(model)
    model.save_pretrained(path)
    # UperNet checkpoints ship a SegformerImageProcessor; transformers 5.20 cannot load its PIL variant without
    # torchvision (not installed here), and DPT's resizes and normalises the same way.
    DPTImageProcessorPil(size={"height": 64, "width": 64}).save_pretrained(path)
    return path


def tiny_mask2former(path: Path) -> Path:
    """A random 6-class Mask2Former on a tiny Swin; the mask and class heads are amplified so that the random model
    predicts several segments of several classes. Saved with a PIL image processor."""
    torch.manual_seed(0)
    swin = tiny_swin()
    config = Mask2FormerConfig(
        backbone_config=swin,
        num_labels=6,
        hidden_dim=32,
        encoder_feedforward_dim=32,
        dim_feedforward=32,
        num_queries=8,
        decoder_layers=2,
        encoder_layers=1,
        mask_feature_size=32,
        feature_size=32,
        num_attention_heads=2,
    )
    model = Mask2FormerForUniversalSegmentation(config).eval()
    seeded_init(model)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("mask_projection.weight", "mask_embedder.2.0.weight", "class_predictor.weight")):
                parameter.mul_(30.0)
    model.save_pretrained(path)
    Mask2FormerImageProcessorPil(size={"height": 64, "width": 64}).save_pretrained(path)
    return path


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on shared cores extra threads thrash."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load(path: Path, auto_class, settings: dict):
    """(vanilla, expedited twin sharing its weights, processor) through the public API."""
    from transformers import AutoImageProcessor

    vanilla = auto_class.from_pretrained(path).eval()
    return vanilla, hf_expedite.expedite(vanilla, settings), AutoImageProcessor.from_pretrained(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fidelity_models")
    return {
        "depth": tiny_dpt_depth(root / "depth"),
        "semantic": tiny_dpt_segmentation(root / "semantic"),
        "panoptic": tiny_mask2former(root / "panoptic"),
        "upernet": tiny_upernet(root / "upernet"),
    }


def test_depth_fidelity(models):
    images = photos(size=(160, 120))
    vanilla, same, processor = load(models["depth"], hf_expedite.AutoModelForDepthEstimation, DPT_SAME_GRID)
    exact = fidelity_report(vanilla, same, processor, images, "depth")
    assert len(exact.per_image) == len(images) and exact.task == "depth"
    assert exact.summary["depth_correlation"] > 0.99999
    assert exact.summary["depth_relative_difference"] < 1e-3
    reduced = fidelity_report(vanilla, hf_expedite.expedite(vanilla, DPT_REDUCED), processor, images, "depth")
    assert 0.8 < reduced.summary["depth_correlation"] < 0.9995
    assert 0.02 < reduced.summary["depth_relative_difference"] < 0.5
    assert reduced.vanilla_seconds > 0 and reduced.expedited_seconds > 0 and reduced.speedup > 0


def test_semantic_fidelity(models):
    images = photos(size=(160, 120))
    vanilla, same, processor = load(models["semantic"], hf_expedite.AutoModelForSemanticSegmentation, DPT_SAME_GRID)
    exact = fidelity_report(vanilla, same, processor, images, "semantic")
    assert exact.summary["pixel_agreement"] > 0.999 and exact.summary["miou_vs_vanilla"] > 0.999
    reduced = fidelity_report(vanilla, hf_expedite.expedite(vanilla, DPT_REDUCED), processor, images, "semantic")
    assert 0.5 < reduced.summary["pixel_agreement"] < 0.99
    assert 0.2 < reduced.summary["miou_vs_vanilla"] < 0.98


def test_panoptic_fidelity(models):
    images = photos(size=(160, 120))
    vanilla, same, processor = load(models["panoptic"], hf_expedite.AutoModelForUniversalSegmentation, M2F_SAME_GRID)
    exact = fidelity_report(vanilla, same, processor, images, "panoptic", post_processing=PANOPTIC_POST_PROCESSING)
    assert exact.summary["pixel_agreement"] > 0.999 and exact.summary["pq_vs_vanilla"] > 0.95
    reduced = fidelity_report(
        vanilla, hf_expedite.expedite(vanilla, M2F_REDUCED), processor, images, "panoptic",
        post_processing=PANOPTIC_POST_PROCESSING,
    )
    assert 0.1 < reduced.summary["pixel_agreement"] < 0.97
    assert reduced.summary["pq_vs_vanilla"] < exact.summary["pq_vs_vanilla"]
    # The Mask2Former twin also serves semantic segmentation.
    semantic = fidelity_report(vanilla, same, processor, images[:2], "semantic")
    assert semantic.summary["pixel_agreement"] > 0.999


def test_upernet_semantic_fidelity(models):
    images = photos(size=(160, 120))
    vanilla, same, processor = load(models["upernet"], hf_expedite.AutoModelForSemanticSegmentation, M2F_SAME_GRID)
    exact = fidelity_report(vanilla, same, processor, images, "semantic")
    assert exact.summary["pixel_agreement"] > 0.999 and exact.summary["miou_vs_vanilla"] > 0.999
    reduced = fidelity_report(vanilla, hf_expedite.expedite(vanilla, M2F_REDUCED), processor, images, "semantic")
    assert reduced.summary["pixel_agreement"] < exact.summary["pixel_agreement"]
    assert 0.2 < reduced.summary["miou_vs_vanilla"] < 0.999


def test_agreement_helpers():
    depth = np.array([[0.0, 1.0], [2.0, 3.0]])
    assert depth_agreement(depth, depth) == {"depth_correlation": 1.0, "depth_relative_difference": 0.0}
    # Relative L1: mean |e - v| / mean |v| = 0.5 / 1.5, unaffected by the 0 pixel.
    assert depth_agreement(depth, depth + 0.5)["depth_relative_difference"] == pytest.approx(1 / 3)
    # Panoptic agreement compares classes, not the arbitrary segment ids.
    classes = panoptic_classes(np.array([[1, 1], [2, 0]]), [{"id": 1, "label_id": 4}, {"id": 2, "label_id": 0}])
    assert classes.tolist() == [[4, 4], [0, -1]]


def _fidelity_script():
    spec = importlib.util.spec_from_file_location("fidelity_report_script", REPO_ROOT / "scripts/fidelity_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fidelity_script_sweep(models, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, image in zip(PHOTOS[:2], photos(PHOTOS[:2])):
        image.save(folder / f"{name}.jpg")
    (folder / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="Skipping .*broken.png"):
        payload = _fidelity_script().main([
            str(models["depth"]), "--images", str(folder), "--expedite", json.dumps(DPT_SAME_GRID),
            "--expedite", json.dumps(DPT_REDUCED), "--all-presets", "--output-dir", str(out),
        ])
    same, reduced = payload[json.dumps(DPT_SAME_GRID)], payload[json.dumps(DPT_REDUCED)]
    assert same["summary"]["depth_correlation"] > 0.99999 > 0.9995 > reduced["summary"]["depth_correlation"]
    assert sorted(same["per_image"]) == [str(folder / "astronaut.jpg"), str(folder / "coffee.jpg")]
    # The default preset adapts to any input; the official NYUv2 / KITTI presets need 7 of 4 blocks here.
    assert "depth_correlation" in payload["default"]["summary"]
    assert payload["nyu"].startswith("not applicable: Invalid Expedite setting `clustering_location=7`")
    table = capsys.readouterr().out
    assert "| setting | depth_correlation | depth_relative_difference |" in table and "| default |" in table
    assert (out / "fidelity.md").read_text() == table.strip("\n") + "\n"
    assert json.loads((out / "fidelity.json").read_text())["task"] == "depth"
    pictures = sorted(p.relative_to(out).as_posix() for p in (out / "pictures").rglob("*.png"))
    assert [p for p in pictures if "-default/" in p] == ["pictures/02-default/000_astronaut.png",
                                                         "pictures/02-default/001_coffee.png"]  # fmt: skip
    assert len(pictures) == 2 * sum(isinstance(row, dict) for row in payload.values())


@pytest.mark.parametrize("task", ["depth", "panoptic"])
def test_fidelity_script_calibrates_for_a_budget(models, tmp_path, capsys, task):
    """--calibrate: expedite='auto' on the given images, reported and compared like any row, with pictures."""
    out = tmp_path / "out"
    budget = "0.99" if task == "depth" else "0.95"  # the tiny models' heads weigh more than their encoders
    payload = _fidelity_script().main([
        str(models[task]), "--calibrate", "--target-flops-ratio", budget, "--max-images", "2", "--output-dir", str(out),
    ])  # fmt: skip
    printed = capsys.readouterr().out
    assert "expedite='auto' chose clustering_location=" in printed and "| auto |" in printed
    assert list(payload) == ["auto"] and payload["auto"]["calibration"]["reconstruction_residual"] is True
    document = json.loads((out / "fidelity.json").read_text())
    assert document["calibration"]["flops_ratio"] <= float(budget)
    assert len(list((out / "pictures" / "00-auto").glob("*.png"))) == 2
    with pytest.raises(SystemExit):
        _fidelity_script().main([str(models[task]), "--calibrate"])  # no budget
