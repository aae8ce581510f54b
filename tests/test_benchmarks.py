"""The benchmark scripts run (tiny mode) and print their ratios; no timing is asserted here."""

import os
import re
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


@pytest.mark.parametrize("script, expected", [
    ("step_overhead.py", ["step overhead", "cached step", "peak memory"]),
    ("inference_speedup.py", ["inference speed-up"]),
    ("scaling.py", ["ratio"]),
    ("topk_error.py", ["rel. error"]),
])
def test_benchmark_runs_in_tiny_mode(script, expected):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, script, "--tiny"], cwd=BENCH, env=env, capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    for text in expected:
        assert text in out.stdout
    assert re.search(r"\d+\.\d{3}", out.stdout)  # ratios are printed as numbers
