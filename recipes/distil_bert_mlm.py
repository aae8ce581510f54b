"""Task-agnostic DistilBERT-style distillation on raw text with a masked-language-model teacher.

    accelerate launch recipes/distil_bert_mlm.py recipes/configs/mlm_distilbert.yaml
    python recipes/distil_bert_mlm.py --teacher_model_name_or_path TEACHER --train_file train.txt \
        --validation_file dev.txt --output_dir out --soft_weight 5 --hard_weight 2 --hidden_weight 1 --hidden_loss cosine

loss = soft_weight * T^2 KL on the masked-LM logits at the masked positions
     + hard_weight * the student's MLM loss + hidden_weight * (1 - cos) between hidden states
(DistilBERT: 5 / 2 / 1, last student layer aligned with the last teacher layer; that is the map used
when --layer_map is unset). The student is the teacher cut to --student_num_layers layers (every
other layer by default), or --student_model_name_or_path. It can then be fine-tuned on any task.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer, DataCollatorForLanguageModeling, set_seed

from hf_distill import DistillationArguments, DistillationTrainer
from hf_distill.layers import count_layers, resolve_layer_map
from hf_distill.metrics import accuracy_and_macro_f1
import recipe_utils as ru

logger = logging.getLogger(__name__)


@dataclass
class MLMModelArguments:
    teacher_model_name_or_path: str | None = field(default=None, metadata={"help": "Masked-LM teacher (required)."})
    student_model_name_or_path: str | None = field(default=None, metadata={"help": "Unset = cut down the teacher."})
    student_num_layers: int | None = field(default=None, metadata={"help": "Default: half the teacher's layers."})


@dataclass
class MLMDataArguments(ru.DataSourceArguments):
    text_column: str = field(default="text", metadata={"help": "Column with the raw text ('text' for .txt files)."})
    mlm_probability: float = field(default=0.15, metadata={"help": "Fraction of tokens masked (BERT: 0.15)."})


class MaskedLMDistillationTrainer(DistillationTrainer):
    """Distils the masked-LM logits only where the collator masked a token (labels != -100)."""

    def distillation_pairs(self, inputs, student_outputs, teacher_outputs):
        masked = inputs["labels"] != -100  # (B, L)
        return [dataclasses.replace(p, mask=masked) for p in super().distillation_pairs(inputs, student_outputs, teacher_outputs)]


def masked_accuracy(predictions, references) -> dict[str, float]:
    return {"masked_accuracy": accuracy_and_macro_f1(predictions, references)["accuracy"]}


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, out_args, args = ru.parse_args(
        (MLMModelArguments, MLMDataArguments, ru.OutputArguments, DistillationArguments), argv
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        level=logging.INFO if args.should_log else logging.WARNING)
    if not model_args.teacher_model_name_or_path:
        raise ValueError("--teacher_model_name_or_path is required: a masked-language model such as bert-base-uncased.")
    teacher_path = model_args.teacher_model_name_or_path
    resume = ru.resolve_resume(args, out_args)
    token = ru.check_push(args)
    config = AutoConfig.from_pretrained(teacher_path)
    if not any(a.endswith("ForMaskedLM") or a.endswith("ForPreTraining") for a in (config.architectures or [])):
        raise ValueError(f"the teacher {teacher_path} is a {config.architectures} checkpoint, not a masked-language model.")
    tokenizer = AutoTokenizer.from_pretrained(teacher_path)
    ru.check_student_tokenizer(model_args.student_model_name_or_path, tokenizer, teacher_path)

    splits = [data_args.train_split, data_args.validation_split]
    raw = ru.load_raw_datasets(data_args)
    ru.require_columns(raw, splits, {"text_column": data_args.text_column})

    set_seed(args.seed)
    teacher = AutoModelForMaskedLM.from_pretrained(teacher_path)
    n_teacher = count_layers(teacher)
    student, init_layers = ru.build_student(AutoModelForMaskedLM, teacher, model_args.student_model_name_or_path,
                                            model_args.student_num_layers)
    n_student = count_layers(student)
    if args.layer_map is None:  # DistilBERT: align the last hidden states only
        args = dataclasses.replace(args, layer_map=f"{n_student}:{n_teacher}")
    layer_map = resolve_layer_map(args.layer_map, n_student, n_teacher) if args.hidden_weight > 0 else None
    params = {"teacher": ru.count_parameters(teacher), "student": ru.count_parameters(student)}

    def encode(batch):
        texts = [t for t in batch[data_args.text_column] if t and t.strip()]
        return tokenizer(texts, truncation=True, max_length=data_args.max_length, return_special_tokens_mask=True)

    with args.main_process_first(desc="tokenizing"):
        data = {s: raw[s].map(encode, batched=True, remove_columns=raw[s].column_names, desc=f"tokenizing {s}")
                for s in splits}
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=data_args.mlm_probability, seed=args.seed)
    trainer = MaskedLMDistillationTrainer(
        model=student, teacher_model=teacher, args=dataclasses.replace(args, push_to_hub=False),
        train_dataset=data[splits[0]], eval_dataset=data[splits[1]], processing_class=tokenizer, data_collator=collator,
    )
    train_metrics = trainer.train(resume_from_checkpoint=resume).metrics
    trainer.save_model(args.output_dir)
    eval_metrics = trainer.evaluate()  # eval_loss and its soft/hard/hidden components
    set_seed(args.seed)  # same masks for teacher and student (they see the same batches anyway)
    metrics, speed = ru.compare_on_eval(
        trainer, {"teacher": trainer.teacher, "student": trainer.model_wrapped}, data[splits[1]], masked_accuracy
    )
    results = ru.run_results(
        task="fill-mask", script=__file__, argv=argv, trainer=trainer, args=args, data_args=data_args,
        teacher_path=teacher_path, n_train=len(data[splits[0]]), n_eval=len(data[splits[1]]), layer_map=layer_map,
        n_teacher=n_teacher, n_student=n_student, init_layers=init_layers,
        student_model=model_args.student_model_name_or_path, params=params, metrics=metrics, speed=speed,
        train_metrics=train_metrics, distillation_extra={"mlm_probability": data_args.mlm_probability},
        eval=eval_metrics,
    )
    return ru.finish_run(trainer, args, results, token)


if __name__ == "__main__":
    main()
