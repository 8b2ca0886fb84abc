"""Token clustering: N patch tokens on an H x W grid -> M = h x w cluster centres.

Spatially constrained soft k-means (``expedite-algorithm.md`` section 1):

1. initial centres are the adaptive average pooling of the token map to ``h x w``;
2. every token has a *home* cell on the cluster grid (nearest-neighbour upsampling of the cluster-grid labels, exactly
   as ``F.interpolate(mode="nearest")`` maps them) and may only join the clusters within ``window_size // 2`` cells of
   it (clipped at the border, no wrap-around);
3. ``iterations`` times: squared distances to the candidate centres, ``softmax(-d / temperature)`` over the candidates
   of each token, and every centre becomes the assignment-weighted mean of its tokens.

:func:`cluster_tokens` is the local (sparse) formulation the models run: per token only its ``window_size**2``
candidate centres are touched, so the cost grows as ``N * window_size**2`` instead of ``N * M``.
:func:`cluster_tokens_dense` is the masked ``(B, M, N)`` formulation of the paper, kept as a reference for tests.
All maths runs in (at least) float32; the centres come back in the input dtype. Every step is differentiable: with
autograd on (training, fine-tuning) gradients flow through the soft k-means to the tokens.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F


def check_grids(grid: tuple[int, int], cluster_grid: tuple[int, int]) -> None:
    """Raise a ``ValueError`` unless ``cluster_grid`` is a non-empty grid no larger than ``grid`` along each side."""
    (height, width), (rows, cols) = grid, cluster_grid
    if rows < 1 or cols < 1:
        raise ValueError(f"The cluster grid must have at least one cell per side, got {rows} x {cols}.")
    if rows > height or cols > width:
        raise ValueError(
            f"The cluster grid {rows} x {cols} is larger than the token grid {height} x {width}: clustering can only "
            "reduce the number of tokens. Use a smaller `num_clusters` or `cluster_ratio`, or a larger input."
        )


def home_cells(grid: tuple[int, int], cluster_grid: tuple[int, int], device: torch.device | None = None) -> torch.Tensor:
    """The home cluster cell (row-major index into ``cluster_grid``) of every token of ``grid``, as int64 ``(N,)``:
    ``F.interpolate(mode="nearest")`` of the label grid, the rule of the official code (see :func:`nearest_sources`)."""
    rows = torch.tensor(nearest_sources(grid[0], cluster_grid[0]), dtype=torch.long, device=device)
    cols = torch.tensor(nearest_sources(grid[1], cluster_grid[1]), dtype=torch.long, device=device)
    return (rows[:, None] * cluster_grid[1] + cols[None, :]).flatten()


def nearest_sources(output_size: int, input_size: int) -> list[int]:
    """Source index of every output index of ``F.interpolate(mode="nearest")`` along one axis, in plain Python.

    PyTorch's rule for the float32 label maps of the official code: the identity and ``i >> 1`` for exact 1x and 2x,
    else ``min(floor(i * scale), input_size - 1)`` with ``scale = input_size / output_size`` and the product in float32
    (it differs from ``(i * in) // out``, and from float64 maps, for a few sizes). Python integers keep every layout a
    constant for ``torch.compile`` and ``torch.export``.
    """
    if output_size == input_size:
        return list(range(output_size))
    if output_size == 2 * input_size:
        return [index >> 1 for index in range(output_size)]
    scale = np.float32(input_size) / np.float32(output_size)
    return [min(int(np.floor(np.float32(index) * scale)), input_size - 1) for index in range(output_size)]


class LocalLayout(NamedTuple):
    """Token/centre tiling that lets the local clustering run as small dense matrix products.

    The cluster grid is cut into square tiles of ``tile`` cells. The tokens whose home cell lies in a tile form a
    rectangular block of the token map, and all their candidate clusters lie in the tile grown by the window radius.
    Each tile therefore needs one ``(tokens_per_tile x region) @ (region x C)`` product, and the total cost grows as
    ``N * (tile + window - 1)**2``, i.e. as ``N * window**2`` for ``tile ~ window``.
    """

    tile_tokens: torch.Tensor  # (T, n) token index per tile slot; N marks an empty slot
    tile_centres: torch.Tensor  # (T, m) cluster index per region slot; M marks a slot outside the grid
    allowed: torch.Tensor  # (T, n, m) token may join that cluster (locality window, inside the grid)
    token_valid: torch.Tensor  # (T, n) slot holds a real token


def _axis_tiles(
    size: int, cells: int, tile: int, radius: int, home: list[int], device: torch.device | None
) -> tuple[torch.Tensor, ...]:
    """Per tile along one axis: token positions (with validity), their home cells, and the cluster positions of the
    tile's grown region. Computed in Python from the sizes alone (``home`` is monotone), so no value depends on data."""
    num_tiles = -(-cells // tile)
    counts = [0] * num_tiles
    for cell in home:
        counts[cell // tile] += 1
    starts = [sum(counts[:index]) for index in range(num_tiles)]
    span = max(counts)
    token_pos = [[min(start + slot, size - 1) for slot in range(span)] for start in starts]
    token_ok = [[slot < count for slot in range(span)] for count in counts]
    cell_pos = [[index * tile - radius + offset for offset in range(tile + 2 * radius)] for index in range(num_tiles)]
    as_tensor = functools.partial(torch.tensor, device=device)
    token_home = [[home[position] for position in row] for row in token_pos]
    return as_tensor(token_pos), as_tensor(token_ok), as_tensor(token_home), as_tensor(cell_pos)


def local_layout(
    grid: tuple[int, int], cluster_grid: tuple[int, int], window_size: int, device: torch.device | None = None
) -> LocalLayout:
    """Tiling of ``grid`` / ``cluster_grid`` for :func:`cluster_tokens` (see :class:`LocalLayout`).

    It depends on the sizes alone, so it is built once per sizes and device and reused (the callers only read it);
    under ``torch.compile`` it is traced as part of the graph instead.
    """
    if torch.compiler.is_compiling():
        return _build_local_layout(grid, cluster_grid, window_size, device)
    key = (tuple(map(int, grid)), tuple(map(int, cluster_grid)), int(window_size))
    return _cached_local_layout(*key, None if device is None else torch.device(device))


@functools.lru_cache(maxsize=32)
def _cached_local_layout(
    grid: tuple[int, int], cluster_grid: tuple[int, int], window_size: int, device: torch.device | None
) -> LocalLayout:
    with torch.inference_mode(False):  # normal tensors, usable where autograd records (not inference tensors)
        return _build_local_layout(grid, cluster_grid, window_size, device)


def _build_local_layout(
    grid: tuple[int, int], cluster_grid: tuple[int, int], window_size: int, device: torch.device | None
) -> LocalLayout:
    (height, width), (rows, cols) = grid, cluster_grid
    radius = window_size // 2
    tile, region_radius = max(window_size - 1, 1), radius
    if tile + 2 * radius >= max(rows, cols):  # the grown region covers the grid: one tile, i.e. the dense form
        tile, region_radius = max(rows, cols), 0
    y, y_ok, y_home, cell_y = _axis_tiles(height, rows, tile, region_radius, nearest_sources(height, rows), device)
    x, x_ok, x_home, cell_x = _axis_tiles(width, cols, tile, region_radius, nearest_sources(width, cols), device)
    tiles_y, tiles_x = y.shape[0], x.shape[0]
    # token slots: (Ty, Tx, ny, nx)
    token_ok = y_ok[:, None, :, None] & x_ok[None, :, None, :]
    tile_tokens = (y[:, None, :, None] * width + x[None, :, None, :]).masked_fill(~token_ok, height * width)
    # region slots: (Ty, Tx, my, mx)
    cell_ok = ((cell_y >= 0) & (cell_y < rows))[:, None, :, None] & ((cell_x >= 0) & (cell_x < cols))[None, :, None, :]
    tile_centres = (cell_y[:, None, :, None] * cols + cell_x[None, :, None, :]).masked_fill(~cell_ok, rows * cols)
    near_y = (y_home[:, :, None] - cell_y[:, None, :]).abs() <= radius  # (Ty, ny, my)
    near_x = (x_home[:, :, None] - cell_x[:, None, :]).abs() <= radius  # (Tx, nx, mx)
    allowed = near_y[:, None, :, None, :, None] & near_x[None, :, None, :, None, :]  # (Ty, Tx, ny, nx, my, mx)
    allowed = allowed & cell_ok[:, :, None, None] & token_ok[..., None, None]
    num_tiles = tiles_y * tiles_x
    n, m = token_ok.shape[2] * token_ok.shape[3], tile_centres.shape[2] * tile_centres.shape[3]
    return LocalLayout(
        tile_tokens.reshape(num_tiles, n),
        tile_centres.reshape(num_tiles, m),
        allowed.reshape(num_tiles, n, m),
        token_ok.reshape(num_tiles, n),
    )


def batch_rows(index: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """Row indices into the ``(batch * length, C)`` flattening of a ``(batch, length, C)`` tensor: ``index`` in every
    item. Gathers and scatters run on that 2-D view along dim 0, the fast path on CPU (along dim 1 of the 3-D tensor,
    ``index_select`` is an order of magnitude slower)."""
    offsets = torch.arange(0, batch * length, length, device=index.device)
    return (offsets[:, None] + index[None, :]).flatten()


def take_rows(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``tokens[:, index]`` for ``(B, L, C)`` tokens and an ``(K,)`` index, gathered on the flattened rows
    (:func:`batch_rows`)."""
    batch, length, channels = tokens.shape
    return tokens.reshape(-1, channels).index_select(0, batch_rows(index, batch, length)).view(batch, -1, channels)


def initial_centres(tokens: torch.Tensor, grid: tuple[int, int], cluster_grid: tuple[int, int]) -> torch.Tensor:
    """Adaptive average pooling of the ``(B, N, C)`` token map to ``(B, M, C)`` centres.

    The tokens are pooled as a channels-last view of the map, without a copy to channels-first.
    """
    batch, _, channels = tokens.shape
    token_map = tokens.view(batch, *grid, channels).permute(0, 3, 1, 2)
    pooled = F.adaptive_avg_pool2d(token_map, cluster_grid)
    return pooled.permute(0, 2, 3, 1).reshape(batch, -1, channels)


def without_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast switched off on ``device`` while clustering and reconstruction run: their distance products must
    stay in float32 (a bfloat16 ``|x|^2 + |s|^2 - 2<x, s>`` cancels catastrophically) whatever the caller's autocast."""
    if torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def centred(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens in (at least) float32 minus their per-item mean, and that mean.

    Distances do not change under a common shift, and removing it keeps the expanded form
    ``|x|^2 + |s|^2 - 2<x, s>`` accurate for the large common components of transformer residual streams.
    """
    x = tokens.to(torch.promote_types(tokens.dtype, torch.float32))
    shift = x.mean(1, keepdim=True)
    return x - shift, shift


def weighted_means(numerator: torch.Tensor, mass: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Centred centres ``numerator / mass`` with the official ``1e-16`` floor on the mass, as if uncentred.

    The official code divides the uncentred sum ``sum(a * t)`` by ``max(mass, 1e-16)``: a cluster that receives
    (almost) no mass collapses towards the origin, not to the token mean. ``numerator`` sums centred tokens, so the
    mean's share ``shift * mass / max(mass, 1e-16)`` is added back (and ``shift`` subtracted to stay centred); for any
    cluster with mass above the floor that correction is exactly zero.
    """
    floored = mass.clamp_min(1e-16)
    return (numerator / floored[..., None]).addcmul_(shift, (mass / floored - 1)[..., None])


def _check_inputs(tokens: torch.Tensor, grid: tuple[int, int], cluster_grid: tuple[int, int], window_size: int) -> None:
    if tokens.dim() != 3 or tokens.shape[1] != grid[0] * grid[1]:
        raise ValueError(f"Expected (batch, {grid[0]}*{grid[1]}, channels) tokens, got shape {tuple(tokens.shape)}.")
    if window_size < 1 or window_size % 2 == 0:
        raise ValueError(f"`clustering_window_size` must be a positive odd number, got {window_size}.")
    check_grids(grid, cluster_grid)


def cluster_tokens(
    tokens: torch.Tensor,
    grid: tuple[int, int],
    cluster_grid: tuple[int, int],
    iterations: int = 5,
    temperature: float = 1.0,
    window_size: int = 5,
) -> torch.Tensor:
    """Cluster ``(B, N, C)`` patch tokens on ``grid`` into ``(B, M, C)`` centres on ``cluster_grid`` (local form).

    Args:
        tokens: patch tokens only (no CLS/register tokens), row-major over ``grid``.
        grid: token grid ``(H, W)`` with ``H * W == N``.
        cluster_grid: cluster grid ``(h, w)``, at most ``grid`` along each side.
        iterations: EM iterations (kappa); 0 returns the adaptive average pooling.
        temperature: divisor of the negative squared distance in the softmax over clusters.
        window_size: odd locality window, in cluster-grid cells.
    """
    _check_inputs(tokens, grid, cluster_grid, window_size)
    x = tokens.to(torch.promote_types(tokens.dtype, torch.float32))
    pooled = initial_centres(x, grid, cluster_grid)
    if iterations == 0:  # pooled from the tokens themselves: exact when the cluster grid equals the token grid
        return pooled.to(tokens.dtype)
    shift = x.mean(1, keepdim=True)  # the tokens are centred (see :func:`centred`) as they are gathered into tiles
    centres = pooled - shift
    batch, num_clusters, channels = centres.shape
    layout = local_layout(grid, cluster_grid, window_size, x.device)
    num_tiles, tile_tokens = layout.tile_tokens.shape
    tile_clusters = layout.tile_centres.shape[1]
    # Row M of the centres stands for region slots outside the grid, which no token may join. Empty token slots
    # (index N) read the last token instead: their assignments are zeroed, so they add nothing to any centre.
    centres = torch.cat([centres, centres.new_zeros(batch, 1, channels)], 1)
    slots = layout.tile_tokens.view(-1).clamp(max=x.shape[1] - 1)
    x_tiles = take_rows(x, slots).sub_(shift).view(batch * num_tiles, tile_tokens, channels)  # gathered once
    # softmax(-|x - s|^2 / t) over a token's candidates = softmax((2<x, s> - |s|^2) / t): |x|^2 is constant per
    # token. Forbidden pairs get -inf; empty token slots allow everything (finite) and are zeroed afterwards.
    forbidden = ~(layout.allowed | ~layout.token_valid[..., None])
    mask = torch.zeros(forbidden.shape, dtype=x.dtype, device=x.device).masked_fill_(forbidden, -math.inf)
    token_weight = layout.token_valid.to(x.dtype)[None, :, :, None]
    region_rows = batch_rows(layout.tile_centres.view(-1), batch, num_clusters + 1)
    # Without autograd (and outside torch.compile, which plans its own memory) the two large per-iteration products
    # (regions, then their partial sums: same shape) and the logits are written into buffers allocated once: fresh
    # tensors of this size would page-fault at every iteration.
    reuse = not (torch.compiler.is_compiling() or (torch.is_grad_enabled() and tokens.requires_grad))
    regions = x.new_empty(batch * num_tiles, tile_clusters, channels) if reuse else None
    logits = x.new_empty(batch * num_tiles, tile_tokens, tile_clusters) if reuse else None
    for _ in range(iterations):
        region = torch.index_select(centres.view(-1, channels), 0, region_rows, out=_rows(regions))
        norms = centres.square().sum(-1).view(-1).index_select(0, region_rows).view(batch, num_tiles, 1, -1)
        bias = (mask - norms / temperature).view(batch * num_tiles, tile_tokens, tile_clusters)
        region = region.view(-1, tile_clusters, channels).transpose(1, 2)
        scores = torch.baddbmm(bias, x_tiles, region, alpha=2.0 / temperature, out=logits)
        assign = torch.softmax(scores, dim=-1).view(batch, num_tiles, tile_tokens, tile_clusters) * token_weight
        assign = assign.reshape(batch * num_tiles, tile_tokens, tile_clusters)
        sums = torch.bmm(assign.transpose(1, 2), x_tiles, out=regions)  # the regions are no longer needed
        numerator, mass = x.new_zeros(centres.shape), x.new_zeros(centres.shape[:2])
        numerator.view(-1, channels).index_add_(0, region_rows, sums.view(-1, channels))
        mass.view(-1).index_add_(0, region_rows, assign.sum(1).view(-1))
        centres = weighted_means(numerator, mass, shift)
    centres = centres[:, :num_clusters]
    return (centres + shift).to(tokens.dtype)


def _rows(buffer: torch.Tensor | None) -> torch.Tensor | None:
    """A ``(..., C)`` buffer as ``(rows, C)``, the shape ``index_select`` writes (``None`` stays ``None``)."""
    return None if buffer is None else buffer.view(-1, buffer.shape[-1])


def cluster_tokens_dense(
    tokens: torch.Tensor,
    grid: tuple[int, int],
    cluster_grid: tuple[int, int],
    iterations: int = 5,
    temperature: float = 1.0,
    window_size: int = 5,
) -> torch.Tensor:
    """Reference implementation of :func:`cluster_tokens` with dense ``(B, M, N)`` masked distances (for tests)."""
    _check_inputs(tokens, grid, cluster_grid, window_size)
    x, shift = centred(tokens)
    centres = initial_centres(tokens.to(x.dtype), grid, cluster_grid) - shift
    rows, cols = cluster_grid
    home = home_cells(grid, cluster_grid, x.device)
    cluster_ids = torch.arange(rows * cols, device=x.device)
    radius = window_size // 2
    allowed = ((home[None, :] // cols - cluster_ids[:, None] // cols).abs() <= radius) & (
        (home[None, :] % cols - cluster_ids[:, None] % cols).abs() <= radius
    )
    for _ in range(iterations):
        dist = centres.square().sum(-1)[..., None] + x.square().sum(-1)[:, None, :] - 2 * centres @ x.transpose(1, 2)
        assign = torch.softmax(-dist.masked_fill(~allowed, math.inf) / temperature, dim=1)
        centres = weighted_means(assign @ x, assign.sum(-1), shift)
    return (centres + shift).to(tokens.dtype)
