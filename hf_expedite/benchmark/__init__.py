"""Benchmarking expedited models against their vanilla parents (see ``scripts/benchmark.py``)."""

from .case import BenchmarkCase
from .measure import CaseResult, alternated_latencies, count_flops, expedite_overhead, run_case

__all__ = ["BenchmarkCase", "CaseResult", "alternated_latencies", "count_flops", "expedite_overhead", "run_case"]
