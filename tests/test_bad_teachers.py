"""Teachers that cannot teach: another tokenizer behind a model object, or a freshly initialised (random) head."""

from __future__ import annotations

import csv

import pytest
import transformers as tf
from testing_utils import VOCAB, WORDS, classification_data, distillation_args, make_tokenizer, tiny_bert

from hf_distill import DistillationTrainer
from hf_distill.recipes.cache_cli import main as cache_main


def args(tmp_path):
    return distillation_args(tmp_path / "out", max_steps=1)


def saved_teacher(folder, words, vocab):
    """A classifier teacher saved with its own tokenizer, loaded back as a model object (as users do)."""
    tiny_bert(layers=2, vocab=vocab).save_pretrained(folder)
    make_tokenizer(folder, words=words)
    return tf.AutoModelForSequenceClassification.from_pretrained(folder)


@pytest.mark.parametrize(
    "teacher_words",
    [
        WORDS
        + [f"x{i}" for i in range(VOCAB, 150)],  # 101- vs 150-token vocabularies (used to pass as "padding rows")
        [WORDS[0]] + WORDS[:0:-1],  # as many tokens, other ids: used to pass with no message
    ],
)
def test_model_object_teacher_with_another_tokenizer_is_refused(tmp_path, tokenizer, teacher_words):
    teacher = saved_teacher(tmp_path / "teacher", teacher_words, vocab=len(teacher_words))
    student = tiny_bert(layers=1, seed=1)
    with pytest.raises(ValueError, match="different vocabularies"):
        DistillationTrainer(
            student, teacher, args(tmp_path), processing_class=tokenizer, train_dataset=classification_data(8)
        )


def test_model_object_teacher_with_the_same_tokenizer_is_accepted(tmp_path, tokenizer):
    teacher = saved_teacher(tmp_path / "teacher", WORDS, vocab=VOCAB)
    trainer = DistillationTrainer(
        tiny_bert(layers=1, seed=1),
        teacher,
        args(tmp_path),
        processing_class=tokenizer,
        train_dataset=classification_data(8),
    )
    assert trainer.teacher is teacher


@pytest.fixture
def base_model_folder(tmp_path):
    """A base model (no task head) with its tokenizer: loading it as a classifier gives a random head."""
    folder = tmp_path / "base"
    tiny_bert(layers=2, cls=tf.BertModel).save_pretrained(folder)
    make_tokenizer(folder)
    return folder


def test_teacher_path_without_the_task_head_is_refused(tmp_path, base_model_folder):
    message = r"no weights for 2 tensors .*classifier\.bias, classifier\.weight.*BertModel"
    with pytest.raises(ValueError, match=message):
        DistillationTrainer(
            tiny_bert(layers=1, seed=1), str(base_model_folder), args(tmp_path), train_dataset=classification_data(8)
        )


def test_cache_cli_with_a_task_the_checkpoint_lacks_is_refused(tmp_path, base_model_folder):
    data = tmp_path / "train.csv"
    with open(data, "w", newline="") as f:
        csv.writer(f).writerows([["text"], ["w1 w2 w3"], ["w4 w5"]])
    with pytest.raises(ValueError, match="freshly initialised"):
        cache_main(
            [
                "--teacher_model_name_or_path",
                str(base_model_folder),
                "--data_file",
                str(data),
                "--output_dir",
                str(tmp_path / "cached"),
                "--task",
                "sequence-classification",
                "--device",
                "cpu",
                "--max_length",
                "32",
            ]
        )
    assert not (tmp_path / "cached").exists()
