"""All benchmark cases: every ``cases_<family>.py`` module of this package contributes its ``CASES``."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

from .case import BenchmarkCase


def all_cases() -> dict[str, Callable[[], BenchmarkCase]]:
    """Case name -> builder, over every ``cases_*`` module (builders construct the models only when called)."""
    cases: dict[str, Callable[[], BenchmarkCase]] = {}
    package = importlib.import_module(__package__)
    for module in sorted(pkgutil.iter_modules(package.__path__)):
        if module.name.startswith("cases_"):
            cases.update(importlib.import_module(f"{__package__}.{module.name}").CASES)
    return cases
