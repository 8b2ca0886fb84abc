"""The part the evaluation scripts share: checks before any work, the vanilla + expedited model pair, the timed
(multi-process) evaluation loop and the report.

A task is an :class:`EvaluationTask` subclass (how to read a reference from a dataset row, how to post-process model
outputs, the metric's per-image statistics and how to combine them); a script parses its options with
``hf_expedite_cli.options`` (its datasets as :class:`~hf_expedite_cli.options.Benchmark` presets), then calls
:func:`run`. The flow, identical on every process of an ``accelerate launch``:

1. checks that need no weights: the model config's task, the Expedite request, the dataset's columns, and the
   references of the first ``--check-samples`` samples (label range, map shape, category mapping);
2. loads the model once and builds its expedited (or vanilla) twin sharing the weights (``hf_expedite.expedite``);
3. evaluates this process's shard of the dataset: each image is preprocessed alone (so no image is padded to another
   one's size), images with equal input shapes are stacked, and every stack runs through the vanilla and then the
   expedited model, each forward pass timed on its own; per-image metric statistics are kept, not predictions;
4. gathers statistics, timings and skipped samples by dataset index on the main process, which computes each metric
   once (in dataset order, so the result does not depend on the number of processes) and writes the report.
"""

from __future__ import annotations

import abc
import argparse
import json
import statistics as stats
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from transformers import AutoConfig, AutoImageProcessor, BatchFeature, PreTrainedConfig

from hf_expedite_cli.errors import InputError, Interrupted
from hf_expedite_cli.options import DTYPE_NAMES

from .datasets_io import ImageBatches, load_eval_dataset
from .distributed import gather_by_index, get_state, shard_indices, shutdown
from .partial import PartialLog, Recorded, load_recorded, partial_files
from .report import ModelResult, prepare_output_dir, write_report

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}
"""``--dtype`` name -> torch dtype."""
TIMING_NOTE = "model forward passes only (pre- and post-processing excluded), summed over the processes"


@dataclass
class Reference:
    """One sample's ground truth: a 2-D ``map`` (depth, labels, segment ids) at the size predictions are compared
    at, and whatever else the task needs (valid mask, segment list)."""

    map: np.ndarray
    info: Any = None


class EvaluationTask(abc.ABC):
    """What a script plugs into the shared loop. Subclasses set the class attributes and implement the methods."""

    name: ClassVar[str]
    """Report file stem."""
    title: ClassVar[str]
    kind: ClassVar[str]
    """What the model must do, in words ("depth estimation"), for error messages."""
    auto_classes: ClassVar[tuple[type, ...]]
    """hf_expedite Auto classes a suitable model loads with, in order of preference."""
    label_columns: tuple[str, ...] = ()
    """Dataset columns read besides the image."""

    @abc.abstractmethod
    def reference(self, index: int, columns: Mapping[str, Any]) -> Reference:
        """The decoded, checked reference of dataset sample ``index``; a ValueError says what is wrong with it,
        starting with "Image <index>:" (the metrics' wording)."""

    def check(self, references: Sequence[Reference]) -> None:
        """Checks over the first references together, before any model is loaded (a ValueError stops the run)."""

    @abc.abstractmethod
    def predictions(
        self, processor: Any, outputs: Any, sizes: Sequence[tuple[int, int]], inputs: Mapping[str, Any]
    ) -> list[Any]:
        """Post-process one batch of model outputs (for ``inputs``) to predictions at ``sizes`` (height, width)."""

    @abc.abstractmethod
    def statistics(self, prediction: Any, reference: Reference, index: int) -> Any:
        """The metric's statistics for one image (small and picklable)."""

    @abc.abstractmethod
    def metrics(self, statistics: Sequence[Any]) -> dict[str, Any]:
        """The metric values from every image's statistics, in dataset order."""

    def input_image(self, image: Any) -> Any:
        """The model input made from a dataset image (default: the image itself; a protocol's crop, say). Its
        reference (:meth:`reference`) must describe the same pixels."""
        return image

    def preprocess(self, processor: Any, image: Any) -> BatchFeature:
        """One image's model inputs (default: the image processor's, as configured)."""
        return processor(images=image, return_tensors="pt")

    def infer(self, model: torch.nn.Module, inputs: Mapping[str, torch.Tensor]) -> Any:
        """The model's outputs for a stack of inputs (default: one forward pass; a sliding window runs several)."""
        return model(**inputs)

    def metadata(self) -> dict[str, Any]:
        """Task options worth recording in the report."""
        return {}


# ---------------------------------------------------------------- options


def load_json_option(value: str) -> Any:
    """A JSON option given inline, as a local file, or as a hub file ``hf://[datasets/|spaces/]owner/repo/file``."""
    text = value.strip()
    if text.startswith(("{", "[")):
        return json.loads(text)
    if text.startswith("hf://"):
        from huggingface_hub import hf_hub_download

        parts = text[len("hf://") :].split("/")
        repo_type = None
        if parts[0] in ("datasets", "spaces"):
            repo_type, parts = parts[0][:-1], parts[1:]
        if len(parts) < 3:
            raise ValueError(f"Expected hf://[datasets/]owner/repo/path/to/file.json, got {value!r}.")
        text = hf_hub_download("/".join(parts[:2]), "/".join(parts[2:]), repo_type=repo_type)
    path = Path(text)
    if not path.is_file():
        raise ValueError(f"{value!r} is neither inline JSON, an existing file nor an hf:// file.")
    return json.loads(path.read_text(encoding="utf-8"))


def parse_ids(text: str) -> set[int]:
    """An id list option: ``"0-79,85"`` -> {0, ..., 79, 85}."""
    ids: set[int] = set()
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        first, _, last = part.partition("-")
        try:
            ids.update(range(int(first), int(last or first) + 1))
        except ValueError:
            raise ValueError(f"Cannot read {part!r} in the id list {text!r}; use e.g. 0-79,85.") from None
    return ids


def panoptic_post_processing(
    num_labels: int, thing_ids: set[int] | None, threshold: float, mask_threshold: float, overlap_threshold: float
) -> dict[str, Any]:
    """Keyword arguments of ``post_process_panoptic_segmentation``: the thresholds, and the stuff classes (all but
    ``thing_ids``) fused into one segment per class; nothing fused when the things are unknown."""
    outside = sorted(i for i in thing_ids or () if not 0 <= i < num_labels)
    if outside:
        raise ValueError(f"Thing ids {outside[:10]} lie outside the model's labels [0, {num_labels}).")
    return {
        "threshold": threshold,
        "mask_threshold": mask_threshold,
        "overlap_mask_area_threshold": overlap_threshold,
        "label_ids_to_fuse": set(range(num_labels)) - thing_ids if thing_ids else set(),
    }


# ---------------------------------------------------------------- checks and loading


def auto_class_for_task(config: PreTrainedConfig, auto_classes: Sequence[type], kind: str, model: str) -> type:
    """The first of ``auto_classes`` that loads ``config``'s saved architecture; a ValueError saying that ``model``
    is not a ``kind`` model otherwise."""
    architectures = set(config.architectures or [])
    for auto_class in auto_classes:
        mapping = auto_class._model_mapping
        if type(config) not in mapping:
            continue
        classes = mapping[type(config)]
        classes = classes if isinstance(classes, (list, tuple)) else (classes,)
        names = {klass.__name__ for cls in classes for klass in cls.__mro__}
        if not architectures or architectures & names:
            return auto_class
    what = ", ".join(sorted(architectures)) or f"model_type {config.model_type!r}"
    raise ValueError(
        f"{model} is a {what} model, not a {kind} model; this script evaluates models loadable with "
        f"{' or '.join(a.__name__ for a in auto_classes)}."
    )


def expedited_settings_of(config: PreTrainedConfig) -> dict[str, Any]:
    """The Expedite settings a config carries (itself or its backbone config)."""
    from ..conversion import settings_holder
    from ..settings import expedite_settings

    holder = settings_holder(config)
    return {} if holder is None else expedite_settings(holder)


def check_expedite_request(config: PreTrainedConfig, request: Any) -> dict[str, Any]:
    """Validate ``--expedite`` against the config (no weights read); return the settings the twin will have."""
    from .. import expedite_config
    from ..conversion import is_expedited

    if request is None and is_expedited(config):
        return expedited_settings_of(config)
    return expedited_settings_of(expedite_config(config, True if request is None else request))


def describe_request(config: PreTrainedConfig, request: Any) -> Any:
    """``--expedite`` for the report: the request, or what ``None`` means for this checkpoint."""
    from ..conversion import is_expedited

    if request is None:
        return "saved settings" if is_expedited(config) else "default preset"
    return request


def load_model(
    model_id: str, auto_class: type, *, revision: str | None, dtype: torch.dtype, device: torch.device | str
) -> torch.nn.Module:
    """The checkpoint as saved (vanilla or expedited), in eval mode on ``device``."""
    return auto_class.from_pretrained(model_id, revision=revision, dtype=dtype).to(device).eval()


def model_pair(model: torch.nn.Module, request: Any) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(vanilla, expedited) sharing ``model``'s weight tensors; one of them is ``model`` itself.

    ``request`` is an ``expedite=`` value; ``None`` keeps an expedited checkpoint's saved settings (and means the
    default preset for a vanilla one).
    """
    from .. import expedite
    from ..conversion import is_expedited

    if is_expedited(model.config):
        return expedite(model, False), model if request is None else expedite(model, request)
    return model, expedite(model, True if request is None else request)


def check_references(dataset: Any, task: EvaluationTask, image_column: str, count: int) -> None:
    """Read the references of the first ``count`` samples (a ValueError names the first bad one) and run the task's
    joint check on them."""
    indices = range(min(count, len(dataset)))
    batches = ImageBatches(
        dataset, image_column=image_column, columns=task.label_columns, indices=indices, progress=False
    )
    references = []
    for batch in batches:
        for offset, index in enumerate(batch.indices):
            columns = {name: batch.columns[name][offset] for name in task.label_columns}
            references.append(task.reference(index, columns))
    if references:
        task.check(references)


# ---------------------------------------------------------------- timed evaluation


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_forward(
    model: torch.nn.Module,
    inputs: Mapping[str, torch.Tensor],
    infer: Callable[[torch.nn.Module, Mapping[str, torch.Tensor]], Any] | None = None,
) -> tuple[Any, float]:
    """``model(**inputs)`` (or ``infer(model, inputs)``) under inference mode and its wall-clock seconds (device
    synchronised)."""
    device = next(model.parameters()).device
    _synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        outputs = model(**inputs) if infer is None else infer(model, inputs)
    _synchronize(device)
    return outputs, time.perf_counter() - start


def stacked_inputs(
    processor: Any,
    images: Sequence[Any],
    device: torch.device | str,
    dtype: torch.dtype,
    preprocess: Callable[[Any, Any], BatchFeature] | None = None,
) -> Iterator[tuple[list[int], BatchFeature]]:
    """Preprocess each image alone (``preprocess(processor, image)``, default the processor) and stack those whose
    inputs have equal shapes: (positions in ``images``, inputs on ``device`` with floating tensors in ``dtype``), so
    no image is padded to the size of another."""
    groups: dict[tuple, list[tuple[int, BatchFeature]]] = {}
    for position, image in enumerate(images):
        encoded = processor(images=image, return_tensors="pt") if preprocess is None else preprocess(processor, image)
        key = tuple((name, tuple(value.shape)) for name, value in encoded.items())
        groups.setdefault(key, []).append((position, encoded))
    for members in groups.values():
        names = members[0][1].keys()
        stacked = BatchFeature({name: torch.cat([encoded[name] for _, encoded in members]) for name in names})
        yield [position for position, _ in members], stacked.to(device=device, dtype=dtype)


@dataclass
class ShardResults:
    """One process's results, keyed by dataset index (timings by the first index of each forward pass).
    ``interrupted``: Ctrl-C stopped the loop; the results hold the images finished before."""

    statistics: dict[int, tuple[Any, Any]] = field(default_factory=dict)
    timings: dict[int, tuple[int, float, float]] = field(default_factory=dict)
    skipped: dict[int, str] = field(default_factory=dict)
    invalid: dict[int, str] = field(default_factory=dict)
    interrupted: bool = False


def _failure(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def evaluate_shard(
    vanilla: torch.nn.Module,
    expedited: torch.nn.Module,
    processor: Any,
    task: EvaluationTask,
    batches: ImageBatches,
    *,
    device: torch.device | str,
    dtype: torch.dtype,
    warmup: int,
    log: PartialLog | None = None,
) -> ShardResults:
    """Run both models over ``batches``; keep per-image statistics and per-forward timings (also appended to
    ``log``). A sample whose reference, post-processing or statistics fail is listed in ``invalid``, never fatal;
    Ctrl-C ends the loop with what is finished (``interrupted``)."""
    results = ShardResults()
    try:
        _evaluate_batches(vanilla, expedited, processor, task, batches, device, dtype, warmup, log, results)
    except KeyboardInterrupt:
        results.interrupted = True
    results.skipped = {s.index: f"column {s.column!r}: {s.error}" for s in batches.skipped}
    return results


def _invalid(results: ShardResults, index: int, error: BaseException) -> None:
    results.invalid[index] = str(error) if isinstance(error, ValueError) else _failure(error)
    warnings.warn(f"Skipping dataset index {index}: {results.invalid[index]}", stacklevel=3)


def _evaluate_batches(
    vanilla: torch.nn.Module,
    expedited: torch.nn.Module,
    processor: Any,
    task: EvaluationTask,
    batches: ImageBatches,
    device: torch.device | str,
    dtype: torch.dtype,
    warmup: int,
    log: PartialLog | None,
    results: ShardResults,
) -> None:
    warm = warmup == 0
    for batch in batches:
        references: dict[int, Reference] = {}
        for offset, index in enumerate(batch.indices):
            try:
                references[offset] = task.reference(
                    index, {name: batch.columns[name][offset] for name in task.label_columns}
                )
            except Exception as error:  # noqa: BLE001 - one bad row never aborts the run
                _invalid(results, index, error)
        images = {}
        for offset in list(references):
            try:
                images[offset] = task.input_image(batch.images[offset])
            except Exception as error:  # noqa: BLE001
                _invalid(results, batch.indices[offset], error)
        offsets = list(images)
        for positions, inputs in stacked_inputs(processor, list(images.values()), device, dtype, task.preprocess):
            members = [offsets[p] for p in positions]
            sizes = [tuple(references[o].map.shape[:2]) for o in members]
            if not warm:
                for _ in range(warmup):
                    timed_forward(vanilla, inputs, task.infer)
                    timed_forward(expedited, inputs, task.infer)
                warm = True
            predictions, seconds = [], []
            for model in (vanilla, expedited):
                outputs, elapsed = timed_forward(model, inputs, task.infer)
                predictions.append(_post_process(task, processor, outputs, sizes, inputs))
                seconds.append(elapsed)
            first = batch.indices[members[0]]
            results.timings[first] = (len(members), *seconds)
            if log is not None:
                log.timing(first, results.timings[first])
            for position, offset in enumerate(members):
                index = batch.indices[offset]
                try:
                    pair = tuple(
                        task.statistics(_prediction(model_predictions, position), references[offset], index)
                        for model_predictions in predictions
                    )
                except Exception as error:  # noqa: BLE001 - e.g. a prediction the metric rejects: skip this image
                    _invalid(results, index, error)
                    continue
                results.statistics[index] = pair
                if log is not None:
                    log.image(index, pair)


def _post_process(
    task: EvaluationTask, processor: Any, outputs: Any, sizes: Sequence[tuple[int, int]], inputs: Mapping[str, Any]
) -> Any:
    """The batch's predictions, or the exception that post-processing raised (it fails the batch's images)."""
    try:
        return task.predictions(processor, outputs, sizes, inputs)
    except Exception as error:  # noqa: BLE001
        return error


def _prediction(predictions: Any, position: int) -> Any:
    if isinstance(predictions, Exception):
        raise predictions
    return predictions[position]


def model_results(task: EvaluationTask, results: ShardResults) -> tuple[ModelResult, ModelResult]:
    """Metrics (computed once, in dataset order) and speed of both models from the gathered results."""
    if not results.statistics:
        raise ValueError(
            "No sample could be evaluated: "
            + json.dumps({"skipped": results.skipped, "invalid": results.invalid}, default=str)[:2000]
        )
    counts = np.array([count for count, _, _ in results.timings.values()], dtype=np.float64)
    out = []
    for position in (0, 1):
        seconds = np.array([timing[1 + position] for timing in results.timings.values()], dtype=np.float64)
        out.append(
            ModelResult(
                metrics=task.metrics([pair[position] for pair in results.statistics.values()]),
                images_per_second=float(counts.sum() / seconds.sum()),
                latency_ms=float(stats.median(1000.0 * seconds / counts)),
                num_images=len(results.statistics),
                details={"forward_seconds": float(seconds.sum()), "forward_passes": len(seconds)},
            )
        )
    return out[0], out[1]


def gather(results: ShardResults) -> ShardResults:
    """All processes' results on the main process (empty elsewhere); must be called by every process."""
    return ShardResults(
        statistics=gather_by_index(results.statistics),
        timings=gather_by_index(results.timings),
        skipped=gather_by_index(results.skipped),
        invalid=gather_by_index(results.invalid),
    )


# ---------------------------------------------------------------- the whole run


def run(
    args: argparse.Namespace,
    task_type: type[EvaluationTask],
    make_task: Callable[[argparse.Namespace, PreTrainedConfig, Any], EvaluationTask],
) -> dict[str, Any] | None:
    """Evaluate ``args.model`` and its expedited twin (see the module docstring). Returns the report's JSON payload
    on the main process and None on the others; every process must call it."""
    try:
        return _run(args, task_type, make_task)
    finally:
        shutdown()


def _fingerprint(args: argparse.Namespace, task: EvaluationTask) -> dict[str, Any]:
    """What must match for ``--resume`` to continue a run: model, data, settings and task options."""
    return json.loads(
        json.dumps(
            {
                "model": args.model,
                "model_revision": args.model_revision,
                "dataset": args.dataset,
                "dataset_config": args.dataset_config,
                "split": args.split,
                "revision": args.revision,
                "max_samples": args.max_samples,
                "expedite": args.expedite,
                "dtype": args.dtype,
                "task": task.metadata(),
            },
            default=str,
            sort_keys=True,
        )
    )


def _run(
    args: argparse.Namespace,
    task_type: type[EvaluationTask],
    make_task: Callable[[argparse.Namespace, PreTrainedConfig, Any], EvaluationTask],
) -> dict[str, Any] | None:
    state = get_state()
    stem = task_type.name
    try:
        if partial_files(args.output_dir, stem) and not (args.resume or args.overwrite):
            raise ValueError(
                f"--output-dir {args.output_dir!r} holds the partial results of an interrupted run: pass --resume to "
                "continue it, or --overwrite to start over."
            )
        names = [f"{stem}.md", f"{stem}.json"]
        output_dir = prepare_output_dir(args.output_dir, names, overwrite=args.overwrite or args.resume)
        config = AutoConfig.from_pretrained(args.model, revision=args.model_revision)
        auto_class = auto_class_for_task(config, task_type.auto_classes, task_type.kind, args.model)
        settings = check_expedite_request(config, args.expedite)
        processor = AutoImageProcessor.from_pretrained(args.model, revision=args.model_revision)
        task = make_task(args, config, processor)
        fingerprint = _fingerprint(args, task)
        recorded = load_recorded(output_dir, stem, fingerprint) if args.resume else Recorded()
        dataset = load_eval_dataset(
            args.dataset,
            config=args.dataset_config,
            split=args.split,
            revision=args.revision,
            columns=[args.image_column, *task.label_columns],
            max_samples=args.max_samples,
        )
        check_references(dataset, task, args.image_column, args.check_samples)
    except (ValueError, OSError) as error:
        raise InputError(str(error)) from error
    if not args.resume and state.is_main_process:
        for path in partial_files(output_dir, stem):  # --overwrite: an earlier run's partial results
            path.unlink()
    state.wait_for_everyone()

    device = torch.device(args.device) if args.device else state.device
    dtype = DTYPES[args.dtype]
    model = load_model(args.model, auto_class, revision=args.model_revision, dtype=dtype, device=device)
    vanilla, expedited = model_pair(model, args.expedite)
    indices = [index for index in shard_indices(len(dataset)) if index not in recorded.statistics]
    batches = ImageBatches(
        dataset,
        batch_size=args.batch_size,
        image_column=args.image_column,
        columns=task.label_columns,
        indices=indices,
        progress=state.is_main_process and not args.no_progress,
        desc=f"{task.name}: vanilla + expedited",
    )
    log = PartialLog(output_dir, stem, state.process_index, fingerprint)
    try:
        local = evaluate_shard(
            vanilla, expedited, processor, task, batches, device=device, dtype=dtype, warmup=args.warmup, log=log
        )
    finally:
        log.close()
    if state.is_main_process:  # what earlier runs recorded joins once, on the main process
        local.statistics = {**recorded.statistics, **local.statistics}
        local.timings = {**recorded.timings, **local.timings}
    gathered = gather(local)
    interrupted = any(gather_by_index({state.process_index: local.interrupted}).values())
    if not state.is_main_process:
        return None
    done = f"{len(gathered.statistics)} of {len(dataset)} images evaluated"
    if interrupted and not gathered.statistics:
        raise Interrupted(f"no image was evaluated; nothing to report ({output_dir}).")
    vanilla_result, expedited_result = model_results(task, gathered)
    metadata = {
        "model": args.model,
        "dataset": " ".join(filter(None, [args.dataset, args.dataset_config, f"split={args.split}", args.revision])),
        "benchmark": args.benchmark or "custom dataset",
        "samples": f"{len(dataset)} ({len(gathered.skipped)} undecodable, {len(gathered.invalid)} invalid references)",
        "expedite": describe_request(config, args.expedite),
        "expedited settings": {name: value for name, value in settings.items() if value is not None},
        "device / dtype": f"{device.type} / {args.dtype}",
        "batch size / processes": f"{args.batch_size} / {state.num_processes}",
        "timing": TIMING_NOTE,
        **task.metadata(),
    }
    if interrupted:
        metadata["interrupted"] = f"PARTIAL REPORT: stopped by Ctrl-C, {done}; continue with --resume"
    if recorded.statistics:
        metadata["resumed"] = f"{len(recorded.statistics)} images from an earlier, interrupted run"
    if gathered.skipped:
        metadata["skipped samples"] = gathered.skipped
    if gathered.invalid:
        metadata["invalid samples"] = gathered.invalid
    title = f"{task.title}: vanilla vs expedited" + (" (partial: interrupted)" if interrupted else "")
    markdown_path, json_path = write_report(
        vanilla_result, expedited_result, output_dir, stem=stem, title=title, metadata=metadata
    )
    print(markdown_path.read_text(encoding="utf-8"))
    if interrupted:
        raise Interrupted(
            f"partial report ({done}) written to {markdown_path}; run the same command with --resume to continue."
        )
    for path in partial_files(output_dir, stem):
        path.unlink()
    return json.loads(json_path.read_text(encoding="utf-8"))
