"""CI: hf_distill installed NON-editable (`pip install .`) runs a recipe end to end and renders the model card.

    python .ci/check_installed.py REPO_ROOT      # with the python of a venv where `pip install REPO_ROOT` ran

It checks that `hf_distill` (and its card templates) come from site-packages, not from the checkout, builds a tiny
random BERT teacher and a CSV data set in a temporary folder, runs `accelerate launch recipes/distil_bert.py`
from the checkout, and reads the card and the results it wrote.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import transformers as tf

import hf_distill
from hf_distill.model_card import TASK_TEMPLATES, TEMPLATE_NAME, template_file

LABELS = ("negative", "neutral", "positive")
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(96)]


def write_csv(path: Path, n: int, seed: int) -> str:
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for _ in range(n):
            ids = [rng.randrange(96) for _ in range(8)]
            writer.writerow([" ".join(f"w{i}" for i in ids), LABELS[sum(i % 2 == 0 for i in ids) % 3]])
    return str(path)


def main(repo: Path) -> None:
    package = Path(hf_distill.__file__).resolve().parent
    assert repo.resolve() not in package.parents, f"hf_distill imported from the checkout ({package}), not installed"
    assert "site-packages" in package.parts, package
    for name in (TEMPLATE_NAME, *TASK_TEMPLATES.values()):
        with template_file(name=name) as template:
            assert package in Path(template).resolve().parents, f"card template not in the package: {template}"
    print(f"hf_distill {hf_distill.__version__} from {package}")

    work = Path(tempfile.mkdtemp(prefix="hf_distill_installed_"))
    try:
        teacher = work / "teacher"
        config = tf.BertConfig(
            vocab_size=len(WORDS),
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
            num_labels=3,
            id2label=dict(enumerate(LABELS)),
            label2id={n: i for i, n in enumerate(LABELS)},
        )
        tf.BertForSequenceClassification(config).save_pretrained(teacher)
        tf.BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)}).save_pretrained(teacher)
        out = work / "student"
        command = [
            shutil.which("accelerate") or "accelerate",
            "launch",
            "--config_file",
            str(repo / "recipes/configs/accelerate_cpu.yaml"),
            str(repo / "recipes/distil_bert.py"),
            "--teacher_model_name_or_path",
            str(teacher),
            "--student_num_layers",
            "2",
            "--hidden_weight",
            "1",
            "--train_file",
            write_csv(work / "train.csv", 32, 0),
            "--validation_file",
            write_csv(work / "dev.csv", 12, 1),
            "--max_length",
            "32",
            "--output_dir",
            str(out),
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "8",
            "--report_to",
            "none",
            "--save_strategy",
            "no",
            "--disable_tqdm",
            "true",
        ]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": ""}
        subprocess.run(command, cwd=work, env=env, check=True)
        results = json.loads((out / "distillation_results.json").read_text())
        card = (out / "README.md").read_text()
        assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(os.listdir(out))
        assert f"| accuracy | {results['teacher']['accuracy']:.4f} | {results['student']['accuracy']:.4f} |" in card
        assert "{{" not in card and "recipes/distil_bert.py" in card
        assert results["hf_distill_version"] == hf_distill.__version__
        again = hf_distill.render_model_card(out, model_id=results["model_id"])
        assert again == card, "the API renders the same card from the run folder"
        # a causal-LM run's results get the packaged text-generation template
        lm = {
            **results,
            "task": "text-generation",
            "teacher": {"cross_entropy": 2.0, "parameters": 10, "examples_per_second": 1.0},
            "student": {"cross_entropy": 2.5, "parameters": 5, "examples_per_second": 2.0},
        }
        lm_card = hf_distill.render_model_card(lm)
        assert "agarwal2024gkd" in lm_card and "| cross-entropy (nats/token) | 2.0000 | 2.5000 |" in lm_card
        print(f"OK: recipe ran from the installed package; card {out / 'README.md'} ({len(card)} chars)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
