"""Side-by-side report of a vanilla and an expedited model: a markdown table and a JSON file."""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

SPEED_ROWS = (("images/s", "images_per_second"), ("latency (ms/image)", "latency_ms"))


@dataclass
class ModelResult:
    """Evaluation outcome of one model: metric values, throughput and mean latency per image."""

    metrics: Mapping[str, Any]
    images_per_second: float
    latency_ms: float
    num_images: int
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metrics": dict(self.metrics),
            "images_per_second": self.images_per_second,
            "latency_ms": self.latency_ms,
            "num_images": self.num_images,
            "details": dict(self.details),
        }


def _scalar(value: Any) -> float | None:
    """`value` as a float when it is a real scalar (numpy included), else None."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, (Real, np.number)) and not isinstance(value, bool):
        return float(value)
    return None


def _row(name: str, vanilla: float | None, expedited: float | None) -> dict[str, Any]:
    """A comparison row; the ratio is None where it is undefined (missing value, zero or NaN)."""
    ratio = None
    if vanilla is not None and expedited is not None and vanilla != 0:
        ratio = expedited / vanilla if math.isfinite(expedited / vanilla) else None
    return {"name": name, "vanilla": vanilla, "expedited": expedited, "ratio": ratio}


def comparison_rows(vanilla: ModelResult, expedited: ModelResult) -> list[dict[str, Any]]:
    """Rows `{"name", "vanilla", "expedited", "ratio"}` (ratio = expedited / vanilla) for the scalar metrics
    present in either result (vanilla's order first), then images/s and latency."""
    names = list(vanilla.metrics) + [name for name in expedited.metrics if name not in vanilla.metrics]
    rows = [_row(name, _scalar(vanilla.metrics.get(name)), _scalar(expedited.metrics.get(name))) for name in names]
    rows = [row for row in rows if (row["vanilla"], row["expedited"]) != (None, None)]
    for label, attribute in SPEED_ROWS:
        rows.append(_row(label, float(getattr(vanilla, attribute)), float(getattr(expedited, attribute))))
    return rows


def _format(value: float | None, digits: int = 4) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}" if abs(value) < 10 else f"{value:.2f}"


def markdown_report(
    vanilla: ModelResult,
    expedited: ModelResult,
    *,
    title: str = "Vanilla vs expedited",
    metadata: Mapping[str, Any] | None = None,
) -> str:
    """Markdown: a title, `metadata` as a bullet list, then the comparison table."""
    lines = [f"## {title}", ""]
    info = {"images (vanilla / expedited)": f"{vanilla.num_images} / {expedited.num_images}", **(metadata or {})}
    lines += [f"- {key}: {value}" for key, value in info.items()] + [""]
    lines += ["| metric | vanilla | expedited | expedited / vanilla |", "|---|---:|---:|---:|"]
    for row in comparison_rows(vanilla, expedited):
        cells = [_format(row["vanilla"]), _format(row["expedited"]), _format(row["ratio"], 3)]
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_jsonable(value: Any) -> Any:
    """Recursively convert numpy values, tuples and non-string keys for JSON; NaN and infinities become None."""
    if isinstance(value, Mapping):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item) for item in value]
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def prepare_output_dir(out_dir: str | Path, names: Sequence[str] = (), *, overwrite: bool = False) -> Path:
    """Create ``out_dir`` and check that the report can be written there, before any long work; return it.

    A ``ValueError`` says what is wrong: a path below a regular file, no permission, or (unless ``overwrite``) one of
    ``names`` already there, so that a finished report is never replaced silently.
    """
    path = Path(out_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=f".write-check-{os.getpid()}-"):
            pass
    except OSError as error:
        raise ValueError(f"--output-dir {str(path)!r} cannot hold the report: {error.strerror or error}.") from None
    existing = [name for name in names if (path / name).exists()]
    if existing and not overwrite:
        raise ValueError(
            f"--output-dir {str(path)!r} already holds {', '.join(existing)}: pass --overwrite to replace it, or "
            "choose another --output-dir."
        )
    return path


def write_report(
    vanilla: ModelResult,
    expedited: ModelResult,
    out_dir: str | Path,
    *,
    stem: str = "report",
    title: str = "Vanilla vs expedited",
    metadata: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write `<out_dir>/<stem>.md` (table) and `<out_dir>/<stem>.json` (everything, including per-category
    arrays, plus the ratios); return both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown_path, json_path = out_dir / f"{stem}.md", out_dir / f"{stem}.json"
    markdown_path.write_text(markdown_report(vanilla, expedited, title=title, metadata=metadata), encoding="utf-8")
    payload = {
        "title": title,
        "metadata": dict(metadata or {}),
        "vanilla": vanilla.to_dict(),
        "expedited": expedited.to_dict(),
        "ratios": {row["name"]: row["ratio"] for row in comparison_rows(vanilla, expedited)},
    }
    json_path.write_text(json.dumps(to_jsonable(payload), indent=2) + "\n", encoding="utf-8")
    return markdown_path, json_path
