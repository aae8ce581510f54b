"""recipes/distil_causal_lm.py with two teachers routed per row, one of them on another tokenizer (cross_tokenizer),
on tiny GPT-2s: 1 process and torchrun x2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from recipe_helpers import CPU_RUN
from xtok_setup import TEXTS, bpe_tokenizer, tiny_gpt2, wordpiece_tokenizer

from recipes import distil_causal_lm

ROOT = Path(__file__).resolve().parent.parent
GKD_CONFIG = str(ROOT / "recipes" / "configs" / "causal_lm_gkd.yaml")  # lmbda 0.5: on-policy batches re-aligned


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp("xtok_recipe"))


def make_inputs(root: Path):
    """The student, the two experts (one on a WordPiece, one on the student's BPE tokenizer) and train/dev JSONL
    files routed by the column `expert`, under `root`: (root, [train, dev])."""
    bpe, wp = bpe_tokenizer(), wordpiece_tokenizer()
    for name, tok, model in (
        ("student", bpe, tiny_gpt2(len(bpe), seed=2)),
        ("wordpiece_expert", wp, tiny_gpt2(len(wp), seed=0, hidden=24, layers=2)),
        ("bpe_expert", bpe, tiny_gpt2(len(bpe), seed=1, hidden=24, layers=2)),
    ):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    files = []
    for split, texts in (("train", TEXTS[:16]), ("dev", TEXTS[16:22])):
        path = root / f"{split}.jsonl"
        with open(path, "w") as f:
            for i, text in enumerate(texts):
                words = text.split(" ")
                f.write(
                    json.dumps(
                        {
                            "prompt": " ".join(words[:2]),
                            "completion": " " + " ".join(words[2:]),
                            "expert": ["wordpiece_expert", "bpe_expert"][i % 2],
                        }
                    )
                    + "\n"
                )
        files.append(str(path))
    return root, files


def recipe_args(root, files, out, *extra):
    return [
        GKD_CONFIG,
        "--teacher_model_name_or_path",
        f"{root / 'wordpiece_expert'},{root / 'bpe_expert'}",
        "--student_model_name_or_path",
        str(root / "student"),
        "--cross_tokenizer",
        "hybrid",
        "--teacher_id_column",
        "expert",
        "--train_file",
        files[0],
        "--validation_file",
        files[1],
        "--dataset_name",
        "",
        "--train_split",
        "train",
        "--validation_split",
        "validation",
        "--output_dir",
        str(out),
        *CPU_RUN,
        "--bf16",
        "false",
        "--max_length",
        "24",
        "--max_new_tokens",
        "5",
        "--max_steps",
        "3",
        "--gradient_accumulation_steps",
        "1",
        "--learning_rate",
        "1e-2",
        "--per_device_eval_batch_size",
        "4",
        "--num_generation_samples",
        "2",
        "--loss_chunk_size",
        "8",
        *extra,
    ]


def check_run(out: Path, processes: int):
    results = json.loads((out / "distillation_results.json").read_text())
    steps = [e for e in results["train_log"] if "loss" in e]
    assert len(steps) == 3
    assert all(e["teacher0_tokens"] + e["teacher1_tokens"] > 0 for e in steps)
    dist = results["distillation"]
    assert dist["cross_tokenizer"] == "hybrid" and dist["routing"] == "expert"
    assert "teacher 0:" in dist["tokenizers"] and "teacher 1: the student's" in dist["tokenizers"]
    card = (out / "README.md").read_text()
    assert "routed by the column `expert`" in card and "| cross-tokenizer loss | hybrid |" in card
    assert "per *teacher* token" in card
    samples = results["generation_samples"]
    assert samples and all(isinstance(s["teacher"], str) for s in samples)
    assert (out / "model.safetensors").exists()
    return results


def test_routed_cross_tokenizer_recipe_one_process(setup, tmp_path):
    root, files = setup
    results = distil_causal_lm.main(recipe_args(root, files, tmp_path / "one", "--per_device_train_batch_size", "4"))
    check_run(tmp_path / "one", 1)
    assert results["teacher"]["cross_entropy"] > 0 and results["student"]["cross_entropy"] > 0


def two_process_job(folder: Path):
    """The recipe on 2 processes x 2 rows (a job of the session's torchrun launch), on inputs of its own."""
    root, files = make_inputs(folder)
    return (
        "recipes.distil_causal_lm",
        "main",
        recipe_args(root, files, folder / "two", "--per_device_train_batch_size", "2"),
    )


@pytest.mark.torchrun_job("xtok_recipe", prepare=two_process_job)
def test_routed_cross_tokenizer_recipe_torchrun_two_processes(torchrun_jobs):
    results = check_run(torchrun_jobs["xtok_recipe"] / "two", 2)
    assert results["distillation"]["global_train_batch_size"] == 4


def test_recipe_cross_tokenizer_needs_the_student(setup, tmp_path):
    root, files = setup
    argv = recipe_args(root, files, tmp_path / "x")
    argv[argv.index("--student_model_name_or_path") + 1] = ""
    with pytest.raises(ValueError, match="student_model_name_or_path"):
        distil_causal_lm.main(argv)
    argv = recipe_args(root, files, tmp_path / "x", "--teacher_tokenizer_name_or_path", str(root / "student"))
    with pytest.raises(ValueError, match="one per teacher"):
        distil_causal_lm.main(argv)
