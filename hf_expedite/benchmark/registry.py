"""All benchmark cases: every ``cases_<family>.py`` module of this package contributes its ``CASES`` (and may name
the ones that reproduce the paper in ``PAPER_CASES``, and a resolution sweep in ``SCALING_CASES``)."""

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


def suite_cases(suite: str) -> list[str]:
    """The cases of a suite, family by family: ``"paper"`` (each module's ``PAPER_CASES``: the paper's settings) or
    ``"scaling"`` (``SCALING_CASES``: one architecture at growing resolutions)."""
    attribute = {"paper": "PAPER_CASES", "scaling": "SCALING_CASES"}[suite]
    return [name for module in _case_modules() for name in getattr(module, attribute, ())]
