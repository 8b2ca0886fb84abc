"""Loading guard shared by the expedited models: checkpoint weights that exist but were not mapped are an error.

transformers only *reports* missing and unexpected keys. The trap for an expedited class is a weight-name conversion
that is not mirrored: the checkpoint's encoder weights are then all there, under other names, and the encoder would
silently stay random. That shows as missing *and* unexpected encoder weights together, and raises. Anything else
behaves exactly as transformers: a base checkpoint loaded into a task model (a new neck or head to fine-tune), or
encoder weights a checkpoint simply does not have, are reported as usual.
"""

from __future__ import annotations

import os
import re
from typing import Any

_ENCODER_KEY = re.compile(r"(^|\.)(embeddings|encoder|layers?|blocks|stages|backbone)\.")


def encoder_keys(keys: Any) -> list[str]:
    """The keys among ``keys`` that belong to an embedding or encoder block."""
    return sorted(k for k in keys if _ENCODER_KEY.search(k))


class StrictLoadingMixin:
    """Mixin of every expedited model: ``from_pretrained`` that raises when encoder weights are both missing and left
    unused (names not mapped), ``save_pretrained`` with the remote-code shim, and ``config.gradient_checkpointing``
    honoured although the expedited submodules are built after the parent's ``post_init``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        config = kwargs["config"] if "config" in kwargs else args[0]
        # transformers' post_init consumes (deletes) config.gradient_checkpointing in the first model built from the
        # config, often a vanilla submodule that the expedited class then replaces before calling post_init again.
        # Remembered before any parent __init__ runs (a plain attribute, which nn.Module allows that early), so that
        # every post_init of this model, in whatever order the mixins run, enables it on the modules it then has.
        object.__setattr__(self, "_gradient_checkpointing_from_config", getattr(config, "gradient_checkpointing", False))
        super().__init__(*args, **kwargs)

    def _backward_compatibility_gradient_checkpointing(self) -> None:
        if getattr(self, "_gradient_checkpointing_from_config", False):
            self.config.gradient_checkpointing = True  # consumed again by the parent's method, which enables it
        super()._backward_compatibility_gradient_checkpointing()

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        return_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        missing, unexpected = encoder_keys(info["missing_keys"]), encoder_keys(info["unexpected_keys"])
        if missing and unexpected:
            raise RuntimeError(
                f"{cls.__name__} could not load the encoder weights of this checkpoint (the weights would be left "
                f"random): {len(missing)} missing, e.g. {missing[:3]}; {len(unexpected)} unexpected, e.g. "
                f"{unexpected[:3]}. The checkpoint layout is not supported by this class."
            )
        return (model, info) if return_info else model

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, remote_code: bool = True, **kwargs: Any):
        """transformers' ``save_pretrained``, plus (unless ``remote_code=False``) the remote-code shim and ``auto_map``
        that let ``trust_remote_code=True`` load the folder without ``import hf_expedite`` (see ``hf_expedite.hub``)."""
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if remote_code and kwargs.get("is_main_process", True):
            from .hub import write_remote_code  # hub imports the Auto classes, which import the models

            write_remote_code(save_directory, self.config)
        return result

    @classmethod
    def register_for_auto_class(cls, auto_class: str = "AutoModel") -> None:
        """No-op: expedited classes are shared through the ``hf_expedite`` package, not copied into repositories."""
