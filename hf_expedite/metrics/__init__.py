"""`evaluate` metric modules bundled with hf_expedite, loadable offline.

Each metric lives in `METRICS_DIR/<name>/<name>.py`, the layout `evaluate.load` expects for a local directory, so
`evaluate.load(str(METRICS_DIR / "mean_iou"))` works as well as `load_metric("mean_iou")`.
"""

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import evaluate

METRICS_DIR = Path(__file__).resolve().parent
METRIC_NAMES = ("depth", "mean_iou", "panoptic_quality")


def metric_path(name: str) -> Path:
    """Directory of the bundled metric `name` (a path `evaluate.load` accepts)."""
    if name not in METRIC_NAMES:
        raise ValueError(f"Unknown metric {name!r}; bundled metrics: {', '.join(METRIC_NAMES)}.")
    return METRICS_DIR / name


def load_metric(name: str, **kwargs: Any) -> "evaluate.EvaluationModule":
    """Load a bundled metric with `evaluate.load` (no network); kwargs go to `evaluate.load`
    (e.g. `num_process`, `process_id`, `experiment_id`, `keep_in_memory`)."""
    import evaluate

    return evaluate.load(str(metric_path(name)), **kwargs)
