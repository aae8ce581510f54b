"""Task-specific distillation of a fine-tuned BERT-style sequence classifier into a shallower student.

    accelerate launch recipes/distil_bert.py recipes/configs/sst2_bert_base.yaml            # 12 -> 6 on SST-2
    accelerate launch recipes/distil_bert.py CONFIG.yaml --temperature 4 --output_dir out  # flags override
    accelerate launch --config_file recipes/configs/accelerate_ddp.yaml recipes/distil_bert.py CONFIG.yaml
    python recipes/distil_bert.py --teacher_model_name_or_path TEACHER --train_file train.csv \
        --validation_file dev.csv --text_column text --label_column label --output_dir out

The student is `--student_model_name_or_path`, or the teacher cut to `--student_num_layers` layers
(copied from the teacher layers the uniform map aligns them with). At the end teacher and student are
evaluated on the same validation batches (accuracy, macro-F1, examples/s); the output folder holds
the student, its tokenizer, a model card (README.md) and distillation_results.json, and
`--push_to_hub --hub_model_id you/name` uploads exactly that folder.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    set_seed,
)
from transformers.trainer_pt_utils import get_model_param_count

from hf_distill import DistillationArguments, DistillationTrainer
from hf_distill.layers import resolve_layer_map
from hf_distill.metrics import accuracy_and_macro_f1, compute_classification_metrics
from hf_distill.recipes import data as rd
from hf_distill.recipes.arguments import ClassificationDataArguments
from hf_distill.recipes.evaluation import compare_on_eval
from hf_distill.recipes.models import build_student, check_student_tokenizer
from hf_distill.recipes.output import save_final_model
from hf_distill.recipes.run import start_run


@dataclass
class ModelArguments:
    teacher_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Fine-tuned sequence classifier: Hub id or local folder (required)."}
    )
    student_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Student to train; unset = initialise it from the teacher."}
    )
    student_num_layers: int | None = field(
        default=None, metadata={"help": "Layers of a student cut from the teacher (default: half the teacher's)."}
    )
    student_layers: str | None = field(
        default=None,
        metadata={"help": "0-based teacher layers to copy into the student, e.g. '1,3,5'; default: the uniform map."},
    )


def _is_sequence_classifier(config) -> bool:
    return any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))


def main(argv: list[str] | None = None) -> dict:
    required = {"teacher_model_name_or_path": "a fine-tuned sequence classifier (recipes/train_teacher.py makes one)"}
    run = start_run(__file__, ModelArguments, ClassificationDataArguments, DistillationArguments, argv, required)
    model_args, data_args, args = run.model_args, run.data_args, run.args

    # Everything that can be wrong is checked before a model is trained.
    teacher_path = model_args.teacher_model_name_or_path
    teacher_config = AutoConfig.from_pretrained(teacher_path)
    if not _is_sequence_classifier(teacher_config):
        raise ValueError(
            f"the teacher {teacher_path} is a {teacher_config.architectures or teacher_config.model_type} checkpoint, "
            "not a sequence classifier fine-tuned for the task: its head would be random. Fine-tune one first with "
            "recipes/train_teacher.py and pass that folder."
        )
    rd.check_max_length(data_args.max_length, teacher_config, f"teacher {teacher_path}")
    tokenizer = AutoTokenizer.from_pretrained(teacher_path)
    check_student_tokenizer(model_args.student_model_name_or_path, tokenizer, teacher_path)
    if model_args.student_model_name_or_path:
        rd.check_max_length(data_args.max_length, AutoConfig.from_pretrained(model_args.student_model_name_or_path),
                            f"student {model_args.student_model_name_or_path}")

    splits = [data_args.train_split, data_args.validation_split]
    raw, sources = rd.load_raw_datasets(data_args)
    columns = {"text_column": data_args.text_column, "text_column_2": data_args.text_column_2,
               "label_column": data_args.label_column}
    rd.require_columns(raw, sources, columns)
    rd.require_values(raw, sources, columns)
    mapping = rd.label_mapping(raw, splits, data_args.label_column, teacher_config.id2label)

    set_seed(args.seed)
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_path)
    student, info = build_student(AutoModelForSequenceClassification, teacher, model_args.student_model_name_or_path,
                                  model_args.student_num_layers, model_args.student_layers)
    if args.hidden_weight > 0:
        info.layer_map = resolve_layer_map(args.layer_map, info.student_num_layers, info.teacher_num_layers)
    params = {"teacher": get_model_param_count(teacher), "student": get_model_param_count(student)}

    data = rd.tokenize_classification(raw, splits, tokenizer, data_args, mapping, args)
    # The recipe pushes the final folder itself (Run.finish); the Trainer must not create repos or push checkpoints.
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=dataclasses.replace(args, push_to_hub=False),
        train_dataset=data[splits[0]], eval_dataset=data[splits[1]],
        processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_classification_metrics,
    )
    with run.owning_output_dir():
        train_metrics = trainer.train(resume_from_checkpoint=run.resume).metrics
        save_final_model(trainer, args.output_dir)  # student weights + tokenizer (the teacher is never saved)
        comparison = compare_on_eval(trainer, {"teacher": trainer.teacher, "student": trainer.model_wrapped},
                                     data[splits[1]], accuracy_and_macro_f1, parameters=params)
        results = run.results(
            trainer, task="text-classification", teacher=teacher_path, student=info, comparison=comparison,
            dataset=rd.dataset_summary(data_args, len(data[splits[0]]), len(data[splits[1]])),
            train_metrics=train_metrics,
            labels=[teacher.config.id2label[i] for i in range(teacher.config.num_labels)],
            example_text=str(raw[splits[1]][0][data_args.text_column])[:200],
        )
        return run.finish(trainer, results)


if __name__ == "__main__":
    main()
