"""The errors a script reports in one line, and the exit statuses that go with them."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


class InputError(ValueError):
    """A problem with the command line, the model or the dataset, found before any evaluation work."""


class Interrupted(Exception):
    """Ctrl-C stopped the evaluation; the message says what was kept."""


def cli(main: Callable[[], Any]) -> int:
    """Run a script's ``main``; an :class:`InputError` becomes a one-line ``error:`` message and exit status 2, an
    interrupted run (its partial report written) exit status 130."""
    try:
        main()
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Interrupted as error:
        print(f"interrupted: {error}", file=sys.stderr)
        return 130
    return 0
