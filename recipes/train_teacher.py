"""Fine-tune a teacher for recipes/distil_bert.py when you have none: a plain `Trainer` run.

    accelerate launch recipes/train_teacher.py recipes/configs/quickstart_teacher.yaml
    python recipes/train_teacher.py --model_name_or_path bert-base-uncased --dataset_name glue \
        --dataset_config_name sst2 --text_column sentence --output_dir teachers/bert-sst2 --num_train_epochs 3

The label set (names and order) is taken from the data and stored in the config's id2label, so the
distillation recipe can check that its data uses the same labels.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from transformers import (
    AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments, set_seed,
)

from hf_distill.metrics import compute_classification_metrics
import recipe_utils as ru

logger = logging.getLogger(__name__)


@dataclass
class TeacherModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Pretrained encoder to fine-tune: Hub id or local folder (required)."}
    )


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, out_args, args = ru.parse_args(
        (TeacherModelArguments, ru.ClassificationDataArguments, ru.OutputArguments, TrainingArguments), argv
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        level=logging.INFO if args.should_log else logging.WARNING)
    if not model_args.model_name_or_path:
        raise ValueError("--model_name_or_path is required: the pretrained encoder to fine-tune.")
    resume = ru.resolve_resume(args, out_args)
    splits = [data_args.train_split, data_args.validation_split]
    raw = ru.load_raw_datasets(data_args)
    ru.require_columns(raw, splits, {"text_column": data_args.text_column, "text_column_2": data_args.text_column_2,
                                     "label_column": data_args.label_column})
    names = ru.data_label_names(raw, splits, data_args.label_column)
    id2label = {i: str(n) for i, n in enumerate(names)}

    set_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_args.model_name_or_path, num_labels=len(names), id2label=id2label,
        label2id={n: i for i, n in id2label.items()},
    )
    mapping = ru.label_mapping(raw, splits, data_args.label_column, id2label)
    data = ru.tokenize_classification(raw, splits, tokenizer, data_args, mapping, args)
    trainer = Trainer(
        model=model, args=args, train_dataset=data[splits[0]], eval_dataset=data[splits[1]],
        processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_classification_metrics,
    )
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(args.output_dir)
    metrics = trainer.evaluate()
    trainer.save_metrics("eval", metrics)
    if trainer.is_world_process_zero():
        scores = ", ".join(f"{k.removeprefix('eval_')} {v:.4f}" for k, v in metrics.items()
                           if k in ("eval_accuracy", "eval_macro_f1"))
        print(f"teacher ({len(names)} labels: {', '.join(id2label.values())}) on {len(data[splits[1]])} "
              f"validation examples: {scores}\nsaved to {os.path.abspath(args.output_dir)}", flush=True)
    return metrics


if __name__ == "__main__":
    main()
