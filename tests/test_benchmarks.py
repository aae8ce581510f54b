"""The benchmark scripts in tiny mode: the ratios they print follow from the times they print, and the top-k
table behaves as the method says (more kept mass, smaller error). No timing is asserted here."""

from __future__ import annotations

import os
import re
import subprocess
import sys

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
NUMBER = r"(-?\d+(?:\.\d+)?)"


def run_tiny(script: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, script, "--tiny"], cwd=BENCH, env=env, capture_output=True, text=True,
                         timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def value(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in:\n{text}"
    return float(match.group(1))


def close(printed: float, computed: float, decimals: int) -> bool:
    """`printed` is `computed` from rounded inputs, itself rounded to `decimals`: allow 1% plus the rounding."""
    return abs(printed - computed) <= 0.01 * abs(computed) + 10 ** -decimals


def test_step_overhead_ratios_follow_from_its_times():
    out = run_tiny("step_overhead.py")
    ms = {name: value(rf"{name}\s+{NUMBER} ms", out)
          for name in ("student_step", "teacher_forward", "distill_step", "distill_hidden_step", "cached_step")}
    base = ms["student_step"] + ms["teacher_forward"]
    assert close(value(rf"distill / \(student step \+ teacher fwd\)\s+= {NUMBER}", out), ms["distill_step"] / base, 3)
    assert close(value(rf"with hidden alignment \(6 layer pairs\)\s+= {NUMBER}", out),
                 ms["distill_hidden_step"] / base, 3)
    assert close(value(rf"cached distill / student step\s+= {NUMBER}", out), ms["cached_step"] / ms["student_step"], 3)
    assert re.search(r"peak memory\s+student step \d+ MiB, teacher fwd \d+ MiB, distill step \d+ MiB", out)


def test_inference_speedup_is_the_ratio_of_the_printed_throughputs():
    out = run_tiny("inference_speedup.py")
    batch = value(r"batch (\d+)", out)
    t_ms, t_eps = value(rf"teacher \(12 layers\)\s+{NUMBER} ms", out), value(rf"ms\s+{NUMBER} examples/s", out)
    s_ms = value(rf"student \(6 layers\)\s+{NUMBER} ms", out)
    s_eps = value(rf"student \(6 layers\)\s+[\d.]+ ms\s+{NUMBER} examples/s", out)
    assert close(t_eps, batch / t_ms * 1000, 1) and close(s_eps, batch / s_ms * 1000, 1)
    assert close(value(rf"teacher / student = {NUMBER}", out), s_eps / t_eps, 3)


def test_scaling_rows_are_consistent():
    out = run_tiny("scaling.py")
    rows = re.findall(rf"^\s+(\d+)\s+(\d+)\s+(\d+)\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}$", out, flags=re.M)
    assert len(rows) == 3
    for batch, seq, tokens_per_s, distill_ms, base_ms, ratio in rows:
        assert close(float(tokens_per_s), int(batch) * int(seq) / float(distill_ms) * 1000, 0)
        assert close(float(ratio), float(distill_ms) / float(base_ms), 3)


def test_topk_error_shrinks_as_more_teacher_mass_is_kept():
    out = run_tiny("topk_error.py")
    row = rf"^\s+{NUMBER}\s+{NUMBER}\s+(\d+)\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}%\s+{NUMBER}\s+{NUMBER}%$"
    rows = re.findall(row, out, flags=re.M)
    assert len(rows) == 12
    table = {}
    for a, t, k, full, topk, rel, cos, mass in rows:
        full, topk = float(full), float(topk)
        assert close(float(rel), 100 * (topk - full) / full, 1)  # rel. error = (top-k - full) / full
        table.setdefault((a, t), []).append((int(k), abs(float(rel)), float(cos), float(mass)))
    for (a, t), by_k in table.items():
        by_k.sort()
        errors, cosines, masses = ([r[i] for r in by_k] for i in (1, 2, 3))
        assert errors == sorted(errors, reverse=True), (a, t)  # larger k, smaller error
        assert masses == sorted(masses) and cosines == sorted(cosines), (a, t)



def test_packing_ratio_follows_from_its_times_and_losses_match():
    out = run_tiny("packing.py")
    tokens = value(r"per repeat: (\d+) distilled tokens", out)
    cells = r" \| ".join([NUMBER] * 5)
    rows = re.findall(rf"^\| ([a-z() 0-9]+) \| {cells} \|", out, flags=re.M)
    assert [r[0] for r in rows] == ["full logits", "chunked (1024 rows)"]
    for _, *numbers in rows:
        padded_s, packed_s, padded_tps, packed_tps, ratio = map(float, numbers)
        assert close(padded_tps, tokens / padded_s, 1) and close(packed_tps, tokens / packed_s, 1)
        assert close(ratio, padded_s / packed_s, 3)
    assert out.count("same loss to 1e-5: yes") == 2
