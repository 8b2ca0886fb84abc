"""The benchmark's measurements on a tiny ViT: FLOPs against a hand count, overhead labels, report and plot."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from hf_expedite.benchmark.cases_vit import vit_case
from hf_expedite.benchmark.ideal import IdealModel
from hf_expedite.benchmark.measure import alternated_latencies, count_flops, quartiles, round_ratios, run_case
from hf_expedite.benchmark.registry import all_cases, suite_cases

TINY = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, patch_size=8)


def _load_script():
    spec = importlib.util.spec_from_file_location("benchmark_script", Path(__file__).parents[1] / "scripts/benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _layer_flops(tokens: int, hidden: int = 32, intermediate: int = 64) -> int:
    """2 FLOPs per multiply-add: q, k, v, o projections, the MLP, and the two attention products."""
    return 2 * (4 * tokens * hidden * hidden + 2 * tokens * hidden * intermediate + 2 * tokens * tokens * hidden)


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    settings = {"clustering_location": 1, "num_clusters": [4, 4], "reconstruction_k": 4}
    return vit_case("tiny", TINY, 64, settings, "tiny ViT, 8x8 tokens -> 4x4", batch_size=2)


def test_ratios_are_paired_within_rounds():
    """A burst of load that slows one round's models together leaves that round's ratio alone: the median of the
    per-round ratios is 1 here, where the ratio of the medians (2 / 2.5) would read 0.8."""
    times = {"ideal": [1.0, 2.0, 10.0], "expedited": [1.0, 2.5, 9.0]}
    ratios = round_ratios(times, "ideal", "expedited")
    assert ratios == pytest.approx([1.0, 0.8, 10 / 9])
    assert quartiles(ratios) == pytest.approx((0.9, 1.0, (1 + 10 / 9) / 2))
    assert quartiles([0.97]) == (0.97, 0.97, 0.97)
    with pytest.raises(ValueError):
        round_ratios({"ideal": [1.0, 2.0], "expedited": [1.0]}, "ideal", "expedited")
    # a share of several parts: their sum within each round
    parts = {"clustering": [0.1, 0.3], "reconstruction": [0.1, 0.2], "expedited": [2.0, 10.0]}
    assert round_ratios(parts, ("clustering", "reconstruction"), "expedited") == pytest.approx([0.1, 0.05])


def test_flop_count_matches_a_hand_count(case):
    patch_embedding = 2 * 64 * (3 * 8 * 8) * 32  # per image: 64 patches, a 192 -> 32 projection
    expected = 2 * (patch_embedding + 4 * _layer_flops(65))
    assert count_flops(case.vanilla, case.inputs) == expected


def test_run_case_reports_side_by_side_numbers(case):
    result = run_case(case, repeats=2, warmup=1, throughput_batch=4)
    assert result.vanilla_ms > 0 and result.expedited_ms > 0
    assert result.speedup > 0 and result.ideal_ms > 0
    first, third = result.ratio_to_ideal_iqr
    assert 0 < first <= result.ratio_to_ideal <= third
    # one full-resolution layer, three on 1 + 16 tokens, plus the clustering/reconstruction matrix products
    assert result.flops_ratio < (_layer_flops(65) + 3 * _layer_flops(17) + 2 * 2 * 64 * 192 * 32) / (
        4 * _layer_flops(65) + 2 * 64 * 192 * 32
    ) + 0.05
    assert result.clustering_ms > 0 and result.reconstruction_ms > 0
    # The share is the median of the rounds' shares (the replays are timed alone, so no bound below 1 holds on a busy
    # machine): within its interquartile range.
    share_first, share_third = result.overhead_share_iqr
    assert 0 < share_first <= result.overhead_share <= share_third
    assert result.vanilla_peak_mb > 0 and result.expedited_peak_mb > 0
    assert result.throughput_batch == 4 and result.throughput_ratio > 0
    assert 0 < result.output_relative_error < 1


def test_ideal_model_runs_the_reduced_blocks_without_clustering_arithmetic(case):
    ideal = IdealModel(case.expedited)
    with torch.no_grad():
        reference, output = case.vanilla(**case.inputs)[0], ideal(**case.inputs)[0]
    assert output.shape == reference.shape
    # The same reduced blocks, no clustering or reconstruction products: exactly the transformer's FLOPs.
    embedding = 2 * 2 * 64 * 192 * 32
    assert count_flops(ideal, case.inputs) == embedding + 2 * (_layer_flops(65) + 3 * _layer_flops(17))
    # With a cluster grid equal to the token grid nothing is dropped: the vanilla forward, bit for bit.
    torch.manual_seed(0)
    full = vit_case("full", TINY, 64, {"clustering_location": 1, "num_clusters": [8, 8]}, "8x8 -> 8x8")
    with torch.no_grad():
        assert torch.equal(IdealModel(full.expedited)(**full.inputs)[0], full.vanilla(**full.inputs)[0])


def test_report_table_plot_and_case_registry(case, tmp_path):
    script = _load_script()
    result = run_case(case, repeats=1, warmup=0)
    table = script.markdown_table([result])
    assert "| tiny |" in table and f"{result.flops_ratio:.3f}" in table
    script.plot_speed_vs_fidelity([result], str(tmp_path / "plot.png"))
    assert (tmp_path / "plot.png").stat().st_size > 1000
    script.plot_scaling([result, result], str(tmp_path / "scaling.png"))
    assert (tmp_path / "scaling.png").stat().st_size > 1000
    json.dumps(result.as_dict())
    assert {"vit-b16-512", "vit-l16-640-ade20k"} <= set(all_cases())
    assert set(suite_cases("paper")) <= set(all_cases()) and set(suite_cases("scaling")) <= set(all_cases())
    assert script.main(["--list"]) == 0


class _Recorded(torch.nn.Module):
    """A model that notes its name in ``order`` at every forward."""

    def __init__(self, name: str, model: torch.nn.Module, order: list[str]):
        super().__init__()
        self.name, self.model, self.order = name, model, order

    def forward(self, **inputs):
        self.order.append(self.name)
        return self.model(**inputs)


def test_alternated_latencies_rotate_the_order(case):
    """Each round starts one model later (vanilla, expedited, ideal / expedited, ideal, vanilla / ...), so no model
    always follows the same one; the warm-up round is not timed."""
    order: list[str] = []
    models = {"vanilla": case.vanilla, "expedited": case.expedited, "ideal": IdealModel(case.expedited)}
    times = alternated_latencies({name: _Recorded(name, model, order) for name, model in models.items()},
                                 case.inputs, repeats=3, warmup=1)  # fmt: skip
    rounds = [order[index : index + 3] for index in range(0, len(order), 3)]
    assert rounds == [list(models), ["expedited", "ideal", "vanilla"], ["ideal", "vanilla", "expedited"], list(models)]
    assert {name: len(values) for name, values in times.items()} == dict.fromkeys(models, 3)


def test_non_square_cases_and_overhead_replayed_on_its_own():
    """A (height, width) case runs with its own cluster grid; clustering and reconstruction are replayed alone on the
    inputs one forward gave them (every reconstruction application counted)."""
    from hf_expedite.benchmark.measure import expedite_overhead

    settings = {"clustering_location": 1, "num_clusters": [2, 4], "reconstruction_k": 4}
    wide = vit_case("wide", TINY, (32, 64), settings, "tiny ViT, 4x8 tokens -> 2x4")
    with torch.no_grad():
        assert wide.expedited(**wide.inputs)[0].shape == wide.vanilla(**wide.inputs)[0].shape == (1, 33, 32)
    overhead = expedite_overhead(wide.expedited, wide.inputs, repeats=2)
    assert overhead["clustering"] > 0 and overhead["reconstruction"] > 0


def test_every_bundled_photograph_loads():
    from hf_expedite.benchmark.photos import PHOTOGRAPHS, photo_batch

    batch = photo_batch(32, 48, batch_size=len(PHOTOGRAPHS))
    assert batch.shape == (len(PHOTOGRAPHS), 3, 32, 48) and torch.isfinite(batch).all()


@pytest.mark.parametrize("variant", ["bfloat16", "autocast-bf16", "compiled"])
def test_variants_time_what_users_run(variant):
    """bfloat16 weights, autocast and torch.compile rows: finite outputs close to vanilla's, a ratio to ideal."""
    from hf_expedite.benchmark.variants import apply_variant

    torch.manual_seed(0)
    settings = {"clustering_location": 1, "num_clusters": [4, 4], "reconstruction_k": 4}
    case = apply_variant(vit_case("tiny", TINY, 64, settings, "tiny ViT"), variant)
    assert case.name == f"tiny [{variant}]"
    result = run_case(case, repeats=1, warmup=1)
    assert math.isfinite(result.output_relative_error) and result.output_relative_error < 1
    assert result.ratio_to_ideal > 0 and result.flops_ratio < 1
    if variant == "bfloat16":
        assert next(case.expedited.parameters()).dtype == torch.bfloat16
