"""Fine-tune a teacher for recipes/distil_bert.py when you have none: a plain `Trainer` run.

    accelerate launch recipes/train_teacher.py recipes/configs/quickstart_teacher.yaml
    python recipes/train_teacher.py --model_name_or_path bert-base-uncased --dataset_name glue \
        --dataset_config_name sst2 --text_column sentence --output_dir teachers/bert-sst2 --num_train_epochs 3

The label set (names and order) is taken from the data and stored in the config's id2label, so the
distillation recipe can check that its data uses the same labels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
    set_seed,
)

from hf_distill.metrics import compute_classification_metrics
from hf_distill.recipes import data as rd
from hf_distill.recipes.arguments import ClassificationDataArguments
from hf_distill.recipes.output import save_final_model
from hf_distill.recipes.run import start_run


@dataclass
class TeacherModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Pretrained encoder to fine-tune: Hub id or local folder (required)."}
    )
    ignore_mismatched_sizes: bool = field(
        default=False,
        metadata={
            "help": "Start from a classifier fine-tuned on another label set: its head is "
            "re-initialised for this data's labels (as in transformers' run_glue.py)."
        },
    )


def check_head(config, path: str, names: list, reinit: bool) -> None:
    """A checkpoint that is already a classifier must have this data's label count, unless its head is re-made."""
    is_classifier = any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))
    if is_classifier and config.num_labels != len(names) and not reinit:
        raise ValueError(
            f"--model_name_or_path {path} is a classifier with {config.num_labels} labels "
            f"({list(config.id2label.values())}) but the data has {len(names)} ({[str(n) for n in names]}). Start "
            "from the pretrained encoder instead, or pass --ignore_mismatched_sizes true to re-initialise its head "
            "for these labels."
        )


def main(argv: list[str] | None = None) -> dict:
    run = start_run(
        __file__,
        TeacherModelArguments,
        ClassificationDataArguments,
        TrainingArguments,
        argv,
        required={"model_name_or_path": "the pretrained encoder to fine-tune"},
    )
    model_args, data_args, args = run.model_args, run.data_args, run.args
    raw, splits = rd.load_classification_data(data_args)
    names = rd.data_label_names(raw, splits, data_args.label_column)
    id2label = {i: str(n) for i, n in enumerate(names)}

    set_seed(args.seed)
    config = AutoConfig.from_pretrained(model_args.model_name_or_path)
    rd.check_max_length(data_args.max_length, config, f"model {model_args.model_name_or_path}")
    check_head(config, model_args.model_name_or_path, names, model_args.ignore_mismatched_sizes)
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    rd.check_length_leaves_text(data_args.max_length, tokenizer, pair=bool(data_args.text_column_2))
    model = AutoModelForSequenceClassification.from_pretrained(
        model_args.model_name_or_path,
        num_labels=len(names),
        id2label=id2label,
        label2id={n: i for i, n in id2label.items()},
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
    )
    mapping = rd.label_mapping(raw, splits, data_args.label_column, id2label)
    data = rd.tokenize_classification(raw, splits, tokenizer, data_args, mapping, args)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data[splits[0]],
        eval_dataset=data[splits[1]],
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_classification_metrics,
    )
    with run.owning_output_dir():
        run.train(trainer)
        save_final_model(trainer, args.output_dir)
        metrics = trainer.evaluate()
        trainer.save_metrics("eval", metrics)
    if trainer.is_world_process_zero():
        scores = ", ".join(
            f"{k.removeprefix('eval_')} {v:.4f}" for k, v in metrics.items() if k in ("eval_accuracy", "eval_macro_f1")
        )
        print(
            f"teacher ({len(names)} labels: {', '.join(id2label.values())}) on {len(data[splits[1]])} "
            f"validation examples: {scores}\nsaved to {os.path.abspath(args.output_dir)}",
            flush=True,
        )
    return metrics


if __name__ == "__main__":
    main()
