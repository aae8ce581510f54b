"""DistillationTrainer on tiny BERTs: training, checkpoints, resume, the loss formula, pitfalls."""

import glob
import os

import pytest
import torch
import torch.nn.functional as F
import transformers as tf
from distill_checks import sharpen
from safetensors import safe_open
from testing_utils import (
    VOCAB,
    WORDS,
    classification_data,
    distillation_args,
    fixed_batch,
    make_tokenizer,
    tiny_bert,
    tiny_distilbert,
)

from hf_distill import (
    DistillationObjective,
    DistillationTrainer,
    NonFiniteLossError,
    init_student_from_teacher,
)


def dargs(tmp_path, **kw):
    base = {
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 8,
        "learning_rate": 1e-3,
        "seed": 0,
        "data_seed": 0,
    }
    return distillation_args(tmp_path / "out", **{**base, **kw})


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def saved_keys(folder):
    keys = set()
    for path in glob.glob(os.path.join(folder, "*.safetensors")):
        with safe_open(path, "pt") as f:
            keys |= set(f.keys())
    return keys


def test_bert_12_to_6_trains_student_only_and_never_saves_the_teacher(tmp_path):
    teacher = tiny_bert(layers=12, hidden=64)
    student = init_student_from_teacher(teacher, num_layers=6)
    t_before, s_before = state(teacher), state(student)
    args = dargs(tmp_path, max_steps=4, hidden_weight=1.0, save_strategy="steps", save_steps=2)
    trainer = DistillationTrainer(student, teacher, args, train_dataset=classification_data(32))
    assert trainer.layer_map == {i: 2 * i for i in range(1, 7)} and trainer.projections is None
    trainer.train()
    trainer.save_model()

    changed = [k for k, v in state(student).items() if not torch.equal(v, s_before[k])]
    assert len(changed) > len(s_before) // 2
    assert all(torch.equal(v, t_before[k]) for k, v in state(teacher).items())
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in teacher.parameters()}
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert all({"soft_loss", "hard_loss", "hidden_loss"} <= set(h) for h in logged)

    student_keys = set(student.state_dict())
    folders = [args.output_dir] + sorted(glob.glob(os.path.join(args.output_dir, "checkpoint-*")))
    assert len(folders) == 3
    for folder in folders:
        keys = saved_keys(folder)
        assert keys and keys <= student_keys, folder  # only student tensors
        with safe_open(os.path.join(folder, "model.safetensors"), "pt") as f:
            n_layers = {k.split(".")[3] for k in f.keys() if k.startswith("bert.encoder.layer.")}
        assert len(n_layers) == 6
        reloaded = tf.AutoModelForSequenceClassification.from_pretrained(folder)
        assert reloaded.config.num_hidden_layers == 6


def test_projections_for_different_hidden_sizes_learn_and_stay_out_of_the_student(tmp_path):
    teacher = tiny_bert(layers=4, hidden=64)
    student = tiny_bert(layers=2, hidden=32, seed=1)
    args = dargs(tmp_path, max_steps=3, hidden_weight=1.0, save_strategy="steps", save_steps=3)
    trainer = DistillationTrainer(student, teacher, args, train_dataset=classification_data(16))
    assert trainer.student is student
    assert set(trainer.projections.keys()) == {"1", "2"}
    assert trainer.projections["1"].weight.shape == (64, 32)
    p_before = {k: v.clone() for k, v in trainer.projections.state_dict().items()}
    trainer.train()
    trainer.save_model()
    assert all(not torch.equal(v, p_before[k]) for k, v in trainer.projections.state_dict().items())
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in trainer.projections.parameters()} <= optimized  # the Trainer's own optimizer
    # The checkpoint holds student and projections (an exact resume), under the module's names.
    ckpt = os.path.join(args.output_dir, "checkpoint-3")
    with safe_open(os.path.join(ckpt, "model.safetensors"), "pt") as f:
        assert set(f.keys()) == (
            {f"student.{k}" for k in student.state_dict()}
            | {f"projections.{k}" for k in trainer.projections.state_dict()}
        )
        for k, v in trainer.projections.state_dict().items():
            torch.testing.assert_close(f.get_tensor(f"projections.{k}"), v)
    # The saved model is the student alone, reloadable as is.
    assert saved_keys(args.output_dir) == set(student.state_dict())
    reloaded = tf.AutoModelForSequenceClassification.from_pretrained(args.output_dir)
    for k, v in reloaded.state_dict().items():
        torch.testing.assert_close(v, student.state_dict()[k])


def _losses(trainer):
    return [(h["step"], h["loss"], h["soft_loss"], h["hidden_loss"]) for h in trainer.state.log_history if "loss" in h]


def test_resume_from_checkpoint_continues_exactly(tmp_path):
    """Interrupt after 3 of 6 steps, resume: the loss history equals an uninterrupted run (projections too)."""

    def run(out, stop_at=None, resume=None):
        teacher = tiny_bert(layers=4, hidden=64)
        student = tiny_bert(layers=2, hidden=32, seed=1)
        args = dargs(
            tmp_path,
            output_dir=str(tmp_path / out),
            max_steps=6,
            hidden_weight=1.0,
            save_strategy="steps",
            save_steps=3,
        )
        callbacks = []
        if stop_at:

            class Stop(tf.TrainerCallback):
                def on_step_end(self, args, state, control, **kw):
                    if state.global_step == stop_at:
                        control.should_training_stop = True

            callbacks = [Stop()]
        trainer = DistillationTrainer(
            student, teacher, args, train_dataset=classification_data(48), callbacks=callbacks
        )
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = run("full")
    first = run("split", stop_at=3)
    assert [s for s, *_ in _losses(first)] == [1, 2, 3]
    second = run("split", resume=str(tmp_path / "split" / "checkpoint-3"))
    resumed = _losses(first) + [h for h in _losses(second) if h[0] > 3]
    expected = _losses(full)
    assert [h[0] for h in resumed] == [1, 2, 3, 4, 5, 6]
    for got, want in zip(resumed, expected):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-7)


def test_compute_loss_equals_the_design_formula(tmp_path):
    torch.manual_seed(0)
    teacher = tiny_bert(layers=4, hidden=64)
    student = tiny_bert(layers=2, hidden=32, seed=1)
    T, ws, wh, wd = 3.0, 0.6, 0.3, 0.7
    args = dargs(tmp_path, temperature=T, soft_weight=ws, hard_weight=wh, hidden_weight=wd, layer_map="1:2,2:4")
    trainer = DistillationTrainer(student, teacher, args)
    trainer.model.eval()  # the student with its projections
    batch = fixed_batch(n=4, seq=10)
    got = trainer.compute_loss(trainer.model, dict(batch))

    with torch.no_grad():
        so = student(**batch, output_hidden_states=True)
        to = teacher(**{k: v for k, v in batch.items() if k != "labels"}, output_hidden_states=True)
        p_t = torch.softmax(to.logits / T, -1)
        log_ps = torch.log_softmax(so.logits / T, -1)
        soft = T**2 * (p_t * (p_t.log() - log_ps)).sum(-1).mean()
        hard = F.cross_entropy(so.logits, batch["labels"])
        m = batch["attention_mask"].bool()
        hidden = torch.stack(
            [
                ((trainer.projections[str(i)](so.hidden_states[i]) - to.hidden_states[j]) ** 2).mean(-1)[m].mean()
                for i, j in {1: 2, 2: 4}.items()
            ]
        ).mean()
        expected = ws * soft + wh * hard + wd * hidden
    torch.testing.assert_close(got.detach(), expected, rtol=1e-5, atol=1e-6)


def test_label_smoothing_applies_to_the_hard_loss(tmp_path):
    teacher, student = tiny_bert(layers=2, hidden=32), tiny_bert(layers=1, hidden=32, seed=1)
    args = dargs(tmp_path, soft_weight=0.0, hard_weight=1.0, label_smoothing_factor=0.2)
    trainer = DistillationTrainer(student, teacher, args)
    batch = fixed_batch()
    got = trainer.compute_loss(student, dict(batch))
    with torch.no_grad():
        logits = student(**{k: v for k, v in batch.items() if k != "labels"}).logits
    torch.testing.assert_close(got, F.cross_entropy(logits, batch["labels"], label_smoothing=0.2))


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    """4 accumulation steps of batch 2 == 1 step of batch 8 (same data order, dropout off)."""

    def run(out, bs, ga):
        teacher = tiny_bert(layers=4, hidden=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        student = init_student_from_teacher(teacher, num_layers=2)
        args = dargs(
            tmp_path,
            output_dir=str(tmp_path / out),
            max_steps=2,
            per_device_train_batch_size=bs,
            gradient_accumulation_steps=ga,
            hidden_weight=0.5,
            optim="sgd",
            learning_rate=0.5,
        )
        DistillationTrainer(student, teacher, args, train_dataset=classification_data(16, with_padding=False)).train()
        return state(student)

    big, accumulated = run("big", 8, 1), run("acc", 2, 4)
    moved = 0
    for k in big:
        torch.testing.assert_close(accumulated[k], big[k], rtol=1e-4, atol=1e-6)
    init = state(init_student_from_teacher(tiny_bert(layers=4, hidden=32), num_layers=2))
    moved = sum(not torch.allclose(big[k], init[k]) for k in big)
    assert moved > 10


def test_teacher_gets_its_own_inputs_behind_remove_unused_columns(tmp_path):
    """A BERT teacher keeps token_type_ids though the DistilBERT student does not accept them."""
    teacher = tiny_bert(layers=2, hidden=32)
    student = tiny_distilbert(layers=1, hidden=32)
    seen = {"teacher": [], "student": []}
    teacher.register_forward_pre_hook(lambda m, a, kw: seen["teacher"].append(set(kw)), with_kwargs=True)
    student.register_forward_pre_hook(lambda m, a, kw: seen["student"].append(set(kw)), with_kwargs=True)
    data = classification_data(8).add_column("unused_text", ["x"] * 8)
    args = dargs(tmp_path, max_steps=1, remove_unused_columns=True)
    DistillationTrainer(student, teacher, args, train_dataset=data).train()
    assert "token_type_ids" in seen["teacher"][0] and "labels" not in seen["teacher"][0]
    assert "token_type_ids" not in seen["student"][0] and "labels" in seen["student"][0]
    assert "unused_text" not in seen["teacher"][0] | seen["student"][0]


def test_evaluate_reports_components_and_metrics_see_student_logits_only(tmp_path):
    teacher = tiny_bert(layers=4, hidden=32)
    student = init_student_from_teacher(teacher, num_layers=2)
    received = []

    def compute_metrics(pred):
        received.append(pred.predictions)
        return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}

    args = dargs(
        tmp_path,
        max_steps=4,
        hidden_weight=1.0,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
    )
    trainer = DistillationTrainer(
        student,
        teacher,
        args,
        train_dataset=classification_data(32),
        eval_dataset=classification_data(12, seed=5),
        compute_metrics=compute_metrics,
    )
    trainer.train()
    metrics = trainer.evaluate()
    for key in ("eval_loss", "eval_soft_loss", "eval_hard_loss", "eval_hidden_loss", "eval_accuracy"):
        assert key in metrics
    expected = 0.9 * metrics["eval_soft_loss"] + 0.1 * metrics["eval_hard_loss"] + 1.0 * metrics["eval_hidden_loss"]
    assert metrics["eval_loss"] == pytest.approx(expected, rel=1e-4)
    assert all(hasattr(p, "shape") and p.shape == (12, 3) for p in received)  # logits only, no hidden states
    best = trainer.state.best_model_checkpoint
    assert best is not None
    reloaded = tf.AutoModelForSequenceClassification.from_pretrained(best)
    for k, v in reloaded.state_dict().items():
        torch.testing.assert_close(student.state_dict()[k], v)


def test_fully_padded_token_rows_give_a_finite_loss(tmp_path):
    teacher = tiny_bert(layers=2, hidden=32, cls=tf.BertForTokenClassification)
    student = tiny_bert(layers=1, hidden=32, seed=1, cls=tf.BertForTokenClassification)
    trainer = DistillationTrainer(student, teacher, dargs(tmp_path, hidden_weight=1.0, layer_map="1:2"))
    batch = fixed_batch(n=3, seq=6)
    batch["attention_mask"][1] = 0  # a row made only of padding
    batch["labels"] = torch.randint(0, 3, (3, 6))
    batch["labels"][1] = -100
    loss = trainer.compute_loss(student, batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in student.parameters() if p.grad is not None)


def test_non_finite_loss_stops_training_before_the_weights_are_touched(tmp_path):
    teacher = tiny_bert(layers=2, hidden=32)
    student = tiny_bert(layers=1, hidden=32, seed=1)
    calls = {"n": 0}

    def poison(module, inputs, output):
        calls["n"] += 1
        if calls["n"] == 3:
            output.logits = output.logits * float("nan")
        return output

    teacher.register_forward_hook(poison)
    snapshots = []

    class Snapshot(tf.TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            snapshots.append(state_of())

    def state_of():
        return state(student)

    trainer = DistillationTrainer(
        student, teacher, dargs(tmp_path, max_steps=5), train_dataset=classification_data(32), callbacks=[Snapshot()]
    )
    with pytest.raises(NonFiniteLossError, match=r"non-finite soft_loss at step 3"):
        trainer.train()
    assert len(snapshots) == 2
    after = state(student)
    assert all(torch.isfinite(v).all() for v in after.values())
    assert all(torch.equal(after[k], snapshots[-1][k]) for k in after)


# ---- bad input: a ValueError at construction ---------------------------------------------------


class NoHiddenStates(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, input_ids=None, labels=None):
        return {"logits": self.linear(input_ids.float()[..., :4])}


@pytest.mark.parametrize(
    "case, message",
    [
        ("vocab", "vocab_size"),
        ("num_labels", "predicts 2 labels"),
        ("id2label", "id2label"),
        ("student_layer", "student index 3 is out of range"),
        ("teacher_layer", "teacher index 9 is out of range"),
        ("no_hidden", "returns no hidden states"),
        ("missing_path", "is not an existing directory"),
        ("plain_args", "must be a DistillationArguments"),
        ("same_object", "same object"),
        ("seq2seq", "encoder-decoder"),
    ],
)
def test_bad_input_fails_at_construction(tmp_path, case, message):
    teacher, student = tiny_bert(layers=4, hidden=32), tiny_bert(layers=2, hidden=32, seed=1)
    kwargs = {}
    args = dargs(tmp_path)
    if case == "vocab":
        student = tiny_bert(layers=2, hidden=32, vocab=VOCAB + 7)
    elif case == "num_labels":
        student = tiny_bert(layers=2, hidden=32, num_labels=2)
    elif case == "id2label":
        teacher.config.id2label = {0: "neg", 1: "neu", 2: "pos"}
        student.config.id2label = {0: "pos", 1: "neu", 2: "neg"}
    elif case == "student_layer":
        args = dargs(tmp_path, hidden_weight=1.0, layer_map="3:4")
    elif case == "teacher_layer":
        args = dargs(tmp_path, hidden_weight=1.0, layer_map="1:9")
    elif case == "no_hidden":
        student = NoHiddenStates()
        args = dargs(tmp_path, hidden_weight=1.0)
    elif case == "missing_path":
        teacher = str(tmp_path / "no" / "such" / "teacher")
    elif case == "plain_args":
        args = tf.TrainingArguments(output_dir=str(tmp_path), report_to=[])
    elif case == "same_object":
        teacher = student
    elif case == "seq2seq":
        t5 = {"vocab_size": VOCAB, "d_model": 16, "d_kv": 8, "d_ff": 32, "num_heads": 2, "decoder_start_token_id": 0}
        teacher = tf.T5ForConditionalGeneration(tf.T5Config(num_layers=2, **t5))
        student = tf.T5ForConditionalGeneration(tf.T5Config(num_layers=1, **t5))
    with pytest.raises(ValueError, match=message):
        DistillationTrainer(student, teacher, args, **kwargs)


def test_tokenizer_mismatch_fails_at_construction(tmp_path):
    teacher, student = tiny_bert(layers=2, hidden=32), tiny_bert(layers=1, hidden=32, seed=1)
    tok_a = make_tokenizer(tmp_path / "a")
    words = list(WORDS)
    words[10], words[11] = words[11], words[10]  # same size, different ids
    tok_b = make_tokenizer(tmp_path / "b", words)
    assert len(tok_a) == len(tok_b) == VOCAB
    with pytest.raises(ValueError, match="tokenizer"):
        DistillationTrainer(student, teacher, dargs(tmp_path), processing_class=tok_a, teacher_processing_class=tok_b)
    # a teacher directory carries its tokenizer: it is compared too
    teacher.save_pretrained(tmp_path / "teacher")
    tok_b.save_pretrained(tmp_path / "teacher")
    with pytest.raises(ValueError, match="tokenizer"):
        DistillationTrainer(student, str(tmp_path / "teacher"), dargs(tmp_path), processing_class=tok_a)
    # and the same tokenizer is accepted, the teacher loaded with the student's Auto class
    tok_a.save_pretrained(tmp_path / "teacher")
    trainer = DistillationTrainer(student, str(tmp_path / "teacher"), dargs(tmp_path), processing_class=tok_a)
    assert isinstance(trainer.teacher, tf.BertForSequenceClassification)
    assert not any(p.requires_grad for p in trainer.teacher.parameters())


def test_bf16_mixed_precision_runs_the_teacher_under_autocast_and_the_losses_in_fp32(tmp_path):
    teacher, student = tiny_bert(layers=2, hidden=32), tiny_bert(layers=1, hidden=32, seed=1)
    dtypes = []
    teacher.register_forward_hook(lambda m, i, out: dtypes.append(out.logits.dtype))
    args = dargs(tmp_path, bf16=True, max_steps=2, hidden_weight=1.0, layer_map="1:2")
    trainer = DistillationTrainer(student, teacher, args, train_dataset=classification_data(16))
    trainer.train()
    assert dtypes and all(d == torch.bfloat16 for d in dtypes)
    logged = [h for h in trainer.state.log_history if "soft_loss" in h]
    assert logged and all(torch.isfinite(torch.tensor(h["loss"])) for h in logged)
    with trainer.accelerator.autocast():
        _loss, parts, _ = trainer.compute_distillation_loss(trainer.model, fixed_batch())
    assert all(v.dtype == torch.float32 for v in parts.values())


# ---- the loss composition: registry, weights of every term, usable without a Trainer ----------------


@pytest.mark.parametrize("divergence", ["reverse_kl", "jsd", "tvd"])
def test_the_divergence_chosen_in_args_is_the_soft_loss(tmp_path, divergence):
    teacher, student = sharpen(tiny_bert(layers=2, hidden=32)), tiny_bert(layers=1, hidden=32, seed=1)
    T = 2.0
    trainer = DistillationTrainer(student, teacher, dargs(tmp_path, temperature=T, divergence=divergence))
    batch = fixed_batch()
    with torch.no_grad():
        _, terms, _ = trainer.compute_distillation_loss(student.eval(), dict(batch))
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        p_s, p_t = (
            torch.softmax(student(**inputs).logits.double() / T, -1),
            torch.softmax(teacher(**inputs).logits.double() / T, -1),
        )

    def kl(p, q):
        return (p * (p.log() - q.log())).sum(-1)

    if divergence == "reverse_kl":
        per_row = kl(p_s, p_t)
    elif divergence == "jsd":  # beta = 0.5: the symmetric Jensen-Shannon divergence
        m = 0.5 * (p_s + p_t)
        per_row = 0.5 * kl(p_t, m) + 0.5 * kl(p_s, m)
    else:
        per_row = 0.5 * (p_s - p_t).abs().sum(-1)
    assert float(terms["soft_loss"]) == pytest.approx(float(T**2 * per_row.mean()), rel=1e-4)


class L2Distiller(DistillationTrainer):
    """Adds a penalty on the student's logits: a term the built-in objective does not know."""

    def extra_losses(self, inputs, student_outputs, teacher_outputs):
        return {"logit_l2_loss": student_outputs["logits"].float().pow(2).mean()}


def test_extra_loss_terms_need_a_declared_weight_and_are_logged(tmp_path):
    teacher, student = tiny_bert(layers=2, hidden=32), tiny_bert(layers=1, hidden=32, seed=1)
    undeclared = L2Distiller(student, teacher, dargs(tmp_path))
    with pytest.raises(ValueError, match="logit_l2_loss.*have no weight"):
        undeclared.compute_distillation_loss(student, fixed_batch())

    class Declared(L2Distiller):
        extra_loss_weights = {"logit_l2_loss": 0.25}  # the documented way to declare it

    trainer = Declared(student, teacher, dargs(tmp_path, max_steps=2), train_dataset=classification_data(8))
    assert trainer.loss_weights == {
        "soft_loss": 0.9,
        "hard_loss": 0.1,
        "hidden_loss": 0.0,
        "attention_loss": 0.0,
        "logit_l2_loss": 0.25,
    }
    loss, terms, _ = trainer.compute_distillation_loss(student.eval(), fixed_batch())
    expected = 0.9 * terms["soft_loss"] + 0.1 * terms["hard_loss"] + 0.25 * terms["logit_l2_loss"]
    torch.testing.assert_close(loss, expected)
    trainer.train()
    assert all("logit_l2_loss" in h for h in trainer.state.log_history if "loss" in h)


def test_the_objective_gives_the_trainers_loss_without_a_trainer(tmp_path):
    teacher = tiny_bert(layers=4, hidden=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    student = init_student_from_teacher(teacher, num_layers=2)
    args = dargs(tmp_path, hidden_weight=0.5, hard_weight=0.2, soft_weight=0.8)
    batch = fixed_batch()
    trainer = DistillationTrainer(student, teacher, args)
    want, want_terms, _ = trainer.compute_distillation_loss(student.eval(), dict(batch))

    objective = DistillationObjective.from_args(args, layer_map={1: 2, 2: 4})  # the uniform map for 4 -> 2
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    s_out = student(**batch, output_hidden_states=True)
    with torch.no_grad():
        t_out = teacher(**inputs, output_hidden_states=True)
    got, terms = objective(batch, s_out, [t_out], hard_loss=s_out.loss)
    torch.testing.assert_close(got, want)
    assert terms.keys() == want_terms.keys() == {"soft_loss", "hard_loss", "hidden_loss"}


def test_tied_lm_student_with_projections_checkpoints_resumes_and_saves_clean(tmp_path):
    """A masked-LM student ties its decoder to its embeddings; projections join it in one module."""
    data = classification_data(16).remove_columns("labels")
    data = data.add_column("labels", data["input_ids"])

    def run(out, resume=None, steps=4):
        teacher = tiny_bert(layers=2, hidden=64, cls=tf.BertForMaskedLM)
        student = tiny_bert(layers=1, hidden=32, seed=1, cls=tf.BertForMaskedLM)
        args = dargs(
            tmp_path,
            output_dir=str(tmp_path / out),
            max_steps=steps,
            hidden_weight=1.0,
            save_strategy="steps",
            save_steps=2,
        )
        trainer = DistillationTrainer(student, teacher, args, train_dataset=data)
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = run("full")
    resumed = run("full_again", resume=str(tmp_path / "full" / "checkpoint-2"))
    for k, v in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v, msg=k)
    resumed.save_model()
    reloaded = tf.BertForMaskedLM.from_pretrained(resumed.args.output_dir)
    assert reloaded.config.hidden_size == 32
    assert saved_keys(resumed.args.output_dir) <= set(resumed.student.state_dict())
    for k, v in reloaded.state_dict().items():
        torch.testing.assert_close(v, resumed.student.state_dict()[k])
