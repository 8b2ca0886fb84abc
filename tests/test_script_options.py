"""The scripts parse their command line before importing torch, transformers or hf_expedite: `--help` and a bad option
answer at once (a fresh interpreter per case, so the imports are really the script's)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hf_expedite.conversion import SETTING_NAMES
from hf_expedite_cli.options import SETTING_FLAGS

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
PROBE = """
import runpy, sys
sys.argv = [sys.argv[1], *sys.argv[2:]]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as exit:
    code = exit.code
else:
    code = 0
heavy = sorted(name for name in ("torch", "transformers", "hf_expedite") if name in sys.modules)
print("EXIT", code, "HEAVY", ",".join(heavy) or "-", file=sys.stderr)
"""

BAD_OPTIONS = {
    "benchmark": ["--repeats", "0"],
    "evaluate_depth": ["model", "--max-samples", "0"],
    "evaluate_semantic_segmentation": ["model", "--protocol", "fastest"],
    "evaluate_panoptic": ["model", "--short-side", "-1"],
    "fidelity_report": ["model", "--dtype", "float8"],
    "fidelity_per_flop": ["model"],  # no development set
    "push_to_hub": ["model"],  # neither a repo_id nor --output-dir
}


def _probe(script: str, *arguments: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", PROBE, str(SCRIPTS / f"{script}.py"), *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("script", sorted(BAD_OPTIONS))
def test_help_and_bad_options_need_no_heavy_import(script):
    shown = _probe(script, "--help")
    assert "EXIT 0 HEAVY -" in shown.stderr, shown.stderr
    assert shown.stdout.startswith("usage:") and "--help" in shown.stdout

    refused = _probe(script, *BAD_OPTIONS[script])
    assert "EXIT 2 HEAVY -" in refused.stderr, refused.stderr
    assert f"{script}.py: error:" in refused.stderr


def test_a_benchmark_without_public_data_is_refused_before_any_heavy_import():
    refused = _probe("evaluate_depth", "model", "--benchmark", "kitti")
    assert "error: Benchmark 'kitti' has no public dataset on the hub: pass --dataset" in refused.stderr
    assert "EXIT 2 HEAVY -" in refused.stderr, refused.stderr


def test_every_expedite_setting_has_a_script_flag():
    assert SETTING_FLAGS == tuple(name for name in SETTING_NAMES if name != "expedite")
