"""Pick distillation settings on the validation split: a small grid over any recipe flags.

    python recipes/sweep.py --grid temperature=1,2,4 --grid num_train_epochs=3,10 --sweep_dir sweeps/sst2 \
        -- recipes/configs/sst2_bert_base.yaml --compare_with_hard_baseline

Every combination of the grid runs `recipes/distil_bert.py` (or `--recipe distil_bert_mlm`) with the flags after
`--` plus the combination, into `<sweep_dir>/run-<i>`; the best run is the one with the highest student
`--metric` on the recipe's validation split (the split the recipe evaluates on, never a test split). The table
of every run and the winning flags go to `<sweep_dir>/sweep_results.json`. Ties go to the earlier combination,
so list the cheaper values first.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

logger = logging.getLogger(__name__)


def parse_grid(specs: list[str]) -> dict[str, list[str]]:
    """['temperature=1,2', 'augment=0,4'] -> {'temperature': ['1', '2'], 'augment': ['0', '4']}."""
    grid = {}
    for spec in specs:
        name, sep, values = spec.partition("=")
        name = name.strip().lstrip("-")
        options = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not name or not options:
            raise ValueError(f"--grid {spec!r} is not NAME=V1,V2,...: e.g. --grid temperature=1,2,4.")
        if name in grid:
            raise ValueError(f"--grid names {name!r} twice; give all its values in one --grid.")
        if name in ("output_dir", "overwrite_output_dir"):
            raise ValueError(f"--grid cannot vary {name}: the sweep gives every run its own folder.")
        grid[name] = options
    if not grid:
        raise ValueError("give at least one --grid NAME=V1,V2,... to sweep over.")
    return grid


def combinations(grid: dict[str, list[str]]) -> list[dict[str, str]]:
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def sweep(
    recipe_main, base_argv: list[str], grid: dict[str, list[str]], sweep_dir: str, metric: str = "accuracy"
) -> dict:
    """Run `recipe_main(argv)` for every combination; return {"runs": [...], "best": {...}} (also written to disk)."""
    runs = []
    for i, combo in enumerate(combinations(grid)):
        flags = [x for name, value in combo.items() for x in (f"--{name}", value)]
        out = os.path.join(sweep_dir, f"run-{i}")
        results = recipe_main([*base_argv, *flags, "--output_dir", out, "--overwrite_output_dir"])
        if metric not in results["student"]:
            raise ValueError(f"--metric {metric!r} is not among the student's metrics {sorted(results['student'])}.")
        runs.append(
            {
                "flags": combo,
                "output_dir": out,
                "validation": {metric: results["student"][metric]},
                "hard_baseline": results.get("hard_baseline", {}).get(metric),
            }
        )
        logger.info("sweep run %d %s: validation %s %.4f", i, combo, metric, results["student"][metric])
    best = max(range(len(runs)), key=lambda i: (runs[i]["validation"][metric], -i))
    payload = {"metric": metric, "split": "validation", "base_argv": base_argv, "runs": runs, "best": runs[best]}
    os.makedirs(sweep_dir, exist_ok=True)
    with open(os.path.join(sweep_dir, "sweep_results.json"), "w") as f:
        json.dump(payload, f, indent=2)
    return payload


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    recipe_argv = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", action="append", default=[], help="NAME=V1,V2,... (repeatable).")
    parser.add_argument("--sweep_dir", required=True, help="Folder of the runs and sweep_results.json.")
    parser.add_argument("--metric", default="accuracy", help="Student validation metric to maximise.")
    parser.add_argument("--recipe", default="distil_bert", choices=["distil_bert", "distil_bert_mlm"])
    ns = parser.parse_args(own)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    grid = parse_grid(ns.grid)
    recipe = importlib.import_module(ns.recipe)
    payload = sweep(recipe.main, recipe_argv, grid, ns.sweep_dir, ns.metric)
    best = payload["best"]
    print(
        f"best on validation ({ns.metric} {best['validation'][ns.metric]:.4f}): "
        + " ".join(f"--{k} {v}" for k, v in best["flags"].items()),
        flush=True,
    )
    return payload


if __name__ == "__main__":
    main()
