"""Opt-in patch: ``transformers.AutoModel*.from_pretrained(..., expedite=...)`` and pipelines' ``model_kwargs``.

Importing ``hf_expedite`` patches nothing. :func:`patch_transformers` replaces ``from_pretrained`` and ``from_config``
on each transformers Auto class in :data:`hf_expedite.auto.TRANSFORMERS_AUTO_CLASSES` (every class holds its own copy
of these classmethods) with a wrapper that handles ``expedite=`` and the setting kwargs, then calls the original.
Calls without them are passed through untouched. :func:`unpatch_transformers` puts back exactly what was there (the
very same classmethod objects; a method the class inherited is removed again). Pipelines hold references to the Auto
classes, so ``pipeline(task, model=repo, model_kwargs={"expedite": True})`` goes through the patch. Both are safe to
call from several threads at once: one lock makes each a single step, so the classes and :func:`is_patched` always
agree.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .auto import TRANSFORMERS_AUTO_CLASSES, expedited_from_config, expedited_from_pretrained

_METHODS = {"from_pretrained": expedited_from_pretrained, "from_config": expedited_from_config}
_INHERITED = object()  # marks a method the class did not define itself

# (Auto class, method name) -> what the class's own __dict__ held before patching.
_saved: dict[tuple[type, str], Any] = {}
_lock = threading.RLock()


def _wrapper(name: str, original: classmethod) -> classmethod:
    expedited = _METHODS[name]

    @functools.wraps(original.__func__)
    def method(cls, *args, **kwargs):
        return expedited(original.__get__(None, cls), *args, **kwargs)

    method.transformers_original = original  # lets hf_expedite.auto reach the unpatched method
    return classmethod(method)


def patch_transformers() -> None:
    """Make the transformers Auto classes accept ``expedite=...`` and Expedite setting kwargs. Idempotent."""
    with _lock:
        for auto_class in TRANSFORMERS_AUTO_CLASSES:
            for name in _METHODS:
                if (auto_class, name) in _saved:
                    continue
                _saved[auto_class, name] = auto_class.__dict__.get(name, _INHERITED)
                setattr(auto_class, name, _wrapper(name, inspect.getattr_static(auto_class, name)))


def unpatch_transformers() -> None:
    """Restore the transformers Auto classes exactly as they were before :func:`patch_transformers`."""
    with _lock:
        for (auto_class, name), own in _saved.items():
            if own is _INHERITED:
                delattr(auto_class, name)
            else:
                setattr(auto_class, name, own)
        _saved.clear()


def is_patched() -> bool:
    """Whether :func:`patch_transformers` is in effect."""
    with _lock:
        return bool(_saved)


@contextmanager
def patched_transformers() -> Iterator[None]:
    """``with hf_expedite.patched_transformers(): ...``: patched inside the block, restored after it (if this block
    applied the patch)."""
    with _lock:
        applied = not is_patched()
        patch_transformers()
    try:
        yield
    finally:
        if applied:
            unpatch_transformers()
