"""One clustering point: cluster patch tokens with a config's settings and prepare their reconstruction.

The work is labelled for ``torch.profiler`` (``CLUSTERING_SCOPE`` / ``RECONSTRUCTION_SCOPE``), so that a profile of
a model shows what clustering and reconstruction cost (the benchmark times them on their own instead, by replaying
``_cluster`` and the reconstructions it returns).
"""

from __future__ import annotations

import torch

from .ops.clustering import check_grids, cluster_tokens, without_autocast
from .ops.reconstruction import TokenReconstruction
from .settings import ExpediteSettings, cluster_grid, reconstruction_k

CLUSTERING_SCOPE = "expedite::clustering"
RECONSTRUCTION_SCOPE = TokenReconstruction.PROFILER_SCOPE


def cluster_with_settings(
    tokens: torch.Tensor, grid: tuple[int, int], config: ExpediteSettings, clusters: tuple[int, int] | None = None
) -> tuple[torch.Tensor, TokenReconstruction]:
    """Cluster ``(B, N, C)`` patch tokens on ``grid``; return the ``(B, M, C)`` centres and their reconstruction.

    The cluster grid is ``clusters`` when given (Swin windows), else the config's ``num_clusters`` or
    ``cluster_ratio`` applied to ``grid``. The reconstruction weights are computed here, once, from the tokens and the
    centres at this point, with :func:`~hf_expedite.settings.reconstruction_k` clusters per token.
    """
    clusters = clusters or cluster_grid(config, grid)
    check_grids(grid, clusters)
    with torch.profiler.record_function(CLUSTERING_SCOPE), without_autocast(tokens.device):
        return _cluster(tokens, grid, clusters, config)


def _cluster(
    tokens: torch.Tensor, grid: tuple[int, int], clusters: tuple[int, int], config: ExpediteSettings
) -> tuple[torch.Tensor, TokenReconstruction]:
    centres = cluster_tokens(
        tokens,
        grid,
        clusters,
        iterations=config.clustering_iterations,
        temperature=config.clustering_temperature,
        window_size=config.clustering_window_size,
    )
    reconstruction = TokenReconstruction.from_clustering(
        tokens,
        centres,
        grid,
        clusters,
        k=reconstruction_k(config, centres.shape[1]),
        temperature=config.reconstruction_temperature,
        normalization=config.reconstruction_normalization,
        mode=config.reconstruction_mode,
        residual=config.reconstruction_residual,
    )
    return centres, reconstruction
