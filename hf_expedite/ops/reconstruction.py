"""Token reconstruction: M refined cluster tokens -> N full-resolution tokens (``expedite-algorithm.md`` section 2).

The weights are computed once, at the clustering point, from the N original tokens and the M centres, and are then
applied to any number of reduced tensors of that forward (the refined clusters after later blocks, or anything derived
from them token by token). Only the few kept weights of each token are stored, ``(B, N, W)`` values with their
cluster indices, and applied by a gather-and-weighted-sum (``F.embedding_bag``): O(N * W * C) work and O(N * W)
memory instead of a dense ``(B, N, M)`` matrix product. ``W`` is the largest number of weights any token keeps:
``k``, or more where distances tie with the k-th (the official rule keeps every tie; no tie is broken), 1 for
``"hard"``. The exact global top-k needs every token's distance to every centre, an ``N x M`` matrix product; it is
computed for blocks of tokens (:data:`BLOCK_PAIRS`), each reduced to its kept centres before the next, so the
``(B, N, M)`` distances are never held whole. Under ``torch.compile`` / ``torch.export``, whose graphs cannot depend
on ``W``, the weights stay dense (``(B, N, M)``, zeros included) and are applied by the matrix product; both forms
give the same weights.

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

import math
from dataclasses import dataclass, replace
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

from .clustering import home_cells, take_rows, without_autocast

ReconstructionMode = Literal["knn", "hard"]
ReconstructionNormalization = Literal["l1", "l2"]


BLOCK_PAIRS = 1 << 20
"""Distances are computed for blocks of tokens of at most this many (token, centre) pairs (4 MB in float32), each
reduced to its kept centres at once: the ``(B, N, M)`` matrix is never held whole (peak memory), and blocks this small
are served from memory the allocator already holds instead of a fresh, page-faulting mapping at every forward."""


def squared_distances(
    tokens: torch.Tensor,
    centres: torch.Tensor,
    token_norms: torch.Tensor | None = None,
    centre_norms: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(B, N, M)`` squared Euclidean distances in the expanded form, clamped at 0 against rounding.

    ``|z|^2 + |s|^2`` is written once and the product accumulated into it (``baddbmm``), so the ``(B, N, M)`` tensor is
    touched by one element-wise pass besides the matrix product (in place unless autograd records the computation).
    ``token_norms`` ``(B, N)`` and ``centre_norms`` ``(B, M)`` are the squared norms, when already known.
    """
    token_norms = tokens.square().sum(-1) if token_norms is None else token_norms
    centre_norms = centres.square().sum(-1) if centre_norms is None else centre_norms
    bias = token_norms[..., None] + centre_norms[:, None, :]
    if _records_graph(tokens, centres):
        return torch.baddbmm(bias, tokens, centres.transpose(1, 2), alpha=-2).clamp_min(0)
    return bias.baddbmm_(tokens, centres.transpose(1, 2), alpha=-2).clamp_min_(0)


def _records_graph(*tensors: torch.Tensor) -> bool:
    """Whether autograd records operations on ``tensors`` (then in-place updates of saved results must be avoided)."""
    return torch.is_grad_enabled() and any(tensor.requires_grad for tensor in tensors)


def token_blocks(count: int, batch: int, num_clusters: int) -> list[slice]:
    """Slices of the ``count`` tokens, each with at most :data:`BLOCK_PAIRS` (token, centre) pairs over the batch; one
    slice under ``torch.compile`` (the dense weights are built whole there)."""
    if torch.compiler.is_compiling():
        return [slice(0, count)]
    rows = max(1, BLOCK_PAIRS // (batch * num_clusters))
    return [slice(start, min(start + rows, count)) for start in range(0, count, rows)]


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


class HomeDistances(NamedTuple):
    """Every token's home centre and its distance to it, computed directly (exact zero for an equal centre)."""

    index: torch.Tensor  # (B, N, 1) the home centre of every token
    distance: torch.Tensor  # (B, N, 1) the squared distance to it


def home_first_keys(
    tokens: torch.Tensor,
    centres: torch.Tensor,
    home: torch.Tensor,
    centre_norms: torch.Tensor | None = None,
    canonical: torch.Tensor | None = None,
) -> tuple[torch.Tensor, HomeDistances]:
    """A ranking key ``(B, N, M)`` in which each token's home centre wins rounding ties, and the home distances.

    ``home`` holds every token's home cluster, ``(N,)``. The key is the squared distance (:func:`squared_distances`)
    except at the home centre, where it is the directly computed distance lowered by a bound on the expanded form's
    rounding error, ``(C + 2) * eps * (|z|^2 + |s|^2)``, so that no other centre can outrank it by rounding alone. The
    distance at every position is the key's, except at the home centre, where it is ``HomeDistances.distance``.
    ``canonical`` (:func:`first_identical` of the centres) gives identical centres identical distances.
    """
    centre_norms = centres.square().sum(-1) if centre_norms is None else centre_norms
    token_norms = tokens.square().sum(-1)
    key = squared_distances(tokens, centres, token_norms, centre_norms)
    if canonical is not None:  # copy the columns of the (few) duplicates from their canonical centre
        positions = torch.arange(canonical.shape[1], device=canonical.device)
        items, duplicates = (canonical != positions).nonzero(as_tuple=True)
        columns = key.transpose(1, 2)
        copied = columns[items, canonical[items, duplicates]]
        put = columns.index_put if _records_graph(key) else columns.index_put_
        key = put((items, duplicates), copied).transpose(1, 2)
    index = home.view(1, -1, 1).expand(tokens.shape[0], -1, 1)
    direct = take_rows(centres, home).sub_(tokens).square().sum(-1, keepdim=True)  # |s - z|^2, no extra copy
    scale = token_norms[..., None] + take_rows(centre_norms[..., None], home)
    rounding = (tokens.shape[-1] + 2) * torch.finfo(tokens.dtype).eps * scale
    lowered = direct - rounding
    key = key.scatter(-1, index, lowered) if _records_graph(key) else key.scatter_(-1, index, lowered)
    return key, HomeDistances(index, direct)


def _check_knn(num_clusters: int, k: int, normalization: str) -> None:
    if not 1 <= k <= num_clusters:
        raise ValueError(f"`reconstruction_k` must lie in 1..{num_clusters} (the number of clusters), got {k}.")
    if normalization not in ("l1", "l2"):
        raise ValueError(f"`reconstruction_normalization` must be 'l1' or 'l2', got {normalization!r}.")


class KeptCentres(NamedTuple):
    """The centres a token's reconstruction keeps, ascending by ranking key."""

    key: torch.Tensor  # (B, N, W) ranking key; +inf pads tokens that keep fewer than W
    distance: torch.Tensor  # (B, N, W) squared distance
    index: torch.Tensor | None  # (B, N, W) cluster index; None: dense, all M centres in order (under torch.compile)
    kth: torch.Tensor  # (B, N, 1) the k-th smallest key: every centre whose key is at most this is kept


def kept_centres(key: torch.Tensor, k: int, home: HomeDistances | None = None) -> KeptCentres:
    """The ``k`` nearest centres by ``key`` ``(B, N, M)``, and every centre whose key equals the k-th one too (the
    official tie rule), with their distances (``key``'s, or the home distances where given)."""
    num_clusters = key.shape[-1]
    if torch.compiler.is_compiling():  # dense: the graph cannot depend on how many entries tie
        distance = key if home is None else key.scatter(-1, home.index, home.distance)
        return KeptCentres(key, distance, None, key.topk(k, dim=-1, largest=False).values[..., -1:])
    # one extra place shows which tokens tie beyond the k-th (the official rule then keeps more than k)
    nearest = smallest(key, min(k + 1, num_clusters))
    kth = nearest.values[..., k - 1 : k]
    values, indices = nearest.values[..., :k], nearest.indices[..., :k]
    if k < num_clusters:
        tied = (nearest.values[..., k] == kth[..., 0]).nonzero(as_tuple=True)
        if len(tied[0]):
            values, indices = with_ties(key, kth, tied, values, indices)
    distance = values if home is None else torch.where(indices == home.index, home.distance, values)
    return KeptCentres(values, distance, indices, kth)


def with_ties(
    key: torch.Tensor,
    kth: torch.Tensor,
    tied: tuple[torch.Tensor, torch.Tensor],
    values: torch.Tensor,
    indices: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(B, N, k)`` kept keys and indices widened to every entry of the ``tied`` tokens (item and token indices)
    whose key equals their k-th one. Only those rows are searched again; the others are padded with ``+inf`` keys
    (never kept) on their nearest centre."""
    row_keys = key[tied]
    width = int((row_keys <= kth[tied]).sum(-1).amax())
    wide = smallest(row_keys, width)
    pad = width - values.shape[-1]
    values = F.pad(values, (0, pad), value=math.inf)
    indices = torch.cat([indices, indices[..., :1].expand(*indices.shape[:-1], pad)], -1)
    values[tied], indices[tied] = wide.values, wide.indices
    return values, indices


GROUP = 8
"""Columns per group in :func:`smallest`'s first pass (8: the fastest of 4 to 32, measured for k = 20 on rows of 400
to 4096 columns, where the narrowing takes 0.5 to 0.9 of ``topk``'s time)."""


def smallest(key: torch.Tensor, count: int) -> torch.return_types.topk:
    """The ``count`` smallest entries of every row of ``key`` ``(..., M)``, ascending (values and indices): the values
    of ``key.topk(count, largest=False)``, and its indices wherever the values are distinct (among equal values
    either may pick any).

    Found faster for ``M`` much larger than ``count``: the columns are split into groups of :data:`GROUP` (column
    ``j`` in group ``j % (M / GROUP)``) and every row is first narrowed to the ``count`` groups with the smallest
    minima. That loses nothing: an entry outside them is at least the largest chosen minimum, and the chosen groups
    hold ``count`` entries (their minima) no larger than it.
    """
    columns = key.shape[-1]
    groups = columns // GROUP
    if columns % GROUP or groups < 2 * count:  # fewer groups: no faster than topk
        return key.topk(count, dim=-1, largest=False)
    chosen = key.unflatten(-1, (GROUP, groups)).amin(-2).topk(count, dim=-1, largest=False).indices
    candidates = (chosen[..., None] + torch.arange(0, columns, groups, device=key.device)).flatten(-2)
    nearest = key.gather(-1, candidates).topk(count, dim=-1, largest=False)
    return torch.return_types.topk((nearest.values, candidates.gather(-1, nearest.indices)))


def _concatenate(blocks: list[KeptCentres]) -> KeptCentres:
    """Token blocks joined along the tokens, narrower blocks padded with entries that are never kept."""
    if len(blocks) == 1:
        return blocks[0]
    width = max(block.key.shape[-1] for block in blocks)

    def joined(field: str, pad: float) -> torch.Tensor:
        parts = [getattr(block, field) for block in blocks]
        return torch.cat([F.pad(part, (0, width - part.shape[-1]), value=pad) for part in parts], 1)

    return KeptCentres(
        key=joined("key", math.inf),
        distance=joined("distance", math.inf),
        index=joined("index", 0),
        kth=torch.cat([block.kth for block in blocks], 1),
    )


def knn_weights(
    kept: KeptCentres, temperature: float, normalization: ReconstructionNormalization, num_clusters: int
) -> TokenReconstruction:
    """Weights ``exp(-(d - min d) / temperature)`` on the kept centres, normalised. The nearest centre is always
    among the kept ones: it ranks first, or second behind a home centre that won a rounding-level tie (and with
    ``k = 1`` the single weight normalises to 1 whatever the shift)."""
    nearest = kept.distance.amin(-1, keepdim=True)
    weights = torch.exp(-(kept.distance - nearest) / temperature).masked_fill(kept.key > kept.kth, 0.0)
    if normalization == "l1":
        weights = weights / weights.sum(-1, keepdim=True)
    else:
        weights = F.normalize(weights, p=2.0, dim=-1)
    return TokenReconstruction(weights, kept.index, num_clusters)


def knn_reconstruction(
    key: torch.Tensor,
    k: int,
    temperature: float,
    normalization: ReconstructionNormalization,
    home: HomeDistances | None = None,
) -> TokenReconstruction:
    """Top-k reconstruction from squared distances ``(B, N, M)`` (or a ranking key and the home distances, see
    :func:`home_first_keys`): :func:`kept_centres`, then :func:`knn_weights`."""
    _check_knn(key.shape[-1], k, normalization)
    return knn_weights(kept_centres(key, k, home), temperature, normalization, key.shape[-1])


def hard_reconstruction(nearest: torch.Tensor, num_clusters: int, dtype: torch.dtype) -> TokenReconstruction:
    """Weight one on the nearest centre of each token, ``nearest`` ``(B, N, 1)``."""
    if torch.compiler.is_compiling():
        return TokenReconstruction(F.one_hot(nearest[..., 0], num_clusters).to(dtype), None, num_clusters)
    return TokenReconstruction(torch.ones_like(nearest, dtype=dtype), nearest, num_clusters)


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
        x = tokens.to(torch.promote_types(tokens.dtype, torch.float32))
        shift = x.mean(1, keepdim=True)  # distances taken between centred tokens and centres (see `centred`)
        s = centres.to(x.dtype) - shift
        home = home_cells(grid, cluster_grid, x.device)
        centre_norms, canonical = s.square().sum(-1), first_identical(s)
        blocks = []
        for rows in token_blocks(x.shape[1], x.shape[0], s.shape[1]):  # never the whole (B, N, M) at once
            z = x[:, rows] - shift  # centred block by block, never the whole (B, N, C) copy
            key, home_distances = home_first_keys(z, s, home[rows], centre_norms, canonical)
            blocks.append(key.argmin(-1, keepdim=True) if mode == "hard" else kept_centres(key, k, home_distances))
        if mode == "hard":
            reconstruction = hard_reconstruction(torch.cat(blocks, 1), s.shape[1], x.dtype)
        else:
            reconstruction = knn_weights(_concatenate(blocks), temperature, normalization, s.shape[1])
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
