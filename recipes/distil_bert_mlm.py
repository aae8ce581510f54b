"""Task-agnostic DistilBERT-style distillation on raw text with a masked-language-model teacher.

    accelerate launch recipes/distil_bert_mlm.py recipes/configs/mlm_distilbert.yaml
    python recipes/distil_bert_mlm.py --teacher_model_name_or_path TEACHER --train_file train.txt \
        --validation_file dev.txt --output_dir out --soft_weight 5 --hard_weight 2 --hidden_weight 1 \
        --hidden_loss cosine

loss = soft_weight * T^2 KL on the masked-LM logits at the masked positions
     + hard_weight * the student's MLM loss + hidden_weight * (1 - cos) between hidden states
(DistilBERT: 5 / 2 / 1, last student layer aligned with the last teacher layer; that is the map used
when --layer_map is unset). The student is the teacher cut to --student_num_layers layers (every
other layer by default), or --student_model_name_or_path. It can then be fine-tuned on any task.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer, DataCollatorForLanguageModeling, set_seed
from transformers.trainer_pt_utils import get_model_param_count

from hf_distill import DistillationArguments, DistillationTrainer
from hf_distill.layers import resolve_layer_map
from hf_distill.metrics import accuracy_and_macro_f1
from hf_distill.positions import IGNORE_INDEX
from hf_distill.recipes import data as rd
from hf_distill.recipes.arguments import DataSourceArguments
from hf_distill.recipes.evaluation import compare_on_eval
from hf_distill.recipes.models import build_student, check_student_tokenizer
from hf_distill.recipes.output import save_final_model
from hf_distill.recipes.run import start_run


@dataclass
class MLMModelArguments:
    teacher_model_name_or_path: str | None = field(default=None, metadata={"help": "Masked-LM teacher (required)."})
    student_model_name_or_path: str | None = field(default=None, metadata={"help": "Unset = cut down the teacher."})
    student_num_layers: int | None = field(default=None, metadata={"help": "Default: half the teacher's layers."})


@dataclass
class MLMDataArguments(DataSourceArguments):
    text_column: str = field(default="text", metadata={"help": "Column with the raw text ('text' for .txt files)."})
    mlm_probability: float = field(default=0.15, metadata={"help": "Fraction of tokens masked (BERT: 0.15)."})


class MaskedLMDistillationTrainer(DistillationTrainer):
    """Distils the masked-LM logits only where the collator masked a token (labels != -100)."""

    def distillation_pairs(self, inputs, student_outputs, teacher_outputs):
        masked = inputs["labels"] != IGNORE_INDEX  # (B, L)
        pairs = super().distillation_pairs(inputs, student_outputs, teacher_outputs)
        return [dataclasses.replace(p, mask=masked) for p in pairs]


def masked_accuracy(predictions, references) -> dict[str, float]:
    return {"masked_accuracy": accuracy_and_macro_f1(predictions, references)["accuracy"]}


def main(argv: list[str] | None = None) -> dict:
    run = start_run(
        __file__,
        MLMModelArguments,
        MLMDataArguments,
        DistillationArguments,
        argv,
        required={"teacher_model_name_or_path": "a masked-language model such as bert-base-uncased"},
    )
    model_args, data_args, args = run.model_args, run.data_args, run.args
    tokenizer = check_teacher(model_args, data_args)
    raw, sources = rd.load_raw_datasets(data_args)
    rd.require_columns(raw, sources, {"text_column": data_args.text_column})
    rd.require_text(raw, sources, {"text_column": data_args.text_column}, allow_some_blank=True)

    set_seed(args.seed)
    teacher, student, info, args = build_models(model_args, args)
    params = {"teacher": get_model_param_count(teacher), "student": get_model_param_count(student)}
    splits = [data_args.train_split, data_args.validation_split]
    data = tokenize_splits(raw, splits, data_args, args, tokenizer)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=data_args.mlm_probability, seed=args.seed)
    trainer = MaskedLMDistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=dataclasses.replace(args, push_to_hub=False),
        train_dataset=data[splits[0]],
        eval_dataset=data[splits[1]],
        processing_class=tokenizer,
        data_collator=collator,
    )
    with run.owning_output_dir():
        train_metrics = run.train(trainer).metrics
        save_final_model(trainer, args.output_dir)
        eval_metrics = trainer.evaluate()  # eval_loss and its soft/hard/hidden components
        set_seed(args.seed)  # same masks for teacher and student (they see the same batches anyway)
        comparison = compare_on_eval(
            trainer,
            {"teacher": trainer.teacher, "student": trainer.model_wrapped},
            data[splits[1]],
            masked_accuracy,
            parameters=params,
        )
        results = run.results(
            trainer,
            task="fill-mask",
            teacher=model_args.teacher_model_name_or_path,
            student=info,
            comparison=comparison,
            dataset=rd.dataset_summary(data_args, len(data[splits[0]]), len(data[splits[1]])),
            train_metrics=train_metrics,
            eval=eval_metrics,
        )
        results["distillation"]["mlm_probability"] = data_args.mlm_probability
        return run.finish(trainer, results)


def check_teacher(model_args: MLMModelArguments, data_args: MLMDataArguments):
    """The teacher's tokenizer, after checking that the teacher is a masked-language model whose length and
    tokenizer suit --max_length and the student."""
    teacher_path = model_args.teacher_model_name_or_path
    config = AutoConfig.from_pretrained(teacher_path)
    if not any(a.endswith("ForMaskedLM") or a.endswith("ForPreTraining") for a in (config.architectures or [])):
        raise ValueError(
            f"the teacher {teacher_path} is a {config.architectures} checkpoint, not a masked-language model."
        )
    rd.check_max_length(data_args.max_length, config, f"teacher {teacher_path}")
    tokenizer = AutoTokenizer.from_pretrained(teacher_path)
    rd.check_length_leaves_text(data_args.max_length, tokenizer)
    check_student_tokenizer(model_args.student_model_name_or_path, tokenizer, teacher_path)
    return tokenizer


def build_models(model_args: MLMModelArguments, args: DistillationArguments):
    """(teacher, student, student info, args): args gains the DistilBERT layer map (last hidden states only) when
    none was given."""
    teacher = AutoModelForMaskedLM.from_pretrained(model_args.teacher_model_name_or_path)
    student, info = build_student(
        AutoModelForMaskedLM, teacher, model_args.student_model_name_or_path, model_args.student_num_layers
    )
    if args.layer_map is None:  # DistilBERT: align the last hidden states only
        args = dataclasses.replace(args, layer_map=f"{info.student_num_layers}:{info.teacher_num_layers}")
    if args.hidden_weight > 0:
        info.layer_map = resolve_layer_map(args.layer_map, info.student_num_layers, info.teacher_num_layers)
    return teacher, student, info, args


def tokenize_splits(raw, splits: list[str], data_args: MLMDataArguments, args: DistillationArguments, tokenizer):
    """The named splits of `raw` tokenized (blank lines dropped), keeping the special-tokens mask for the collator."""

    def encode(batch):
        texts = [t for t in batch[data_args.text_column] if t and t.strip()]  # blank lines separate paragraphs
        return rd.encode_texts(tokenizer, texts, None, data_args.max_length, return_special_tokens_mask=True)

    with args.main_process_first(desc="tokenizing"):
        return {
            s: raw[s].map(encode, batched=True, remove_columns=raw[s].column_names, desc=f"tokenizing {s}")
            for s in splits
        }


if __name__ == "__main__":
    main()
