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
import logging
from dataclasses import dataclass, field

from transformers import (
    AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, set_seed,
)

from hf_distill import DistillationArguments, DistillationTrainer
from hf_distill.layers import count_layers, resolve_layer_map
from hf_distill.metrics import accuracy_and_macro_f1, compute_classification_metrics
import recipe_utils as ru

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    teacher_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Fine-tuned sequence classifier: Hub id or local folder (required)."}
    )
    student_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Student to train; unset = initialise it from the teacher."}
    )
    student_num_layers: int | None = field(
        default=None, metadata={"help": "Layers of a student initialised from the teacher (default: half the teacher's)."}
    )
    student_layers: str | None = field(
        default=None,
        metadata={"help": "0-based teacher layers to copy into the student, e.g. '1,3,5'; default follows the uniform map."},
    )


def _is_sequence_classifier(config) -> bool:
    return any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, out_args, args = ru.parse_args(
        (ModelArguments, ru.ClassificationDataArguments, ru.OutputArguments, DistillationArguments), argv
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        level=logging.INFO if args.should_log else logging.WARNING)

    # Everything that can be wrong is checked before a model is trained.
    if not model_args.teacher_model_name_or_path:
        raise ValueError("--teacher_model_name_or_path is required: a fine-tuned sequence classifier (recipes/train_teacher.py makes one).")
    teacher_path = model_args.teacher_model_name_or_path
    resume = ru.resolve_resume(args, out_args)
    token = ru.check_push(args)
    teacher_config = AutoConfig.from_pretrained(teacher_path)
    if not _is_sequence_classifier(teacher_config):
        raise ValueError(
            f"the teacher {teacher_path} is a {teacher_config.architectures or teacher_config.model_type} checkpoint, "
            "not a sequence classifier fine-tuned for the task: its head would be random. Fine-tune one first with "
            "recipes/train_teacher.py and pass that folder."
        )
    tokenizer = AutoTokenizer.from_pretrained(teacher_path)
    ru.check_student_tokenizer(model_args.student_model_name_or_path, tokenizer, teacher_path)

    splits = [data_args.train_split, data_args.validation_split]
    raw = ru.load_raw_datasets(data_args)
    ru.require_columns(raw, splits, {"text_column": data_args.text_column, "text_column_2": data_args.text_column_2,
                                     "label_column": data_args.label_column})
    mapping = ru.label_mapping(raw, splits, data_args.label_column, teacher_config.id2label)

    set_seed(args.seed)
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_path)
    n_teacher = count_layers(teacher)
    student, init_layers = ru.build_student(AutoModelForSequenceClassification, teacher,
                                            model_args.student_model_name_or_path, model_args.student_num_layers,
                                            model_args.student_layers)
    n_student = count_layers(student)
    layer_map = resolve_layer_map(args.layer_map, n_student, n_teacher) if args.hidden_weight > 0 else None
    params = {"teacher": ru.count_parameters(teacher), "student": ru.count_parameters(student)}

    data = ru.tokenize_classification(raw, splits, tokenizer, data_args, mapping, args)
    # The recipe pushes the final folder itself (below); the Trainer must not create repos or push checkpoints.
    trainer_args = dataclasses.replace(args, push_to_hub=False)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=trainer_args,
        train_dataset=data[data_args.train_split], eval_dataset=data[data_args.validation_split],
        processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_classification_metrics,
    )
    train_metrics = trainer.train(resume_from_checkpoint=resume).metrics
    trainer.save_model(args.output_dir)  # student weights + tokenizer (the teacher is never saved)

    metrics, speed = ru.compare_on_eval(
        trainer, {"teacher": trainer.teacher, "student": trainer.model_wrapped},
        data[data_args.validation_split], accuracy_and_macro_f1,
    )
    results = ru.run_results(
        task="text-classification", script=__file__, argv=argv, trainer=trainer, args=args, data_args=data_args,
        teacher_path=teacher_path, n_train=len(data[splits[0]]), n_eval=len(data[splits[1]]), layer_map=layer_map,
        n_teacher=n_teacher, n_student=n_student, init_layers=init_layers,
        student_model=model_args.student_model_name_or_path, params=params, metrics=metrics, speed=speed,
        train_metrics=train_metrics, labels=[teacher.config.id2label[i] for i in range(teacher.config.num_labels)],
        example_text=str(raw[data_args.validation_split][0][data_args.text_column])[:200],
    )
    return ru.finish_run(trainer, args, results, token)


if __name__ == "__main__":
    main()
