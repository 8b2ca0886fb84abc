"""Deployment paths: torch.compile with the default inductor backend (fullgraph), torch.export and ONNX export run
under onnxruntime, and every attention backend of the parent. The cluster layout depends only on the grid sizes
(Python integers), so no data-dependent guard or graph break remains."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    DINOv3ViTConfig,
    DINOv3ViTModel,
    Dinov2Backbone,
    Dinov2Config,
    SamVisionConfig,
    SamVisionModel,
    SwinBackbone,
    SwinConfig,
    ViTConfig,
    ViTModel,
)

import hf_expedite

sys.path.insert(0, str(Path(__file__).parent))
from test_fidelity import tiny_dpt_depth  # noqa: E402

GRID = {"clustering_location": 1, "num_clusters": [4, 4], "reconstruction_k": 4}
VIT = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, image_size=64,
           patch_size=8)  # fmt: skip


def _vit(attn_implementation: str = "sdpa") -> torch.nn.Module:
    torch.manual_seed(0)
    config = ViTConfig(**VIT, attn_implementation=attn_implementation)
    return hf_expedite.expedite(ViTModel(config).eval(), GRID)


def _dinov2(attn_implementation: str = "sdpa") -> torch.nn.Module:
    torch.manual_seed(0)
    config = Dinov2Config(**VIT, out_features=["stage1", "stage3"], attn_implementation=attn_implementation)
    return hf_expedite.expedite(Dinov2Backbone(config).eval(), GRID)


def _swin() -> torch.nn.Module:
    torch.manual_seed(0)
    config = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 2, 1, 1], num_heads=[1, 1, 2, 2],
                        window_size=4, out_features=["stage2", "stage4"])  # fmt: skip
    return hf_expedite.expedite(SwinBackbone(config).eval(), {"clustering_location": 1, "clustered_window_size": 2})


def _dinov3() -> torch.nn.Module:
    torch.manual_seed(0)
    config = DINOv3ViTConfig(**{k: v for k, v in VIT.items() if k != "image_size"}, num_register_tokens=2)
    return hf_expedite.expedite(DINOv3ViTModel(config).eval(), GRID)


def _sam() -> torch.nn.Module:
    torch.manual_seed(0)
    config = SamVisionConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, image_size=64, patch_size=8,
                             window_size=3, global_attn_indexes=[1], output_channels=16, initializer_range=0.02)  # fmt: skip
    return hf_expedite.expedite(SamVisionModel(config).eval(), {"clustering_location": 1, "clustered_window_size": 2})


def _dpt(tmp_path: Path) -> torch.nn.Module:
    path = tiny_dpt_depth(tmp_path / "dpt")
    return hf_expedite.AutoModelForDepthEstimation.from_pretrained(path, expedite=GRID).eval()


def _first(outputs) -> torch.Tensor:
    first = outputs[0]
    return first[-1] if isinstance(first, (tuple, list)) else first


@pytest.mark.parametrize("family", ["vit", "dpt", "dinov2", "swin", "dinov3", "sam"])
def test_inductor_fullgraph(family, tmp_path):
    builders = {"vit": _vit, "dinov2": _dinov2, "swin": _swin, "dinov3": _dinov3, "sam": _sam}
    model = builders.get(family, lambda: _dpt(tmp_path))()
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = _first(model(pixels))
        compiled = _first(torch.compile(model, fullgraph=True)(pixels))  # default backend: inductor
    # inductor fuses and reorders float32 arithmetic: agreement to rounding, not bits
    torch.testing.assert_close(compiled, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["vit", "dpt"])
def test_export_and_onnx_under_onnxruntime(family, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    model = _vit() if family == "vit" else _dpt(tmp_path)
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = _first(model(pixels))
    exported = torch.export.export(model, (pixels,))
    torch.testing.assert_close(_first(exported.module()(pixels)), expected, rtol=1e-4, atol=1e-4)
    torch.onnx.export(model, (pixels,), dynamo=True).save(str(tmp_path / "model.onnx"))
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    (first, *_) = session.run(None, {session.get_inputs()[0].name: pixels.numpy()})
    np.testing.assert_allclose(first, expected.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["vit", "dinov2"])
def test_every_attention_backend_gives_the_same_outputs(family):
    # Every cluster in the k-NN (k = 16 = M): no top-k choice that the backends' ~1e-7 float32 differences could flip,
    # so the outputs agree to rounding.
    build = _vit if family == "vit" else _dinov2
    pixels = torch.randn(2, 3, 64, 64)
    outputs = {}
    for implementation in ("eager", "sdpa", "flex_attention"):
        model = hf_expedite.expedite(build(implementation), {**GRID, "reconstruction_k": 16})
        with torch.no_grad():
            outputs[implementation] = _first(model(pixels))
    for implementation in ("sdpa", "flex_attention"):
        torch.testing.assert_close(outputs[implementation], outputs["eager"], rtol=1e-4, atol=1e-5)
