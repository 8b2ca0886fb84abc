"""Per-image results written as they are computed, so that an interrupted evaluation can be resumed (``--resume``).

Every process appends to its own file ``<output dir>/.<stem>.partial-<rank>.pkl``: a header with the run's
fingerprint (model, data and settings), then one record per evaluated image (its metric statistics for both models)
and per forward pass (its timing). A run with ``--resume`` reads every such file of the same stem, refuses them if
the fingerprint differs, and evaluates only the images not recorded yet. The files are removed once the complete
report is written. They are pickles: only ``--resume`` reads them, from the output folder the user names.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any


def partial_files(folder: str | Path, stem: str) -> list[Path]:
    """The partial-result files of ``stem`` in ``folder``."""
    return sorted(Path(folder).glob(f".{stem}.partial-*.pkl"))


@dataclass
class Recorded:
    """What earlier runs recorded: statistics by dataset index, timings by the first index of each forward pass."""

    statistics: dict[int, tuple[Any, Any]] = field(default_factory=dict)
    timings: dict[int, tuple[int, float, float]] = field(default_factory=dict)


def _records(path: Path) -> list[tuple[str, Any, Any]]:
    """The complete records of one file (a record cut short by a killed process is dropped)."""
    records = []
    with path.open("rb") as handle:
        while True:
            try:
                records.append(pickle.load(handle))
            except EOFError:
                return records
            except (pickle.UnpicklingError, ValueError, AttributeError, IndexError):
                return records


def load_recorded(folder: str | Path, stem: str, fingerprint: Mapping[str, Any]) -> Recorded:
    """Everything recorded for ``stem`` in ``folder``; a ``ValueError`` if there is nothing, or if it belongs to a run
    with another fingerprint (another model, dataset or setting)."""
    files = partial_files(folder, stem)
    if not files:
        raise ValueError(f"--resume: no partial results of {stem!r} in {str(folder)!r} to resume from.")
    recorded = Recorded()
    for path in files:
        records = _records(path)
        if not records or records[0][0] != "header":
            continue
        saved = records[0][1]
        if saved != dict(fingerprint):
            changed = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
            raise ValueError(
                f"--resume: the partial results in {str(folder)!r} come from a different run (it differs in "
                f"{', '.join(changed)}); pass --overwrite to start over."
            )
        for kind, key, value in records[1:]:
            (recorded.statistics if kind == "image" else recorded.timings)[key] = value
    return recorded


class PartialLog:
    """Appends one process's records to its partial-result file (created with the fingerprint header)."""

    def __init__(self, folder: str | Path, stem: str, rank: int, fingerprint: Mapping[str, Any]) -> None:
        self.path = Path(folder) / f".{stem}.partial-{rank}.pkl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not self.path.exists() or not _records(self.path)
        self._handle: IO[bytes] = self.path.open("wb" if fresh else "ab")
        if fresh:
            self._write(("header", dict(fingerprint), None))

    def _write(self, record: tuple[str, Any, Any]) -> None:
        pickle.dump(record, self._handle, protocol=pickle.HIGHEST_PROTOCOL)
        self._handle.flush()

    def image(self, index: int, statistics: tuple[Any, Any]) -> None:
        self._write(("image", index, statistics))

    def timing(self, index: int, timing: tuple[int, float, float]) -> None:
        self._write(("timing", index, timing))

    def close(self) -> None:
        self._handle.close()
