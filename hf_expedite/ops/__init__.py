"""Model-agnostic Expedite operations in pure torch: token clustering and token reconstruction."""

from .clustering import cluster_tokens, cluster_tokens_dense, home_cells, initial_centres
from .reconstruction import TokenReconstruction

__all__ = ["TokenReconstruction", "cluster_tokens", "cluster_tokens_dense", "home_cells", "initial_centres"]
