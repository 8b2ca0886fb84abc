"""The expedited layer loop of sequence encoders with prefix tokens (ViT, DPT, DINOv2).

transformers records ``hidden_states`` with forward hooks on the layer class. Inside the reduced phase the layers see
``1 + M`` tokens, so the expedited models record from a parameter-free :class:`HiddenStatesTap` instead, and the loop
feeds it full-resolution states: reduced states are reconstructed for the tap only when somebody reads them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import torch
from torch import nn

from .compat import OutputRecorder, resolve_hidden_states_indices, selected_hidden_states
from .hourglass import cluster_with_settings
from .settings import ExpediteSettings


class HiddenStatesTap(nn.Identity):
    """Recorder target for ``hidden_states``: the expedited loop passes every full-resolution state through it."""


HIDDEN_STATES_RECORDER = OutputRecorder(HiddenStatesTap, index=0, capture_initial_hidden_state=False)


def requested_hidden_states(model: nn.Module, output_hidden_states: object, num_layers: int) -> set[int] | None:
    """Indices of the hidden states a caller asked for: ``None`` for all, an empty set for none."""
    if not output_hidden_states:
        return set()
    selected = selected_hidden_states(output_hidden_states)
    if selected is None:
        return None
    return resolve_hidden_states_indices(selected, num_layers + 1)


def run_expedited_layers(
    layers: Sequence[nn.Module],
    hidden_states: torch.Tensor,
    call_layer: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    config: ExpediteSettings,
    grid: tuple[int, int],
    tap: HiddenStatesTap,
    wanted: Collection[int] | None,
    num_prefix_tokens: int = 1,
) -> torch.Tensor:
    """Run ``layers`` on ``(B, P + N, C)`` states, clustering and reconstructing as ``config`` says.

    ``hidden_states[i]`` (what the tap sees i-th) is the state after ``i`` layers, always with the full ``P + N``
    tokens when ``wanted`` (``None`` = every index) contains ``i``; unwanted reduced states go to the tap as they are.
    The returned state is full resolution. With ``config.expedite`` off this is the vanilla loop.
    """
    alpha = config.clustering_location if config.expedite else -1
    reconstruct_at = config.reconstruction_location or len(layers)
    reconstruction = None
    tap(hidden_states)
    for index, layer in enumerate(layers):
        if index == alpha:
            prefix, patches = hidden_states[:, :num_prefix_tokens], hidden_states[:, num_prefix_tokens:]
            centres, reconstruction = cluster_with_settings(patches, grid, config)
            hidden_states = torch.cat([prefix, centres], dim=1)
        hidden_states = call_layer(layer, hidden_states)
        if reconstruction is None:
            tap(hidden_states)
            continue
        full = None
        if index + 1 == reconstruct_at or wanted is None or index + 1 in wanted:
            prefix, reduced = hidden_states[:, :num_prefix_tokens], hidden_states[:, num_prefix_tokens:]
            full = torch.cat([prefix, reconstruction(reduced)], dim=1)
        if index + 1 == reconstruct_at:
            hidden_states, reconstruction = full, None
        tap(hidden_states if full is None else full)
    return hidden_states
