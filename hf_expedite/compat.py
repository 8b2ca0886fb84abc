"""Every transformers internal the package uses, in one place, with the fallbacks older releases need.

The package supports transformers ``MIN_TRANSFORMERS`` up to (not including) 6. Anything outside the top-level
``transformers`` namespace, ``transformers.modeling_outputs`` and the model modules' public classes is imported here
and nowhere else, so a release that moves an internal breaks this file only.

Version notes (checked against the released wheels):

* 5.20: ``SubConfigSpec`` (nested default configs, used by the Mask2Former config) first appears; older releases
  describe sub-configs differently, which sets the floor.
* 5.23: ``output_hidden_states`` selects hidden states by index with the embeddings at 0 and negative indices
  (``resolve_hidden_states_indices``); :data:`SELECTS_HIDDEN_STATES` and :func:`selected_hidden_states` below tell
  the two conventions apart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import transformers
from packaging.version import Version

MIN_TRANSFORMERS = "5.20.0"
CAPTURE_HOOKS_MODULE = "transformers.utils.output_capturing"
"""The module whose local functions are the output-capturing forward hooks."""
CAPTURE_HOOKS_FLAG = "_output_capturing_hooks_installed"
"""The attribute ``maybe_install_capturing_hooks`` sets on a hooked model."""

if not Version(MIN_TRANSFORMERS) <= Version(transformers.__version__) < Version("6"):
    raise ImportError(
        f"hf_expedite needs transformers >= {MIN_TRANSFORMERS}, < 6; found {transformers.__version__}. "
        f'Install a supported release: pip install "transformers>={MIN_TRANSFORMERS},<6"'
    )

from transformers.backbone_utils import filter_output_hidden_states  # noqa: E402 (after the version check)
from transformers.configuration_utils import SubConfigSpec
from transformers.conversion_mapping import (
    USER_REGISTERED_MAPPINGS,
    get_checkpoint_conversion_mapping,
    register_checkpoint_conversion_mapping,
)
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.swin.modeling_swin import eager_attention_forward, window_partition, window_reverse
from transformers.utils import TransformersKwargs, output_capturing, resolve_revision
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs, maybe_install_capturing_hooks
from typing_extensions import Unpack


SELECTS_HIDDEN_STATES = hasattr(output_capturing, "resolve_hidden_states_indices")
"""Whether ``output_hidden_states`` selects states by index as in 5.23 on (0 = the embeddings, negatives from the
end). Before, a list keeps the block outputs at those block indices (no embeddings, no negatives): the expedited
models then reconstruct every state and transformers' hooks keep the listed ones, as for the parent."""


def selected_hidden_states(output_hidden_states: object) -> list[int] | None:
    """The hidden-state indices ``output_hidden_states`` selects (transformers >= 5.23 accepts an int or a list of
    ints), or ``None`` when it is a flag (always, before 5.23)."""
    if isinstance(output_hidden_states, bool) or output_hidden_states is None or not SELECTS_HIDDEN_STATES:
        return None
    if isinstance(output_hidden_states, int):
        return [output_hidden_states]
    if isinstance(output_hidden_states, Iterable):
        return list(output_hidden_states)
    return None


def takes_transformers_kwargs(forward: Callable) -> Callable:
    """Annotate ``forward``'s ``**kwargs`` as ``Unpack[TransformersKwargs]``, the evaluated object transformers' own
    forwards carry (our modules postpone annotations to strings): introspection such as transformers' model tests
    reads from it which options (``output_attentions``, ...) the model takes."""
    forward.__annotations__["kwargs"] = Unpack[TransformersKwargs]
    return forward


def auto_class_names(auto_class: type) -> dict[str, str]:
    """The ``model_type -> class name`` table behind a transformers Auto class (e.g. ``MODEL_MAPPING_NAMES`` for
    ``AutoModel``): the table pipelines, the Trainer and transformers' tests consult by class name."""
    return auto_class._model_mapping._model_mapping


def resolve_hidden_states_indices(selected: Iterable[int], num_hidden_states: int) -> set[int]:
    """``selected`` indices into ``num_hidden_states`` states, negatives counted from the end; out of range dropped."""
    return {i % num_hidden_states for i in selected if -num_hidden_states <= i < num_hidden_states}


__all__ = [
    "ALL_ATTENTION_FUNCTIONS",
    "CAPTURE_HOOKS_FLAG",
    "CAPTURE_HOOKS_MODULE",
    "CONFIG_MAPPING",
    "MIN_TRANSFORMERS",
    "USER_REGISTERED_MAPPINGS",
    "OutputRecorder",
    "SELECTS_HIDDEN_STATES",
    "SubConfigSpec",
    "auto_class_names",
    "can_return_tuple",
    "capture_outputs",
    "create_bidirectional_mask",
    "eager_attention_forward",
    "filter_output_hidden_states",
    "get_checkpoint_conversion_mapping",
    "maybe_install_capturing_hooks",
    "merge_with_config_defaults",
    "register_checkpoint_conversion_mapping",
    "resolve_hidden_states_indices",
    "resolve_revision",
    "selected_hidden_states",
    "takes_transformers_kwargs",
    "window_partition",
    "window_reverse",
]
