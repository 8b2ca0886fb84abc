"""Model-agnostic evaluation plumbing: dataset loading and batching, multi-process sharding and gathering, reports.

Needs the `eval` extra (`datasets`, `accelerate`).
"""

from .datasets_io import (
    PARQUET_REVISION,
    Batch,
    ImageBatches,
    SkippedSample,
    check_columns,
    load_eval_dataset,
    num_samples,
)
from .distributed import gather_by_index, get_state, shard_indices, shutdown
from .report import ModelResult, comparison_rows, markdown_report, to_jsonable, write_report

__all__ = [
    "PARQUET_REVISION",
    "Batch",
    "ImageBatches",
    "ModelResult",
    "SkippedSample",
    "check_columns",
    "comparison_rows",
    "gather_by_index",
    "get_state",
    "load_eval_dataset",
    "markdown_report",
    "num_samples",
    "shard_indices",
    "shutdown",
    "to_jsonable",
    "write_report",
]
