"""Expedite inside attention windows, for Swin-style encoders (model-agnostic helpers).

Windowed Expedite (``DESIGN.md``, "Swin and Swinv2 specifics"; ``expedite-algorithm.md`` 3.3): before block
``clustering_location`` (counted over all stages) the stage map is zero-padded to multiples of the attention window K,
cut into the *unshifted* K x K windows, and each window (a batch item) is clustered to k x k tokens
(``clustered_window_size``). The windows' centres form a ``(Hp / K * k) x (Wp / K * k)`` map whose unshifted k x k
windows are exactly the original windows, so the following blocks of the stage run on it with window k and shift
``k // 2`` where the vanilla block shifts. Before the stage output, per window reconstruction brings back K * K tokens,
then the map is un-partitioned and the padding cropped: everything after the stage sees full-resolution tokens.

Every step of clustering and reconstruction, window partitioning included, runs under the profiler labels of
:mod:`hf_expedite.hourglass`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from .compat import window_partition, window_reverse
from .hourglass import CLUSTERING_SCOPE, RECONSTRUCTION_SCOPE, cluster_with_settings
from .ops.reconstruction import TokenReconstruction
from .settings import WindowedExpediteSettings, fill_defaults, is_int, validate_settings, validate_when_expedited


@dataclass(frozen=True)
class ClusteredSpan:
    """The blocks that run on clustered windows: ``blocks[start:stop]`` of stage ``stage`` (local indices)."""

    stage: int
    start: int
    stop: int


def clustered_span(
    depths: Sequence[int], clustering_location: int, reconstruction_location: int | None
) -> ClusteredSpan:
    """Locate the clustered blocks of a Swin encoder from global block counts; a span crossing a stage is an error."""
    first = 0
    for stage, depth in enumerate(depths):
        if first <= clustering_location < first + depth:
            break
        first += depth
    else:
        raise ValueError(
            f"Invalid Expedite setting `clustering_location={clustering_location!r}`: the number of Swin blocks "
            f"(counted over all stages) before clustering must lie in 0..{sum(depths) - 1}."
        )
    last = first + depth
    if reconstruction_location is None:
        return ClusteredSpan(stage, clustering_location - first, depth)
    if not clustering_location < reconstruction_location <= last:
        raise ValueError(
            f"Invalid Expedite setting `reconstruction_location={reconstruction_location!r}`: clustering before block "
            f"{clustering_location} lies in stage {stage + 1} (blocks {first}..{last - 1}), and reconstruction must "
            f"happen in the same stage, before its patch merging (crossing a stage boundary is not supported): "
            f"{clustering_location + 1}..{last}, or None for the end of the stage."
        )
    return ClusteredSpan(stage, clustering_location - first, reconstruction_location - first)


def stage_windows(config: Any, clamp_to_image: bool = False) -> list[int]:
    """Attention window per stage of a Swin config.

    Swin v1 attends in ``window_size`` windows at every stage (``SwinBackbone`` pads small maps). Swinv2 fixes each
    block's window at construction to ``min(window_size, stage resolution of config.image_size)``
    (``clamp_to_image``).
    """
    if not clamp_to_image:
        return [config.window_size] * len(config.depths)
    image = config.image_size if isinstance(config.image_size, (list, tuple)) else (config.image_size,) * 2
    patch = config.patch_size if isinstance(config.patch_size, (list, tuple)) else (config.patch_size,) * 2
    height = image[0] // patch[0]
    return [min(config.window_size, height // 2**stage) for stage in range(len(config.depths))]


def finalize_windowed_settings(config: WindowedExpediteSettings, architecture: str, windows: Sequence[int]) -> None:
    """Fill a Swin config's unset settings from the ``default`` preset and validate them (``ValueError``)."""
    fill_windowed_settings(config, architecture)
    validate_when_expedited(config, lambda: checked_span(config, windows))


def fill_windowed_settings(config: WindowedExpediteSettings, architecture: str) -> None:
    """Fill a windowed config's unset settings from the architecture's ``default`` preset.

    ``num_clusters`` is the per-window cluster grid, always ``[k, k]`` with k = ``clustered_window_size`` (setting
    ``num_clusters`` alone chooses k); ``cluster_ratio`` does not apply to fixed-size windows (``ValueError``).
    """
    from .presets import get_preset  # presets resolve against configs: import at call time, as settings does

    if config.cluster_ratio is not None:
        raise ValueError(
            f"Invalid Expedite setting `cluster_ratio={config.cluster_ratio!r}`: this model clusters every attention "
            "window to a fixed grid; set `clustered_window_size` (the window after clustering) instead."
        )
    if config.num_clusters is not None:
        grid = list(config.num_clusters)
        if len(grid) != 2 or grid[0] != grid[1] or config.clustered_window_size not in (None, grid[0]):
            raise ValueError(
                f"Invalid Expedite setting `num_clusters={grid}`: for windowed attention it is the per-window cluster "
                f"grid [k, k] with k = clustered_window_size ({config.clustered_window_size}); set "
                "`clustered_window_size` alone."
            )
        config.clustered_window_size = grid[0]
    fill_defaults(config, get_preset(architecture, "default").resolve(config))
    if is_int(config.clustered_window_size):
        config.num_clusters = [config.clustered_window_size, config.clustered_window_size]


def check_clustered_window(config: WindowedExpediteSettings) -> None:
    """``clustered_window_size`` is a positive integer and ``num_clusters`` is ``[k, k]`` with it (``ValueError``)."""
    clustered = config.clustered_window_size
    if not is_int(clustered) or clustered < 1:
        raise ValueError(
            f"Invalid Expedite setting `clustered_window_size={clustered!r}`: the attention window after clustering "
            "must be a positive integer, at most the attention window."
        )
    if list(config.num_clusters or ()) != [clustered, clustered]:
        raise ValueError(
            f"Invalid Expedite setting `num_clusters={config.num_clusters!r}`: for windowed attention it is the "
            f"per-window cluster grid [k, k] with k = clustered_window_size ({clustered}); after changing one on a "
            "built config, set the other to match (or build the config again with `clustered_window_size` alone)."
        )


def checked_span(config: WindowedExpediteSettings, windows: Sequence[int]) -> ClusteredSpan:
    """Validate a windowed config's settings (``ValueError``) and return its clustered span.

    The models call it as they read the settings, which may have been changed on the config after it was built.
    ``windows`` is the attention window per stage (:func:`stage_windows`).
    """
    check_clustered_window(config)
    validate_settings(config, sum(config.depths), "Swin blocks (counted over all stages)")
    span = clustered_span(config.depths, config.clustering_location, config.reconstruction_location)
    clustered = config.clustered_window_size
    if clustered > windows[span.stage]:
        raise ValueError(
            f"Invalid Expedite setting `clustered_window_size={clustered!r}`: the attention window after clustering "
            f"must lie in 1..{windows[span.stage]} (the attention window of stage {span.stage + 1}, where clustering "
            "happens)."
        )
    return span


def shifted_window_mask(
    height: int, width: int, window: int, shift: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor | None:
    """Additive ``(num_windows, window**2, window**2)`` mask (0 / -100) of shifted-window attention, ``None`` unshifted.

    The map is split along each axis into ``[0, n - window)``, ``[n - window, n - shift)`` and ``[n - shift, n)``
    (later ranges win where they overlap, as in the official code), and tokens of different regions may not attend
    to each other. With ``shift`` other than the roll of the block this reproduces the official mask after clustering
    (``official_shift_mask``).
    """
    if shift <= 0:
        return None

    def regions(size: int) -> torch.Tensor:
        index = torch.arange(size, device=device)
        return torch.where(index >= size - shift, 2, (index >= size - window).long())

    labels = (regions(height)[None, :, None, None] * 3 + regions(width)[None, None, :, None]).to(dtype)
    labels = window_partition(labels, window).reshape(-1, window * window)
    difference = labels.unsqueeze(1) - labels.unsqueeze(2)
    return difference.masked_fill(difference != 0, -100.0).masked_fill(difference == 0, 0.0)


def shifted_window_attention(
    hidden_map: torch.Tensor,
    window: int,
    shift: int,
    mask_shift: int,
    attend: Callable[[torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, Any]],
) -> tuple[torch.Tensor, Any]:
    """(Shifted-)window attention on a ``(B, H, W, C)`` map whose sides are multiples of ``window``.

    ``attend(windows (B * nW, window**2, C), mask)`` returns the attended windows and anything else (weights), which
    is passed through. The map is rolled by ``-shift`` before and back after; the mask uses ``mask_shift``.
    """
    batch, height, width, channels = hidden_map.shape
    if shift > 0:
        hidden_map = torch.roll(hidden_map, shifts=(-shift, -shift), dims=(1, 2))
    windows = window_partition(hidden_map, window).reshape(-1, window * window, channels)
    mask = shifted_window_mask(height, width, window, mask_shift if shift > 0 else 0, hidden_map.dtype, windows.device)
    attended, extra = attend(windows, mask)
    attended = window_reverse(attended.reshape(-1, window, window, channels), window, height, width)
    if shift > 0:
        attended = torch.roll(attended, shifts=(shift, shift), dims=(1, 2))
    return attended, extra


@dataclass(frozen=True)
class WindowClustering:
    """Per-call state of one windowed clustering point: the reconstruction weights and the geometry."""

    reconstruction: TokenReconstruction  # per window: (B * nW, K * K, k * k) weights
    grid: tuple[int, int]  # H, W of the stage map
    padded_grid: tuple[int, int]  # Hp, Wp: multiples of the window
    window: int  # K
    clustered_window: int  # k

    @property
    def reduced_grid(self) -> tuple[int, int]:
        """Sides of the clustered map: ``Hp / K * k`` by ``Wp / K * k``."""
        (height, width), ratio = self.padded_grid, self.clustered_window
        return height // self.window * ratio, width // self.window * ratio

    def reconstruct(self, reduced: torch.Tensor) -> torch.Tensor:
        """``(B, H' * W', C)`` clustered tokens -> ``(B, H * W, C)`` full-resolution tokens."""
        batch, _, channels = reduced.shape
        small, large = self.clustered_window, self.window
        with torch.profiler.record_function(RECONSTRUCTION_SCOPE):
            windows = window_partition(reduced.reshape(batch, *self.reduced_grid, channels), small)
            windows = windows.reshape(-1, small * small, channels)
        full = self.reconstruction(windows)
        with torch.profiler.record_function(RECONSTRUCTION_SCOPE):
            full = window_reverse(full.reshape(-1, large, large, channels), large, *self.padded_grid)
            height, width = self.grid
            return full[:, :height, :width].reshape(batch, height * width, channels)


def cluster_windows(
    tokens: torch.Tensor,
    grid: tuple[int, int],
    window: int,
    clustered_window: int,
    config: WindowedExpediteSettings,
    pad_small_maps: bool = False,
) -> tuple[torch.Tensor, WindowClustering]:
    """Cluster every K x K window of a ``(B, H * W, C)`` stage map to k x k tokens; return the clustered map.

    The map is zero-padded to multiples of K first; the padding tokens are clustered with the window they fall in.
    A map smaller than one window is an error unless ``pad_small_maps`` (SAM pads it like any other map; Swin shrinks
    its window to such a map instead, so clustering K x K windows there would not match the vanilla blocks).
    """
    height, width = grid
    if not pad_small_maps and (height < window or width < window):
        raise ValueError(
            f"The stage map where Expedite clusters is {height} x {width} tokens, smaller than one {window} x {window} "
            "attention window, so there is nothing to cluster. Use a larger input image, a later-starting "
            "`clustering_location` in a larger stage, or expedite=False."
        )
    batch, _, channels = tokens.shape
    with torch.profiler.record_function(CLUSTERING_SCOPE):
        padded = F.pad(tokens.reshape(batch, height, width, channels), (0, 0, 0, -width % window, 0, -height % window))
        windows = window_partition(padded, window).reshape(-1, window * window, channels)
    centres, reconstruction = cluster_with_settings(windows, (window, window), config, (clustered_window,) * 2)
    clustering = WindowClustering(reconstruction, grid, tuple(padded.shape[1:3]), window, clustered_window)
    with torch.profiler.record_function(CLUSTERING_SCOPE):
        centres = centres.reshape(-1, clustered_window, clustered_window, channels)
        reduced = window_reverse(centres, clustered_window, *clustering.reduced_grid)
        return reduced.reshape(batch, -1, channels), clustering


def run_windowed_blocks(
    blocks: Sequence[torch.nn.Module],
    hidden_states: torch.Tensor,
    grid: tuple[int, int],
    span: ClusteredSpan,
    window: int,
    shifts: Sequence[bool],
    config: WindowedExpediteSettings,
    call_block: Callable[[torch.nn.Module, torch.Tensor, tuple[int, int], dict[str, int]], tuple[torch.Tensor, Any]],
) -> tuple[torch.Tensor, Any]:
    """Run a stage's blocks on ``(B, H * W, C)`` tokens, clustering windows before ``blocks[span.start]``.

    ``call_block(block, states, grid, window_kwargs)`` runs one block and returns its output tokens and anything else
    (attention weights). Blocks of the span get ``window_kwargs`` with ``expedite_window`` (k), ``expedite_shift``
    (``k // 2`` where ``shifts[i]``, the vanilla block shifting, else 0) and ``expedite_mask_shift`` (the shift the
    attention mask is built with: the same, or ``K // 2`` with ``config.official_shift_mask``); other blocks get
    ``{}``. Returns the full-resolution output of the last block and that block's extra output.
    """
    clustered = config.clustered_window_size
    clustering, extra = None, None
    for index, block in enumerate(blocks):
        if index == span.start:
            hidden_states, clustering = cluster_windows(hidden_states, grid, window, clustered, config)
        if clustering is None:
            hidden_states, extra = call_block(block, hidden_states, grid, {})
            continue
        shift = clustered // 2 if shifts[index] else 0
        mask_shift = window // 2 if shift and config.official_shift_mask else shift
        window_kwargs = {"expedite_window": clustered, "expedite_shift": shift, "expedite_mask_shift": mask_shift}
        hidden_states, extra = call_block(block, hidden_states, clustering.reduced_grid, window_kwargs)
        if index + 1 == span.stop:
            hidden_states, clustering = clustering.reconstruct(hidden_states), None
    return hidden_states, extra


def relative_position_index(window: int, device: torch.device | None = None) -> torch.Tensor:
    """``(window**2, window**2)`` index into a ``(2 * window - 1)**2`` relative-position table (row-major offsets)."""
    axis = torch.arange(window, device=device)
    coords = torch.stack(torch.meshgrid(axis, axis, indexing="ij"))
    relative = coords.flatten(1)[:, :, None] - coords.flatten(1)[:, None, :] + (window - 1)
    return relative[0] * (2 * window - 1) + relative[1]


def resize_relative_position_table(table: torch.Tensor, window: int, new_window: int) -> torch.Tensor:
    """Bilinearly resize a ``((2K - 1)**2, heads)`` relative-position-bias table to ``((2k - 1)**2, heads)``.

    Per head, ``align_corners=False`` (the official rule). Computed, never stored.
    """
    if new_window == window:
        return table
    side, new_side = 2 * window - 1, 2 * new_window - 1
    grid = table.transpose(0, 1).reshape(1, -1, side, side)
    resized = F.interpolate(grid, size=(new_side, new_side), mode="bilinear", align_corners=False)
    return resized.reshape(-1, new_side * new_side).transpose(0, 1)
