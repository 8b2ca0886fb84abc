"""The options the scripts share, their argparse types and the dataset presets (standard library only)."""

from __future__ import annotations

import argparse
import importlib.util
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError

PARQUET_REVISION = "refs/convert/parquet"
"""The Hub's automatic Parquet export of a dataset repository."""
DTYPE_NAMES = ("float32", "float16", "bfloat16")
"""``--dtype`` choices: names of torch dtypes."""
SETTING_FLAGS = (
    "clustering_location",
    "num_clusters",
    "cluster_ratio",
    "clustering_iterations",
    "clustering_temperature",
    "clustering_window_size",
    "reconstruction_location",
    "reconstruction_k",
    "reconstruction_temperature",
    "reconstruction_normalization",
    "reconstruction_mode",
    "reconstruction_residual",
    "clustered_window_size",
    "official_shift_mask",
)
"""The Expedite settings that scripts take as flags (``--num-clusters``): ``hf_expedite.conversion.SETTING_NAMES``
but ``expedite``, the switch itself; a test keeps the two equal."""


def package_file(relative: str) -> Path:
    """A data file shipped in the ``hf_expedite`` package, located without importing the package."""
    spec = importlib.util.find_spec("hf_expedite")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("The hf_expedite package is not installed.")
    return Path(next(iter(spec.submodule_search_locations))) / relative


COCO_PANOPTIC_CATEGORIES = package_file("evaluation/coco_panoptic_categories.json")
"""{COCO category id: name} of the 133 COCO panoptic categories (80 things, then 53 stuff; panopticapi's names)."""


@dataclass(frozen=True)
class Benchmark:
    """A dataset preset: where the data lives (``dataset=None``: the user passes ``--dataset``) and the options that
    describe its data (argparse destinations -> values: split, columns, label conventions, ...)."""

    description: str
    dataset: str | None
    config: str | None = None
    revision: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


def parse_expedite(value: str) -> bool | str | dict[str, Any]:
    """``--expedite``: ``true`` (the architecture's default preset), a preset name, or a JSON object of settings."""
    text = value.strip()
    if text.startswith("{"):
        try:
            settings = json.loads(text)
        except json.JSONDecodeError as error:
            raise argparse.ArgumentTypeError(f"--expedite is not valid JSON ({error}): {text}") from None
        if not isinstance(settings, dict):
            raise argparse.ArgumentTypeError(f"--expedite JSON must be an object of settings, got {text}")
        return settings
    if text.lower() == "true":
        return True
    if text.lower() == "false":
        raise argparse.ArgumentTypeError("--expedite false would compare the vanilla model with itself.")
    return text


def _whole_number(value: str, minimum: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {number}")
    return number


def positive_int(value: str) -> int:
    """An argparse type: an integer >= 1."""
    return _whole_number(value, 1)


def non_negative_int(value: str) -> int:
    """An argparse type: an integer >= 0."""
    return _whole_number(value, 0)


def build_parser(description: str, benchmarks: Mapping[str, Benchmark]) -> argparse.ArgumentParser:
    """A parser with the options every evaluation script shares; the script adds its task's options.

    Options that describe the data default to ``None`` and are filled by :func:`resolve_options`.
    """
    default = next(iter(benchmarks))
    listing = "; ".join(
        f"{name}: {b.description}" + (f" ({b.dataset})" if b.dataset else " (needs --dataset)")
        for name, b in benchmarks.items()
    )
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="model id on the hub or local directory (vanilla or expedited checkpoint)")
    parser.add_argument("--model-revision", help="model revision (branch, tag or commit)")
    data = parser.add_argument_group("data")
    data.add_argument(
        "--benchmark",
        choices=list(benchmarks),
        help=f"dataset preset (default: {default}, unless --dataset is given). {listing}",
    )
    data.add_argument(
        "--dataset",
        help="hub dataset id, local folder of data files (e.g. Parquet) or folder written by save_to_disk; "
        "replaces the benchmark's dataset. Without --benchmark, a custom dataset gets the generic option defaults",
    )
    data.add_argument("--dataset-config", help="dataset configuration (for a Parquet export: its sub-directory)")
    data.add_argument("--revision", help="dataset revision, e.g. refs/convert/parquet")
    data.add_argument("--split", help="dataset split")
    data.add_argument("--image-column", help="column holding the input images")
    data.add_argument("--max-samples", type=positive_int, help="evaluate only the first N samples")
    data.add_argument(
        "--check-samples",
        type=non_negative_int,
        default=8,
        help="references checked before any model is loaded (default: 8); later bad samples are skipped and listed",
    )
    run = parser.add_argument_group("run")
    run.add_argument(
        "--expedite",
        type=parse_expedite,
        help="expedited twin: 'true' (the architecture's default preset), a preset name, or a JSON object of "
        "settings. Default: the saved settings of an expedited checkpoint, else 'true'",
    )
    run.add_argument("--batch-size", type=positive_int, default=1, help="images per forward pass (default: 1)")
    run.add_argument("--dtype", choices=DTYPE_NAMES, default="float32", help="model dtype (default: float32)")
    run.add_argument("--device", help="torch device (default: this process's accelerate device)")
    run.add_argument(
        "--warmup", type=non_negative_int, default=1, help="untimed forward passes per model first (default: 1)"
    )
    run.add_argument("--output-dir", default="evaluation_results", help="report folder (default: evaluation_results)")
    saved = run.add_mutually_exclusive_group()
    saved.add_argument("--overwrite", action="store_true", help="replace an existing report in --output-dir")
    saved.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run from the per-image results it left in --output-dir (same model, data and "
        "settings); only the images not evaluated yet are run",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def resolve_options(
    args: argparse.Namespace, benchmarks: Mapping[str, Benchmark], generic: Mapping[str, Any]
) -> argparse.Namespace:
    """Fill the options left at ``None``: from the benchmark when the data is the benchmark's (``--benchmark`` given,
    or no ``--dataset``), else from the ``generic`` defaults. The benchmark's dataset, config and revision apply only
    without ``--dataset``."""
    uses_benchmark = args.benchmark is not None or args.dataset is None
    name = args.benchmark or next(iter(benchmarks))
    benchmark = benchmarks[name]
    if args.dataset is None:
        if benchmark.dataset is None:
            raise InputError(
                f"Benchmark {name!r} has no public dataset on the hub: pass --dataset ({benchmark.description})."
            )
        args.dataset = benchmark.dataset
        args.dataset_config = args.dataset_config or benchmark.config
        args.revision = args.revision or benchmark.revision
    defaults = {**generic, **(benchmark.options if uses_benchmark else {})}
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.benchmark = name if uses_benchmark else None
    return args
