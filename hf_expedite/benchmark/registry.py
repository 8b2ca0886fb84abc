"""All benchmark cases: every ``cases_<family>.py`` module of this package contributes its ``CASES`` (and may name
the ones that reproduce the paper in ``PAPER_CASES``)."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

from .case import BenchmarkCase


def _case_modules() -> list:
    package = importlib.import_module(__package__)
    names = sorted(m.name for m in pkgutil.iter_modules(package.__path__) if m.name.startswith("cases_"))
    return [importlib.import_module(f"{__package__}.{name}") for name in names]


def all_cases() -> dict[str, Callable[[], BenchmarkCase]]:
    """Case name -> builder, over every ``cases_*`` module (builders construct the models only when called)."""
    cases: dict[str, Callable[[], BenchmarkCase]] = {}
    for module in _case_modules():
        cases.update(module.CASES)
    return cases


def paper_cases() -> list[str]:
    """The cases that reproduce the paper's settings (each module's ``PAPER_CASES``), family by family."""
    return [name for module in _case_modules() for name in getattr(module, "PAPER_CASES", ())]
