"""The ideal model: the limit of the method's speed-up.

The expedited model with clustering replaced by dropping tokens (one representative token per cluster cell) and
reconstruction by an index copy (every token takes its cell's reduced token). Its blocks run on exactly the token
counts of the expedited model, with no clustering or reconstruction arithmetic, so ``expedited / ideal`` latency
shows how close the implementation comes to what the reduced token count allows. Its outputs are not meant to be
good; only its speed is used.
"""

from __future__ import annotations

from typing import Any
from unittest import mock

import torch
from torch import nn

from .. import hourglass
from ..ops.clustering import home_cells, take_rows
from ..settings import ExpediteSettings


class IndexReconstruction:
    """Reconstruction by copying: token ``n`` of the full grid takes reduced token ``home[n]``."""

    def __init__(self, home: torch.Tensor, num_clusters: int):
        self.home = home
        self.num_clusters = num_clusters

    def __call__(self, reduced: torch.Tensor) -> torch.Tensor:
        return take_rows(reduced, self.home.to(reduced.device))


def drop_tokens(
    tokens: torch.Tensor, grid: tuple[int, int], clusters: tuple[int, int], config: ExpediteSettings
) -> tuple[torch.Tensor, IndexReconstruction]:
    """Keep the first token of every cluster cell (``(B, M, C)``) and restore the grid by index."""
    home = home_cells(grid, clusters, tokens.device)
    num_clusters = clusters[0] * clusters[1]
    positions = torch.arange(home.numel(), device=tokens.device)
    first = torch.full((num_clusters,), home.numel(), device=tokens.device).scatter_reduce(0, home, positions, "amin")
    return take_rows(tokens, first), IndexReconstruction(home, num_clusters)


class IdealModel(nn.Module):
    """Runs an expedited model with :func:`drop_tokens` in place of its clustering point (same weights, same blocks,
    same token counts)."""

    def __init__(self, expedited: nn.Module):
        super().__init__()
        self.expedited = expedited

    def forward(self, **inputs: Any) -> Any:
        with mock.patch.object(hourglass, "_cluster", drop_tokens):
            return self.expedited(**inputs)
