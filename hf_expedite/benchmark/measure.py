"""Measurements behind ``scripts/benchmark.py``: latency side by side, FLOPs, and the cost of Expedite's own layers.

* Latency: the vanilla, the expedited and the ideal model (:mod:`hf_expedite.benchmark.ideal`: tokens dropped and
  restored by index, the limit of the speed-up) run alternately in one process on the same inputs, in an order that
  rotates every round, so a drift of the machine's state reaches all of them. The median latencies are reported;
  the speed-up and the ratio to the ideal speed-up are the medians of the ratios within each round (paired: a slower
  spell of a shared machine that lasts a round slows its models together, where it would move a ratio of medians;
  load that changes within a forward is not cancelled), the ratio to ideal with its interquartile range over the
  rounds.
* FLOPs: ``torch.utils.flop_counter.FlopCounterMode``, which counts 2 FLOPs per multiply-add (the paper's "GFLOPs"
  are multiply-adds, i.e. half of these). It counts matrix products, convolutions and attention, not element-wise
  work; the CPU kernel of scaled-dot-product attention, which torch does not register, is added here.
* Overhead: clustering (with the reconstruction weights) and reconstruction timed on their own, outside any
  profiler: one expedited forward records the inputs of every clustering point and of every reconstruction, which are
  then replayed alone as two more entries of the same alternation. Their share of the expedited forward is the median
  over the rounds of their time over the expedited forward's time in that round (paired, like the ratios).
* Throughput: images per second at a larger batch, alternated the same way.
* Peak memory: on CUDA the allocator's peak; on CPU the peak of tensor allocations seen by ``torch.profiler``
  (op granularity), both above what was allocated before the forward.
"""

from __future__ import annotations

import contextlib
import functools
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any
from unittest import mock

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from .. import hourglass
from .case import BenchmarkCase
from .ideal import IdealModel


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def timed_rounds(
    work: dict[str, Callable[[], Any]], device: torch.device, repeats: int = 5, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each piece of ``work``, measured in turns after ``warmup`` rounds. The order rotates from
    round to round (A B C, B C A, C A B, ...), so that each takes every place in the round equally often over a
    multiple of ``len(work)`` rounds."""
    times: dict[str, list[float]] = {name: [] for name in work}
    names = list(work)
    for round_index in range(warmup + repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            _synchronize(device)
            start = time.perf_counter()
            work[name]()
            _synchronize(device)
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def forwards(models: dict[str, nn.Module], inputs: dict[str, torch.Tensor]) -> dict[str, Callable[[], Any]]:
    """One forward of each model on ``inputs``, as work for :func:`timed_rounds`."""
    return {name: functools.partial(model, **inputs) for name, model in models.items()}


def alternated_latencies(
    models: dict[str, nn.Module], inputs: dict[str, torch.Tensor], repeats: int = 5, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per forward of each model on ``inputs``, the models run in turns (:func:`timed_rounds`)."""
    return timed_rounds(forwards(models, inputs), _device(next(iter(models.values()))), repeats, warmup)


def round_ratios(times: dict[str, list[float]], numerator: str | tuple[str, ...], denominator: str) -> list[float]:
    """``numerator / denominator`` time within each round of :func:`timed_rounds` (a tuple of names: their sum)."""
    parts = [times[name] for name in ((numerator,) if isinstance(numerator, str) else numerator)]
    return [sum(top) / bottom for *top, bottom in zip(*parts, times[denominator], strict=True)]


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """First quartile, median and third quartile (inclusive method: within the values' range for any count)."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    first, median, third = statistics.quantiles(values, n=4, method="inclusive")
    return first, median, third


def _module_key(root: nn.Module, module: nn.Module) -> str:
    """The name ``FlopCounterMode`` gives ``module`` inside ``root``."""
    for path, candidate in root.named_modules():
        if candidate is module:
            return type(root).__name__ + (f".{path}" if path else "")
    raise ValueError(f"{type(module).__name__} is not a submodule of {type(root).__name__}.")


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


_EXTRA_FLOP_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


@torch.inference_mode()
def count_flops(model: nn.Module, inputs: dict[str, torch.Tensor], part: nn.Module | None = None) -> int:
    """FLOPs (2 per multiply-add) of one forward of ``model``, or of its submodule ``part`` within that forward."""
    with FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS) as counter:
        model(**inputs)
    if part is None:
        return counter.get_total_flops()
    return sum(counter.get_flop_counts()[_module_key(model, part)].values())


@contextlib.contextmanager
def quiet_profiler(profile_memory: bool = False) -> Iterator[torch.profiler.profile]:
    """``torch.profiler.profile`` on the CPU without the lines its native backend writes to the process's stderr at
    every start and stop (``USDT: ... profiler_start``), which would fill the benchmark's output. Python errors
    still propagate; the descriptor is restored on the way out."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            activities = [torch.profiler.ProfilerActivity.CPU]
            with torch.profiler.profile(activities=activities, profile_memory=profile_memory) as run:
                yield run
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class _RecordedReconstruction:
    """A clustering point's reconstruction that keeps every reduced tensor it is applied to."""

    def __init__(self, reconstruction: Any):
        self.reconstruction = reconstruction
        self.applied: list[torch.Tensor] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.reconstruction, name)

    def __call__(self, reduced: torch.Tensor) -> torch.Tensor:
        self.applied.append(reduced)
        return self.reconstruction(reduced)


def overhead_replays(model: nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, Callable[[], None]]:
    """Replays of Expedite's own work in one forward of ``model`` on ``inputs``: ``clustering`` (centres and
    reconstruction weights, every clustering point) and ``reconstruction`` (every application), each on the inputs
    that forward gave it."""
    cluster = hourglass._cluster
    points: list[tuple[tuple, _RecordedReconstruction]] = []

    def recording(*arguments: Any) -> tuple[torch.Tensor, _RecordedReconstruction]:
        centres, reconstruction = cluster(*arguments)
        points.append((arguments, _RecordedReconstruction(reconstruction)))
        return centres, points[-1][1]

    with torch.inference_mode(), mock.patch.object(hourglass, "_cluster", recording):
        model(**inputs)

    def clustering() -> None:
        for arguments, _ in points:
            cluster(*arguments)

    def reconstruction() -> None:
        for _, recorded in points:
            for reduced in recorded.applied:
                recorded.reconstruction(reduced)

    return {"clustering": clustering, "reconstruction": reconstruction}


def expedite_overhead(
    model: nn.Module, inputs: dict[str, torch.Tensor], repeats: int = 5, warmup: int = 1
) -> dict[str, float]:
    """Median seconds per forward spent in ``clustering`` and ``reconstruction`` (:func:`overhead_replays`), the two
    replayed in turns."""
    times = timed_rounds(overhead_replays(model, inputs), _device(model), repeats, warmup)
    return {name: statistics.median(values) for name, values in times.items()}


@torch.inference_mode()
def peak_memory(model: nn.Module, inputs: dict[str, torch.Tensor]) -> float:
    """Peak bytes allocated by one forward (see the module docstring for how, per device)."""
    device = _device(model)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        baseline = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        model(**inputs)
        torch.cuda.synchronize(device)
        return float(torch.cuda.max_memory_allocated(device) - baseline)
    with quiet_profiler(profile_memory=True) as profile:
        model(**inputs)
    current = peak = 0
    for event in sorted(profile.events(), key=lambda e: e.time_range.start):
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return float(peak)


def batched(inputs: dict[str, torch.Tensor], batch_size: int) -> dict[str, torch.Tensor]:
    """The inputs repeated along the batch dimension to ``batch_size`` items (a multiple of the given batch)."""
    reps = -(-batch_size // next(iter(inputs.values())).shape[0])
    return {key: value.repeat(reps, *([1] * (value.dim() - 1)))[:batch_size] for key, value in inputs.items()}


@dataclass
class CaseResult:
    """What the benchmark reports for one case (times in milliseconds, FLOPs in GFLOPs of 2 per multiply-add)."""

    name: str
    description: str
    vanilla_ms: float
    expedited_ms: float
    speedup: float
    ideal_ms: float
    ratio_to_ideal: float  # expedited speed-up / ideal speed-up: median over rounds of ideal / expedited latency
    ratio_to_ideal_iqr: tuple[float, float]  # its first and third quartile over the rounds
    vanilla_gflops: float
    expedited_gflops: float
    flops_ratio: float
    overhead_share: float  # median over rounds of (clustering + reconstruction) / expedited latency
    overhead_share_iqr: tuple[float, float]  # its first and third quartile over the rounds
    clustering_ms: float
    reconstruction_ms: float
    output_relative_error: float
    vanilla_peak_mb: float
    expedited_peak_mb: float
    throughput_batch: int | None = None
    vanilla_images_per_s: float | None = None
    expedited_images_per_s: float | None = None
    throughput_ratio: float | None = None
    backbone_vanilla_gflops: float | None = None
    backbone_expedited_gflops: float | None = None
    backbone_flops_ratio: float | None = None
    notes: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


@torch.inference_mode()
def output_relative_error(vanilla: nn.Module, expedited: nn.Module, inputs: dict[str, torch.Tensor]) -> float:
    """``|e - v| / |v|`` of the primary output (``last_hidden_state``, ``predicted_depth``, ``logits``, ...)."""
    reference, output = vanilla(**inputs)[0].float(), expedited(**inputs)[0].float()
    return float((output - reference).norm() / reference.norm())


def run_case(
    case: BenchmarkCase, repeats: int = 5, warmup: int = 1, throughput_batch: int | None = None
) -> CaseResult:
    """Measure one case: alternated latencies, FLOPs (whole model and backbone), overhead share, peak memory, and,
    with ``throughput_batch``, images per second at that batch size."""
    models = {"vanilla": case.vanilla.eval(), "expedited": case.expedited.eval()}
    timed = case.timed or {**models, "ideal": IdealModel(case.expedited)}
    work = forwards(timed, case.inputs) | overhead_replays(case.expedited, case.inputs)
    times = timed_rounds(work, _device(case.expedited), repeats, warmup)
    vanilla_s, expedited_s = statistics.median(times["vanilla"]), statistics.median(times["expedited"])
    ideal_first, ideal_ratio, ideal_third = quartiles(round_ratios(times, "ideal", "expedited"))
    share_first, share, share_third = quartiles(round_ratios(times, ("clustering", "reconstruction"), "expedited"))
    flops = {name: count_flops(model, case.inputs) for name, model in models.items()}
    result = CaseResult(
        name=case.name,
        description=case.description,
        vanilla_ms=vanilla_s * 1e3,
        expedited_ms=expedited_s * 1e3,
        speedup=statistics.median(round_ratios(times, "vanilla", "expedited")),
        ideal_ms=statistics.median(times["ideal"]) * 1e3,
        ratio_to_ideal=ideal_ratio,
        ratio_to_ideal_iqr=(ideal_first, ideal_third),
        vanilla_gflops=flops["vanilla"] / 1e9,
        expedited_gflops=flops["expedited"] / 1e9,
        flops_ratio=flops["expedited"] / flops["vanilla"],
        overhead_share=share,
        overhead_share_iqr=(share_first, share_third),
        clustering_ms=statistics.median(times["clustering"]) * 1e3,
        reconstruction_ms=statistics.median(times["reconstruction"]) * 1e3,
        output_relative_error=output_relative_error(timed["vanilla"], timed["expedited"], case.inputs),
        vanilla_peak_mb=peak_memory(case.vanilla, case.inputs) / 2**20,
        expedited_peak_mb=peak_memory(case.expedited, case.inputs) / 2**20,
        notes=case.notes,
    )
    if throughput_batch:
        inputs = batched(case.inputs, throughput_batch)
        pair = {name: timed[name] for name in models}
        batch_times = alternated_latencies(pair, inputs, repeats=max(1, repeats // 2), warmup=warmup)
        result.throughput_batch = throughput_batch
        result.vanilla_images_per_s = throughput_batch / statistics.median(batch_times["vanilla"])
        result.expedited_images_per_s = throughput_batch / statistics.median(batch_times["expedited"])
        result.throughput_ratio = result.expedited_images_per_s / result.vanilla_images_per_s
    if case.backbone is not None:
        parts = {name: count_flops(model, case.inputs, case.backbone(model)) for name, model in models.items()}
        result.backbone_vanilla_gflops = parts["vanilla"] / 1e9
        result.backbone_expedited_gflops = parts["expedited"] / 1e9
        result.backbone_flops_ratio = parts["expedited"] / parts["vanilla"]
    return result
