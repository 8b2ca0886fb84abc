"""expedite="auto": settings chosen for a budget on calibration images, deterministic, saved like any others."""

from __future__ import annotations

import pytest
import torch
from transformers import SwinBackbone, SwinConfig

import hf_expedite
from hf_expedite.benchmark.measure import count_flops
from hf_expedite.calibration import calibrate, relative_difference

from test_fidelity import photos, tiny_dpt_depth


@pytest.fixture(scope="module")
def depth_repo(tmp_path_factory):
    return tiny_dpt_depth(tmp_path_factory.mktemp("dpt"))


@pytest.fixture(scope="module")
def auto_model(depth_repo):
    # The tiny DPT's head outweighs its 4-block encoder: a small saving is all there is to choose from.
    return hf_expedite.AutoModelForDepthEstimation.from_pretrained(
        depth_repo, expedite="auto", target_flops_ratio=0.985, calibration_images=photos()[:2]
    )


def test_auto_fits_the_budget_and_reports_its_choice(auto_model, depth_repo):
    calibration = auto_model.expedite_calibration
    vanilla = hf_expedite.AutoModelForDepthEstimation.from_pretrained(depth_repo).eval()
    pixels = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ratio = count_flops(auto_model, {"pixel_values": pixels}) / count_flops(vanilla, {"pixel_values": pixels})
    assert ratio == pytest.approx(calibration.flops_ratio) and ratio <= 0.985
    assert calibration.settings["reconstruction_residual"] is True
    assert auto_model.config.clustering_location == calibration.settings["clustering_location"]
    chosen = min(calibration.candidates, key=lambda c: (c.difference, c.flops_ratio))
    assert chosen.settings == calibration.settings and all(c.flops_ratio <= 0.985 for c in calibration.candidates)
    assert "FLOPs ratio" in calibration.summary() and "budget 0.985" in calibration.summary()
    with torch.no_grad():  # the reported difference is the model's on the calibration images
        inputs = hf_expedite.calibration.calibration_inputs(vanilla, photos()[:2], _processor(depth_repo))
        measured = sum(relative_difference(vanilla(**x), auto_model(**x)) for x in inputs) / 2
    assert measured == pytest.approx(calibration.difference, rel=1e-4)


def _processor(path):
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(path)


def test_auto_is_deterministic_and_saves_like_any_settings(auto_model, depth_repo, tmp_path):
    again = hf_expedite.expedite(
        hf_expedite.AutoModelForDepthEstimation.from_pretrained(depth_repo),
        "auto",
        target_flops_ratio=0.985,
        calibration_images=photos()[:2],
        image_processor=_processor(depth_repo),
    )
    assert again.expedite_calibration.settings == auto_model.expedite_calibration.settings
    auto_model.save_pretrained(tmp_path)
    reloaded = hf_expedite.AutoModelForDepthEstimation.from_pretrained(tmp_path)
    for name, value in auto_model.expedite_calibration.settings.items():
        assert getattr(reloaded.config, name) == value


def test_windowed_models_calibrate_their_clustered_window():
    torch.manual_seed(0)
    config = SwinConfig(image_size=64, patch_size=2, embed_dim=16, depths=[2, 4, 2], num_heads=[2, 2, 4],
                        window_size=4, out_features=["stage1", "stage2", "stage3"])  # fmt: skip
    backbone = SwinBackbone(config).eval()
    pixels = [torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(1))]
    result = calibrate(backbone, target_flops_ratio=0.9, images=pixels, progress=False)
    assert result.settings["clustered_window_size"] < 4 and result.flops_ratio <= 0.9
    model = hf_expedite.expedite(backbone, result.settings)
    with torch.no_grad():
        assert [m.shape for m in model(pixels[0][None]).feature_maps] == [
            m.shape for m in backbone(pixels[0][None]).feature_maps
        ]


def test_bad_budgets_and_requests_fail_before_any_weight_is_read(tmp_path, depth_repo):
    absent = tmp_path / "absent"
    load = hf_expedite.AutoModelForDepthEstimation.from_pretrained
    with pytest.raises(ValueError, match="exactly one budget"):
        load(absent, expedite="auto")
    with pytest.raises(ValueError, match="exactly one budget"):
        load(absent, expedite="auto", target_speedup=1.5, target_flops_ratio=0.6)
    with pytest.raises(ValueError, match="target_speedup must be a number above 1"):
        load(absent, expedite="auto", target_speedup=0.5)
    with pytest.raises(ValueError, match="target_flops_ratio must lie strictly between 0 and 1"):
        load(absent, expedite="auto", target_flops_ratio=float("nan"))
    with pytest.raises(ValueError, match="chooses the settings itself"):
        load(absent, expedite="auto", target_speedup=1.5, clustering_location=2)
    with pytest.raises(ValueError, match="running the model on calibration images"):
        hf_expedite.expedite_config(load(depth_repo).config, "auto")
    bare = tmp_path / "bare"
    load(depth_repo).save_pretrained(bare)  # weights and config, no image processor
    with pytest.raises(ValueError, match="has no image processor .* pass image_processor="):
        load(bare, expedite="auto", target_speedup=1.2)
    with pytest.raises(ValueError, match="No Expedite setting .* fits a FLOPs ratio of 0.010 .* the cheapest tried costs 0.9"):
        load(depth_repo, expedite="auto", target_flops_ratio=0.01, calibration_images=photos()[:1])


def test_fidelity_per_flop_script(depth_repo, tmp_path, capsys):
    """scripts/fidelity_per_flop.py on a tiny development set (the proxy's format): every family, table and plot."""
    import importlib.util
    import json
    from pathlib import Path

    import numpy as np

    images = np.stack([np.asarray(image.resize((64, 64))) for image in photos()[:2]])
    dev = tmp_path / "dev.pt"
    torch.save({"images": torch.from_numpy(images), "depth": torch.full((2, 64, 64), 3.0)}, dev)
    path = Path(__file__).resolve().parents[1] / "scripts" / "fidelity_per_flop.py"
    spec = importlib.util.spec_from_file_location("fidelity_per_flop", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    rows = script.main([str(depth_repo), str(dev), "--grids", "4", "--locations", "1", "--budgets", "0.99",
                        "--json", str(tmp_path / "rows.json"), "--plot", str(tmp_path / "plot.png")])  # fmt: skip
    assert [row["family"] for row in rows] == ["paper", "residual", "auto <= 0.99"]
    assert rows[1]["settings"]["reconstruction_residual"] is True and rows[0]["flops_ratio"] == rows[1]["flops_ratio"]
    assert all(row["rmse_to_vanilla"] >= 0 and "rmse_to_reference" in row for row in rows)
    printed = capsys.readouterr().out
    assert "| FLOPs budget | paper, best row |" in printed and "| <= 0.99 |" in printed
    assert json.loads((tmp_path / "rows.json").read_text()) == rows
    assert (tmp_path / "plot.png").stat().st_size > 1000
