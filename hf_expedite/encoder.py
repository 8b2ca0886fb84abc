"""The expedited layer loop of sequence encoders with prefix tokens (ViT, DPT, DINOv2).

transformers records ``hidden_states`` with forward hooks on the layer class. Inside the reduced phase the layers see
``1 + M`` tokens, so the expedited models record from a parameter-free :class:`HiddenStatesTap` instead, and the loop
feeds it full-resolution states: reduced states are reconstructed for the tap only when somebody reads them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

import torch
from torch import nn

from .compat import (
    CAPTURE_HOOKS_FLAG,
    CAPTURE_HOOKS_MODULE,
    OutputRecorder,
    create_bidirectional_mask,
    maybe_install_capturing_hooks,
    resolve_hidden_states_indices,
    selected_hidden_states,
)
from .hourglass import cluster_with_settings
from .settings import ExpediteSettings, validate_settings


def _is_capture_hook(hook: object) -> bool:
    """Whether ``hook`` is one of transformers' output-capturing hooks (local functions, so not picklable)."""
    return getattr(hook, "__module__", "") == CAPTURE_HOOKS_MODULE and "<locals>" in getattr(hook, "__qualname__", "")


def _without_capture_hooks(module: nn.Module | None) -> nn.Module | None:
    """A shallow copy of ``module``'s tree (same parameters and buffers) without the output-capturing hooks."""
    if module is None:
        return None
    copy = object.__new__(type(module))
    copy.__dict__.update(module.__dict__)
    removed = {key for key, hook in module._forward_hooks.items() if _is_capture_hook(hook)}
    for name in ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called"):
        hooks = getattr(module, name, None)
        if hooks is not None:
            copy.__dict__[name] = type(hooks)((key, value) for key, value in hooks.items() if key not in removed)
    copy.__dict__["_modules"] = {name: _without_capture_hooks(child) for name, child in module._modules.items()}
    return copy


class EagerCaptureHooksMixin:
    """For ``PreTrainedModel`` subclasses that record outputs: install transformers' capturing hooks at construction
    (:meth:`install_capture_hooks`; installed lazily they take a lock that ``torch.compile`` cannot trace) and stay
    picklable (``torch.save(model)``, ``copy.deepcopy``): the hooks are local functions, so the pickled state leaves
    them out and loading installs them again."""

    def install_capture_hooks(self) -> None:
        """Call at the end of ``__init__``, once every recorded module exists."""
        maybe_install_capturing_hooks(self)

    def __getstate__(self) -> dict[str, object]:
        state = _without_capture_hooks(self).__dict__
        state.pop(CAPTURE_HOOKS_FLAG, None)
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        super().__setstate__(state)
        maybe_install_capturing_hooks(self)


class HiddenStatesTap(nn.Module):
    """Recorder target for ``hidden_states``: called after every layer as ``tap(layer_input, layer_output)`` with
    full-resolution states where they are read, it returns ``layer_output``. Like transformers' hooks on a layer
    class, the recorder takes the first call's input as ``hidden_states[0]``, so index selection
    (``output_hidden_states=[0, -1]``) counts ``num_hidden_layers + 1`` states as for the parent."""

    def forward(self, layer_input: torch.Tensor, layer_output: torch.Tensor) -> torch.Tensor:
        return layer_output


HIDDEN_STATES_RECORDER = OutputRecorder(HiddenStatesTap, index=0)


def requested_hidden_states(model: nn.Module, output_hidden_states: object, num_layers: int) -> set[int] | None:
    """Indices of the hidden states a caller asked for: ``None`` for all, an empty set for none."""
    if not output_hidden_states:
        return set()
    selected = selected_hidden_states(output_hidden_states)
    if selected is None:
        return None
    return resolve_hidden_states_indices(selected, num_layers + 1)


def phase_masks(config: Any, full_mask: Any, full_length: int) -> Callable[[torch.Tensor], Any]:
    """The attention mask for a layer's input states: ``full_mask`` (built by transformers for the ``full_length``
    tokens, with any caller's mask) before clustering and after reconstruction, and one built once, without a
    caller's mask, for the reduced states in between. Backends that materialise masks (flex attention, compiled
    graphs) need masks of the phase's length."""
    masks = {full_length: full_mask}

    def mask_for(states: torch.Tensor) -> Any:
        length = states.shape[1]
        if length not in masks:
            masks[length] = create_bidirectional_mask(config=config, inputs_embeds=states, attention_mask=None)
        return masks[length]

    return mask_for


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
    if config.expedite:  # settings may have been changed on the config since it was built: check what is read
        validate_settings(config, len(layers))
    alpha = config.clustering_location if config.expedite else -1
    reconstruct_at = config.reconstruction_location or len(layers)
    reconstruction = None
    recorded = hidden_states  # the last state given to the tap: its next call's layer input
    for index, layer in enumerate(layers):
        if index == alpha:
            prefix, patches = hidden_states[:, :num_prefix_tokens], hidden_states[:, num_prefix_tokens:]
            centres, reconstruction = cluster_with_settings(patches, grid, config)
            hidden_states = torch.cat([prefix, centres], dim=1)
        hidden_states = call_layer(layer, hidden_states)
        full = hidden_states
        if reconstruction is not None and (index + 1 == reconstruct_at or wanted is None or index + 1 in wanted):
            prefix, reduced = hidden_states[:, :num_prefix_tokens], hidden_states[:, num_prefix_tokens:]
            full = torch.cat([prefix, reconstruction(reduced)], dim=1)
            if index + 1 == reconstruct_at:
                hidden_states, reconstruction = full, None
        recorded = tap(recorded, full)
    return hidden_states
