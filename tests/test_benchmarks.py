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


def value(pattern: str, text: str) -> str:
    """The printed number (as text: its number of places is its precision)."""
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in:\n{text}"
    return match.group(1)


def rounded(text: str | int) -> tuple[float, float]:
    """A printed number as the interval of the values that print that way: (low, high) = x -/+ half a unit in its
    last printed place ('2.5' -> (2.45, 2.55), '1624' -> (1623.5, 1624.5)); an int is exact (a batch size)."""
    if isinstance(text, int):
        return float(text), float(text)
    decimals = len(text.split(".")[1]) if "." in text else 0
    half = 0.5 * 10**-decimals
    return float(text) - half, float(text) + half


def consistent(printed: str, fn, *inputs: str | int) -> bool:
    """Whether `printed` can be `fn(*inputs)` where every number was rounded to the places it is printed with.

    `fn` is monotone in each input (products and ratios of positive times), so its range over the inputs' rounding
    intervals is spanned by the corners; the printed result must lie in that range widened by its own rounding. The
    tolerance comes from the printed precision alone: no machine speed, no fixed percentage.
    """
    lows_highs = [rounded(x) for x in inputs]
    corners = []
    for choice in range(2 ** len(inputs)):
        args = [bounds[(choice >> i) & 1] for i, bounds in enumerate(lows_highs)]
        try:
            corners.append(fn(*args))
        except ZeroDivisionError:  # a time printed as 0.0: any ratio is possible
            return True
    low, high = rounded(printed)
    return low <= max(corners) and high >= min(corners)


def test_step_overhead_ratios_follow_from_its_times():
    out = run_tiny("step_overhead.py")
    ms = {name: value(rf"{name}\s+{NUMBER} ms", out)
          for name in ("student_step", "teacher_forward", "distill_step", "distill_hidden_step", "cached_step")}
    base = (ms["student_step"], ms["teacher_forward"])
    assert consistent(value(rf"distill / \(student step \+ teacher fwd\)\s+= {NUMBER}", out),
                      lambda d, s, t: d / (s + t), ms["distill_step"], *base)
    assert consistent(value(rf"with hidden alignment \(6 layer pairs\)\s+= {NUMBER}", out),
                      lambda d, s, t: d / (s + t), ms["distill_hidden_step"], *base)
    assert consistent(value(rf"cached distill / student step\s+= {NUMBER}", out), lambda c, s: c / s,
                      ms["cached_step"], ms["student_step"])
    assert re.search(r"peak memory\s+student step \d+ MiB, teacher fwd \d+ MiB, distill step \d+ MiB", out)


def test_inference_speedup_is_the_ratio_of_the_printed_throughputs():
    out = run_tiny("inference_speedup.py")
    batch = int(value(r"batch (\d+)", out))
    t_ms, t_eps = value(rf"teacher \(12 layers\)\s+{NUMBER} ms", out), value(rf"ms\s+{NUMBER} examples/s", out)
    s_ms = value(rf"student \(6 layers\)\s+{NUMBER} ms", out)
    s_eps = value(rf"student \(6 layers\)\s+[\d.]+ ms\s+{NUMBER} examples/s", out)
    per_second = lambda b, ms: b / ms * 1000  # noqa: E731
    assert consistent(t_eps, per_second, batch, t_ms) and consistent(s_eps, per_second, batch, s_ms)
    speedup = value(rf"teacher / student = {NUMBER}", out)
    assert consistent(speedup, lambda s, t: s / t, s_eps, t_eps)
    assert consistent(speedup, lambda t, s: t / s, t_ms, s_ms)


def test_consistency_allows_exactly_the_rounding():
    """The 1.5% case from issue 21: 4 / 2.5 ms printed as 1624.4 examples/s is possible (2.4624 ms prints as 2.5)."""
    per_second = lambda b, ms: b / ms * 1000  # noqa: E731
    assert consistent("1624.4", per_second, 4, "2.5") and consistent("1600.0", per_second, 4, "2.5")
    assert not consistent("1700.0", per_second, 4, "2.5")  # 4 / 2.45 ms = 1632.7 at most
    assert consistent("0.500", lambda a, b: a / b, "1.0", "2.0") and not consistent("0.600", lambda a, b: a / b,
                                                                                     "1.0", "2.0")


def test_scaling_rows_are_consistent():
    out = run_tiny("scaling.py")
    rows = re.findall(rf"^\s+(\d+)\s+(\d+)\s+(\d+)\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}$", out, flags=re.M)
    assert len(rows) == 3
    for batch, seq, tokens_per_s, distill_ms, base_ms, ratio in rows:
        assert consistent(tokens_per_s, lambda b, s, ms: b * s / ms * 1000, int(batch), int(seq), distill_ms)
        assert consistent(ratio, lambda d, b: d / b, distill_ms, base_ms)


def test_topk_error_shrinks_as_more_teacher_mass_is_kept():
    out = run_tiny("topk_error.py")
    row = rf"^\s+{NUMBER}\s+{NUMBER}\s+(\d+)\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}%\s+{NUMBER}\s+{NUMBER}%$"
    rows = re.findall(row, out, flags=re.M)
    assert len(rows) == 12
    table = {}
    for a, t, k, full, topk, rel, cos, mass in rows:
        assert consistent(rel, lambda f, top: 100 * (top - f) / f, full, topk)  # rel. error (%): (top-k - full) / full
        table.setdefault((a, t), []).append((int(k), abs(float(rel)), float(cos), float(mass)))
    for (a, t), by_k in table.items():
        by_k.sort()
        errors, cosines, masses = ([r[i] for r in by_k] for i in (1, 2, 3))
        assert errors == sorted(errors, reverse=True), (a, t)  # larger k, smaller error
        assert masses == sorted(masses) and cosines == sorted(cosines), (a, t)



def test_packing_ratio_follows_from_its_times_and_losses_match():
    out = run_tiny("packing.py")
    tokens = int(value(r"per repeat: (\d+) distilled tokens", out))
    cells = r" \| ".join([NUMBER] * 5)
    rows = re.findall(rf"^\| ([a-z() 0-9]+) \| {cells} \|", out, flags=re.M)
    assert [r[0] for r in rows] == ["full logits", "chunked (1024 rows)"]
    for _, padded_s, packed_s, padded_tps, packed_tps, ratio in rows:
        assert consistent(padded_tps, lambda n, t: n / t, tokens, padded_s)
        assert consistent(packed_tps, lambda n, t: n / t, tokens, packed_s)
        assert consistent(ratio, lambda a, b: a / b, padded_s, packed_s)
    assert out.count("same loss to 1e-5: yes") == 2
