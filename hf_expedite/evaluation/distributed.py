"""Helpers so one evaluation loop runs unchanged in a single process or under `accelerate launch`.

Each process evaluates a shard of the dataset indices (`shard_indices`), keeps its per-sample results in a dict
keyed by dataset index, and `gather_by_index` brings them to the main process, in dataset order and without
duplicates; the main process then computes the metric once. `shutdown()` ends the run cleanly.

On a machine without GPUs, launch several CPU processes with the multi-process launcher (the `--cpu` flag alone
starts a single process in accelerate 1.x):

    python -m accelerate.commands.launch --multi_gpu --num_processes 2 [--main_process_port 29511] script.py

`get_state` then selects CPU processes with the gloo backend (also when `ACCELERATE_USE_CPU=1` is set).
"""

from __future__ import annotations

import functools
from typing import Any, Literal, Mapping

import torch
import torch.distributed as dist
from accelerate import PartialState
from accelerate.utils.environment import parse_flag_from_env


def get_state() -> PartialState:
    """The process's `accelerate.PartialState`, on CPU when no GPU is available or `ACCELERATE_USE_CPU` is set."""
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())


def shard_indices(
    num_items: int,
    *,
    strategy: Literal["contiguous", "strided"] = "contiguous",
    num_processes: int | None = None,
    process_index: int | None = None,
) -> list[int]:
    """Dataset indices for one process; the shards of all processes partition `range(num_items)`.

    "contiguous": process p gets one block; the first `num_items % num_processes` blocks hold one extra item.
    "strided": process p gets p, p + num_processes, ...  Shard sizes differ by at most one (some may be empty).
    `num_processes` / `process_index` default to those of `get_state()`.
    """
    if num_processes is None or process_index is None:
        state = get_state()
        num_processes = state.num_processes if num_processes is None else num_processes
        process_index = state.process_index if process_index is None else process_index
    if num_items < 0 or num_processes < 1 or not 0 <= process_index < num_processes:
        raise ValueError(
            f"Invalid sharding: num_items={num_items}, num_processes={num_processes}, process_index={process_index}."
        )
    if strategy == "strided":
        return list(range(process_index, num_items, num_processes))
    if strategy != "contiguous":
        raise ValueError(f"Unknown sharding strategy {strategy!r}; use 'contiguous' or 'strided'.")
    base, extra = divmod(num_items, num_processes)
    start = process_index * base + min(process_index, extra)
    return list(range(start, start + base + (process_index < extra)))


@functools.lru_cache(maxsize=None)
def _object_group() -> dist.ProcessGroup | None:
    """A gloo group for object collectives (None = the default group when it already is gloo), so that large
    results travel through host memory instead of GPU memory under NCCL. Created once, by every process."""
    if dist.get_backend() == "gloo":
        return None
    return dist.new_group(backend="gloo")


def _merge(parts: list[Mapping[int, Any]]) -> dict[int, Any]:
    """Merge per-process dicts into one sorted by index; an index produced twice is an error."""
    merged: dict[int, Any] = {}
    for rank, part in enumerate(parts):
        for index, value in part.items():
            if index in merged:
                raise ValueError(f"Dataset index {index} was produced by more than one process (again by rank {rank}).")
            merged[index] = value
    return dict(sorted(merged.items()))


def gather_by_index(results: Mapping[int, Any], *, all_processes: bool = False) -> dict[int, Any]:
    """Gather `{dataset index: result}` dicts (any picklable values) from all processes.

    Returns the merged dict in dataset order on the main process and `{}` elsewhere; with `all_processes=True`
    every process gets it (an all-gather). The objects travel pickled over a gloo group, through host memory.
    Raises ValueError when two processes report the same index. Must be called by every process.
    """
    state = get_state()
    local = dict(results)
    if state.num_processes == 1:
        return _merge([local])
    if all_processes:
        parts: list[Any] = [None] * state.num_processes
        dist.all_gather_object(parts, local, group=_object_group())
        return _merge(parts)
    received: list[Any] | None = [None] * state.num_processes if state.is_main_process else None
    dist.gather_object(local, received, dst=0, group=_object_group())
    return _merge(received) if state.is_main_process else {}


def shutdown() -> None:
    """End a multi-process run: wait for every process, then destroy the process groups. Call it on every process
    at the end of the script; without it gloo may abort at interpreter exit ("terminate called without an active
    exception"). A no-op in a single process."""
    state = get_state()
    if state.num_processes > 1:
        dist.barrier(group=_object_group())
        _object_group.cache_clear()
        state.destroy_process_group()
