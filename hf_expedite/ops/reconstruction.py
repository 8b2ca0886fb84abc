"""Token reconstruction: M refined cluster tokens -> N full-resolution tokens (``expedite-algorithm.md`` section 2).

The weights are computed once, at the clustering point, from the N original tokens and the M centres, and are then
applied to any number of reduced tensors of that forward (the refined clusters after later blocks, or anything derived
from them token by token):

* ``"knn"``: ``w_ij = exp(-|z_i - s_j|^2 / temperature)`` kept for the ``k`` largest per token (every weight equal to
  the k-th largest is kept too, the official tie rule), normalised with ``"l1"`` (sum to one, the paper's weighted
  average) or ``"l2"`` (unit Euclidean norm, what ``F.normalize`` does in the official code);
* ``"hard"``: copy the nearest centre (global argmin), what the official DPT code runs.

The exponent is shifted by each row's smallest distance, which leaves the normalised weights unchanged but means no
row can underflow to all zeros (the official code then outputs a zero token).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from .clustering import centred

ReconstructionMode = Literal["knn", "hard"]
ReconstructionNormalization = Literal["l1", "l2"]


def squared_distances(tokens: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """``(B, N, M)`` squared Euclidean distances, clamped at 0 against rounding."""
    dot = tokens @ centres.transpose(1, 2)
    return (tokens.square().sum(-1)[..., None] + centres.square().sum(-1)[:, None, :] - 2 * dot).clamp_min(0)


def knn_weights(
    distances: torch.Tensor, k: int, temperature: float, normalization: ReconstructionNormalization
) -> torch.Tensor:
    """Top-k reconstruction weights ``(B, N, M)`` from squared distances ``(B, N, M)``."""
    num_clusters = distances.shape[-1]
    if not 1 <= k <= num_clusters:
        raise ValueError(f"`reconstruction_k` must lie in 1..{num_clusters} (the number of clusters), got {k}.")
    if normalization not in ("l1", "l2"):
        raise ValueError(f"`reconstruction_normalization` must be 'l1' or 'l2', got {normalization!r}.")
    weights = torch.exp(-(distances - distances.amin(-1, keepdim=True)) / temperature)
    kth_largest = weights.topk(k, dim=-1).values[..., -1:]
    weights = weights.masked_fill(weights < kth_largest, 0.0)
    if normalization == "l1":
        return weights / weights.sum(-1, keepdim=True)
    return F.normalize(weights, p=2.0, dim=-1)


def hard_weights(distances: torch.Tensor) -> torch.Tensor:
    """One-hot weights ``(B, N, M)`` on the nearest centre of each token."""
    return F.one_hot(distances.argmin(-1), distances.shape[-1]).to(distances.dtype)


@dataclass(frozen=True)
class TokenReconstruction:
    """Reconstruction weights of one forward; call it on ``(B, M, C')`` reduced tokens to get ``(B, N, C')``."""

    weights: torch.Tensor  # (B, N, M), float32 or float64

    PROFILER_SCOPE = "expedite::reconstruction"  # torch.profiler label of every application

    @classmethod
    @torch.no_grad()
    def from_clustering(
        cls,
        tokens: torch.Tensor,
        centres: torch.Tensor,
        k: int = 20,
        temperature: float = 1.0,
        normalization: ReconstructionNormalization = "l1",
        mode: ReconstructionMode = "knn",
    ) -> TokenReconstruction:
        """Weights from the ``(B, N, C)`` tokens and the ``(B, M, C)`` centres at the clustering point."""
        if mode not in ("knn", "hard"):
            raise ValueError(f"`reconstruction_mode` must be 'knn' or 'hard', got {mode!r}.")
        z, shift = centred(tokens)
        distances = squared_distances(z, centres.to(z.dtype) - shift)
        if mode == "hard":
            return cls(hard_weights(distances))
        return cls(knn_weights(distances, k, temperature, normalization))

    @property
    def num_clusters(self) -> int:
        return self.weights.shape[-1]

    def __call__(self, reduced: torch.Tensor) -> torch.Tensor:
        if reduced.shape[1] != self.num_clusters:
            raise ValueError(f"Expected {self.num_clusters} reduced tokens, got shape {tuple(reduced.shape)}.")
        with torch.profiler.record_function(self.PROFILER_SCOPE):
            weights = self.weights.to(reduced.device)
            return (weights @ reduced.to(weights.dtype)).to(reduced.dtype)
