"""Token reconstruction: M refined cluster tokens -> N full-resolution tokens (``expedite-algorithm.md`` section 2).

The weights are computed once, at the clustering point, from the N original tokens and the M centres, and are then
applied to any number of reduced tensors of that forward (the refined clusters after later blocks, or anything derived
from them token by token). Only the few kept weights of each token are stored, ``(B, N, W)`` values with their
cluster indices, and applied by a gather-and-weighted-sum (``F.embedding_bag``): O(N * W * C) work and O(N * W)
memory instead of a dense ``(B, N, M)`` matrix product. ``W`` is the largest number of weights any token keeps:
``k``, or more where distances tie with the k-th (the official rule keeps every tie; no tie is broken), 1 for
``"hard"``. Under ``torch.compile`` / ``torch.export``, whose graphs cannot depend on ``W``, the weights stay dense
(``(B, N, M)``, zeros included) and are applied by the matrix product; both forms give the same weights.

* ``"knn"``: ``w_ij = exp(-|z_i - s_j|^2 / temperature)`` kept for the ``k`` largest per token (every weight equal to
  the k-th largest is kept too, the official tie rule), normalised with ``"l1"`` (sum to one, the paper's weighted
  average) or ``"l2"`` (unit Euclidean norm, what ``F.normalize`` does in the official code);
* ``"hard"``: copy the nearest centre (global argmin), what the official DPT code runs.

``residual=True`` (not in the paper) also keeps what the clusters could not represent at the clustering point, the
detail ``z_i - sum_j w_ij s_j`` of every token, and adds it to each reconstruction: ``x_i = sum_j w_ij r_j + z_i -
sum_j w_ij s_j``. Blocks update tokens through residual connections, so the cluster tokens carry the update of the
blocks in between and the full-resolution detail comes back instead of being averaged away (fidelity per FLOP:
README, "Beyond the paper"). It applies to reduced tensors of the clustered tokens' width (hidden states).

The exponent is shifted by each row's smallest distance, so no row can underflow to all zeros (the official code
then outputs a zero token). The normalised weights are the official ones wherever those do not underflow in float32
and (L2) their norm is at least ``F.normalize``'s 1e-12 floor.

Every token has a *home* centre (its cell on the cluster grid, :func:`~hf_expedite.ops.clustering.home_cells`). Its
distance to that centre is computed directly, ``sum((z - s)**2)``, which is exactly 0 when the two are equal, and the
home centre wins any tie with another centre that lies within the rounding error of the expanded form
``|z|^2 + |s|^2 - 2<z, s>`` used for the other centres. So with a cluster grid equal to the token grid, no iterations
and top-1 (or hard) reconstruction, every token comes back bit for bit to its own place, whatever the BLAS kernel,
instruction set or thread count: near-identical or duplicated patches cannot swap places.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F

from .clustering import centred, home_cells, without_autocast

ReconstructionMode = Literal["knn", "hard"]
ReconstructionNormalization = Literal["l1", "l2"]


def squared_distances(tokens: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """``(B, N, M)`` squared Euclidean distances in the expanded form, clamped at 0 against rounding."""
    dot = tokens @ centres.transpose(1, 2)
    return (tokens.square().sum(-1)[..., None] + centres.square().sum(-1)[:, None, :] - 2 * dot).clamp_min(0)


def first_identical(centres: torch.Tensor) -> torch.Tensor | None:
    """For every centre of ``(B, M, C)``, the index of the first bit-identical centre of its batch item, ``(B, M)``;
    ``None`` when no two centres are identical (or under ``torch.compile``, which cannot branch on the data).

    Identical centres (e.g. the all-zero centres of padding windows) must get identical distances, so that the
    official tie rule keeps all of them; a matrix product can round identical columns differently. Centres are sorted
    (stably) on four of their channels, each is paired with the first centre of its run of equal keys, and a pair
    counts only if the whole centres are equal: a merge is always exact, and a key shared by different centres can
    at worst leave identical ones ungrouped (as without this step).
    """
    if torch.compiler.is_compiling():
        return None
    batch, count, channels = centres.shape
    order = torch.arange(count, device=centres.device).expand(batch, count)
    for channel in sorted({channels - 1, 2 * channels // 3, channels // 3, 0}):  # least significant key first
        keys = centres[:, :, channel].gather(-1, order)
        order = order.gather(-1, keys.argsort(dim=-1, stable=True))
    key_channels = sorted({0, channels // 3, 2 * channels // 3, channels - 1})
    keys = centres[:, :, key_channels].gather(1, order[..., None].expand(-1, -1, len(key_channels)))
    positions = torch.arange(count, device=centres.device).expand(batch, count)
    new_run = torch.cat([torch.ones_like(keys[:, :1, 0], dtype=torch.bool), (keys[:, 1:] != keys[:, :-1]).any(-1)], 1)
    first_in_run = order.gather(-1, torch.where(new_run, positions, 0).cummax(-1).values)
    candidate = torch.empty_like(order).scatter_(-1, order, first_in_run)
    items, rows = (candidate != positions).nonzero(as_tuple=True)
    if not len(rows):
        return None
    same = (centres[items, rows] == centres[items, candidate[items, rows]]).all(-1)
    if not same.any():
        return None
    canonical = positions.clone()
    canonical[items[same], rows[same]] = candidate[items[same], rows[same]]
    return canonical


def home_first_distances(
    tokens: torch.Tensor, centres: torch.Tensor, home: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances ``(B, N, M)`` and a ranking key ``(B, N, M)`` in which each token's home centre wins rounding ties.

    ``home`` holds every token's home cluster, ``(N,)``. Identical centres get identical distances
    (:func:`first_identical`). The distance to the home centre is computed directly (exact zero for an equal centre);
    the key lowers it by a bound on the expanded form's rounding error, ``(C + 2) * eps * (|z|^2 + |s|^2)``, so that no
    other centre can outrank it by rounding alone.
    """
    distances = squared_distances(tokens, centres)
    canonical = first_identical(centres)
    if canonical is not None:
        distances = distances.gather(-1, canonical[:, None, :].expand_as(distances))
    index = home.view(1, -1, 1).expand(tokens.shape[0], -1, 1)
    home_centres = centres[:, home]
    direct = (tokens - home_centres).square().sum(-1, keepdim=True)
    scale = tokens.square().sum(-1, keepdim=True) + home_centres.square().sum(-1, keepdim=True)
    rounding = (tokens.shape[-1] + 2) * torch.finfo(tokens.dtype).eps * scale
    distances = distances.scatter(-1, index, direct)
    return distances, distances.scatter(-1, index, direct - rounding)


def _check_knn(num_clusters: int, k: int, normalization: str) -> None:
    if not 1 <= k <= num_clusters:
        raise ValueError(f"`reconstruction_k` must lie in 1..{num_clusters} (the number of clusters), got {k}.")
    if normalization not in ("l1", "l2"):
        raise ValueError(f"`reconstruction_normalization` must be 'l1' or 'l2', got {normalization!r}.")


def knn_reconstruction(
    distances: torch.Tensor,
    k: int,
    temperature: float,
    normalization: ReconstructionNormalization,
    key: torch.Tensor | None = None,
) -> TokenReconstruction:
    """Top-k reconstruction from squared distances ``(B, N, M)``.

    The ``k`` nearest centres by ``key`` (default: the distances) are kept, and every centre whose key equals the k-th
    one too (the official tie rule); weights ``exp(-(d - min d) / temperature)``, then normalised.
    """
    num_clusters = distances.shape[-1]
    _check_knn(num_clusters, k, normalization)
    key = distances if key is None else key
    k_nearest = key.topk(k, dim=-1, largest=False)
    kth_nearest = k_nearest.values[..., -1:]
    nearest = distances.amin(-1, keepdim=True)
    indices = None
    if not torch.compiler.is_compiling():
        width = int((key <= kth_nearest).sum(-1).amax())  # k, or more where a distance ties with the k-th
        indices = k_nearest.indices if width == k else key.topk(width, dim=-1, largest=False).indices
        key, distances = key.gather(-1, indices), distances.gather(-1, indices)
    weights = torch.exp(-(distances - nearest) / temperature).masked_fill(key > kth_nearest, 0.0)
    if normalization == "l1":
        weights = weights / weights.sum(-1, keepdim=True)
    else:
        weights = F.normalize(weights, p=2.0, dim=-1)
    return TokenReconstruction(weights, indices, num_clusters)


def hard_reconstruction(key: torch.Tensor) -> TokenReconstruction:
    """Weight one on the nearest centre of each token (smallest ``key`` of ``(B, N, M)``)."""
    nearest = key.argmin(-1, keepdim=True)
    if torch.compiler.is_compiling():
        return TokenReconstruction(F.one_hot(nearest[..., 0], key.shape[-1]).to(key.dtype), None, key.shape[-1])
    return TokenReconstruction(torch.ones_like(nearest, dtype=key.dtype), nearest, key.shape[-1])


@dataclass(frozen=True)
class TokenReconstruction:
    """Reconstruction weights of one forward; call it on ``(B, M, C')`` reduced tokens to get ``(B, N, C')``."""

    weights: torch.Tensor
    """``(B, N, W)`` kept weights (float32 or float64); zero where a token keeps fewer than ``W``."""
    indices: torch.Tensor | None
    """``(B, N, W)`` the cluster of each weight; ``None``: dense weights, ``W = M``, weight ``j`` on cluster ``j``."""
    num_clusters: int
    detail: torch.Tensor | None = None
    """``(B, N, C)`` the tokens minus their reconstruction from the centres, added back (``residual=True``)."""

    PROFILER_SCOPE = "expedite::reconstruction"  # torch.profiler label of every application

    @classmethod
    def from_clustering(
        cls,
        tokens: torch.Tensor,
        centres: torch.Tensor,
        grid: tuple[int, int],
        cluster_grid: tuple[int, int],
        k: int = 20,
        temperature: float = 1.0,
        normalization: ReconstructionNormalization = "l1",
        mode: ReconstructionMode = "knn",
        residual: bool = False,
    ) -> TokenReconstruction:
        """Weights from the ``(B, N, C)`` tokens on ``grid`` and the ``(B, M, C)`` centres on ``cluster_grid``; with
        ``residual``, the detail the centres do not represent is kept and added to every reconstruction."""
        if mode not in ("knn", "hard"):
            raise ValueError(f"`reconstruction_mode` must be 'knn' or 'hard', got {mode!r}.")
        if tokens.shape[1] != grid[0] * grid[1] or centres.shape[1] != cluster_grid[0] * cluster_grid[1]:
            raise ValueError(
                f"Expected {grid[0]}*{grid[1]} tokens and {cluster_grid[0]}*{cluster_grid[1]} centres, got shapes "
                f"{tuple(tokens.shape)} and {tuple(centres.shape)}."
            )
        if mode == "knn":
            _check_knn(centres.shape[1], k, normalization)  # before any distance is computed
        z, shift = centred(tokens)
        home = home_cells(grid, cluster_grid, z.device)
        distances, key = home_first_distances(z, centres.to(z.dtype) - shift, home)
        if mode == "hard":
            reconstruction = hard_reconstruction(key)
        else:
            reconstruction = knn_reconstruction(distances, k, temperature, normalization, key)
        if not residual:
            return reconstruction
        detail = tokens.to(reconstruction.weights.dtype) - reconstruction(centres.to(reconstruction.weights.dtype))
        return replace(reconstruction, detail=detail)

    def dense_weights(self) -> torch.Tensor:
        """The weights as a dense ``(B, N, M)`` matrix (zeros where not kept)."""
        if self.indices is None:
            return self.weights
        dense = self.weights.new_zeros(*self.weights.shape[:2], self.num_clusters)
        return dense.scatter_add(-1, self.indices, self.weights)

    def __call__(self, reduced: torch.Tensor) -> torch.Tensor:
        if reduced.shape[1] != self.num_clusters:
            raise ValueError(f"Expected {self.num_clusters} reduced tokens, got shape {tuple(reduced.shape)}.")
        if self.detail is not None and reduced.shape[-1] != self.detail.shape[-1]:
            raise ValueError(
                f"A residual reconstruction applies to tensors of the clustered tokens' width {self.detail.shape[-1]}, "
                f"got shape {tuple(reduced.shape)}."
            )
        with torch.profiler.record_function(self.PROFILER_SCOPE), without_autocast(reduced.device):
            weights = self.weights.to(reduced.device)
            values = reduced.to(weights.dtype)
            if self.indices is None:
                full = weights @ values
            else:
                batch, count, width = weights.shape
                offsets = torch.arange(batch, device=weights.device).view(-1, 1, 1) * self.num_clusters
                rows = (self.indices.to(weights.device) + offsets).view(-1, width)
                flat = F.embedding_bag(
                    rows, values.reshape(-1, values.shape[-1]), per_sample_weights=weights.view(-1, width), mode="sum"
                )
                full = flat.view(batch, count, -1)
            if self.detail is not None:
                full = full + self.detail.to(full.device)
            return full.to(reduced.dtype)
