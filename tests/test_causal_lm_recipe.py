"""recipes/distil_causal_lm.py end to end on a tiny GPT-2 (1 process and torchrun x2), and its bad inputs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import transformers as tf
from recipe_helpers import CPU_RUN
from testing_utils import make_tokenizer, tiny_gpt2, torchrun

import hf_distill
from hf_distill import render_model_card
from hf_distill.generation import CompletionSampler
from recipes import distil_causal_lm

ROOT = Path(__file__).resolve().parent.parent
GKD_CONFIG = str(ROOT / "recipes" / "configs" / "causal_lm_gkd.yaml")
COMMON = [
    *CPU_RUN,
    "--bf16",
    "false",
    "--per_device_eval_batch_size",
    "8",
    "--max_length",
    "24",
    "--max_new_tokens",
    "6",
    "--learning_rate",
    "1e-2",
    "--max_steps",
    "4",
    "--seed",
    "3",
    "--student_model_name_or_path",
    "",
    "--student_num_layers",
    "2",
    "--dataset_name",
    "",
    "--train_split",
    "train",
    "--validation_split",
    "validation",
    "--gradient_accumulation_steps",
    "1",
]


def write_jsonl(path, n, seed, chat=False):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            p = " ".join(f"w{rng.randrange(90)}" for _ in range(rng.randrange(1, 5)))
            c = " ".join(f"w{rng.randrange(90)}" for _ in range(rng.randrange(1, 6)))
            row = (
                {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": c}]}
                if chat
                else {"question": p, "answer": c}
            )
            f.write(json.dumps(row) + "\n")
    return str(path)


@pytest.fixture
def setup(tmp_path):
    teacher = tmp_path / "teacher"
    tiny_gpt2(layers=4, hidden=32).save_pretrained(teacher)
    tok = make_tokenizer(teacher)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} [SEP] {% endfor %}"
    tok.save_pretrained(teacher)
    data = write_jsonl(tmp_path / "train.jsonl", 32, 0), write_jsonl(tmp_path / "dev.jsonl", 10, 1)
    return str(teacher), data


def recipe_args(teacher, data, out, *extra, config=GKD_CONFIG):
    return [
        config,
        "--teacher_model_name_or_path",
        teacher,
        "--train_file",
        data[0],
        "--validation_file",
        data[1],
        "--prompt_column",
        "question",
        "--completion_column",
        "answer",
        "--output_dir",
        str(out),
        "--per_device_train_batch_size",
        "4",
        *COMMON,
        *extra,
    ]


def reference_ce(folder, dev_file):
    """Plain re-implementation of the evaluation: the model's mean loss over each example's completion tokens."""
    tok = tf.AutoTokenizer.from_pretrained(folder)
    model = tf.AutoModelForCausalLM.from_pretrained(folder).eval()
    total, count = 0.0, 0
    for line in Path(dev_file).read_text().splitlines():
        row = json.loads(line)
        p = tok(row["question"], add_special_tokens=False)["input_ids"]
        c = tok(row["answer"], add_special_tokens=False)["input_ids"] + [tok.sep_token_id]
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([p + c]), labels=torch.tensor([[-100] * len(p) + c])).loss
        total, count = total + loss.item() * len(c), count + len(c)
    return total / count


def expected_fractions(seed, steps, lmbda=0.5):
    args = hf_distill.DistillationArguments(
        output_dir="unused", report_to="none", use_cpu=True, lmbda=lmbda, seed=seed, max_new_tokens=6
    )
    sampler = CompletionSampler(args, 3, 0)
    return [float(sampler.source(s, 0) == "student") for s in range(steps)]


def test_recipe_on_policy_one_process(setup, tmp_path):
    teacher, data = setup
    results = distil_causal_lm.main(recipe_args(teacher, data, tmp_path / "out", "--lmbda", "0.5"))
    out = tmp_path / "out"
    assert results["distillation"]["mode"] == "on-policy (GKD)"
    assert (results["distillation"]["divergence"], results["distillation"]["loss_chunk_size"]) == ("jsd", "auto")
    log = [e for e in results["train_log"] if "loss" in e]
    assert [e["on_policy_fraction"] for e in log] == expected_fractions(3, 4)
    assert all(e["generation_seconds"] > 0 for e, f in zip(log, expected_fractions(3, 4)) if f == 1.0)
    # the reported numbers are those of the saved student and of the teacher, recomputed independently
    assert results["student"]["cross_entropy"] == pytest.approx(reference_ce(out, data[1]), rel=1e-4)
    assert results["teacher"]["cross_entropy"] == pytest.approx(reference_ce(teacher, data[1]), rel=1e-4)
    assert results["student"]["perplexity"] == pytest.approx(2.718281828 ** results["student"]["cross_entropy"])
    saved = tf.AutoModelForCausalLM.from_pretrained(out)
    assert saved.config.n_layer == 2
    card = (out / "README.md").read_text()
    samples = results["generation_samples"]
    assert len(samples) == 3 and "## Generation samples" in card
    assert all(s["student"] in card and s["teacher"] in card for s in samples if s["student"])
    assert "| mode | on-policy (GKD) |" in card and 'pipeline("text-generation"' in card
    # the card is rendered from the results alone (packaged template), the folder is released, the run recorded
    assert render_model_card(out) == card and not (out / ".hf_distill.lock").exists()
    assert results["hf_distill_version"] == hf_distill.__version__ and results["run_id"]


def test_recipe_chat_data_seq_kd_peft(setup, tmp_path):
    teacher, _ = setup
    data = (
        write_jsonl(tmp_path / "train.jsonl", 24, 0, chat=True),
        write_jsonl(tmp_path / "dev.jsonl", 6, 1, chat=True),
    )
    config = str(ROOT / "recipes" / "configs" / "causal_lm_seqkd.yaml")
    results = distil_causal_lm.main(
        recipe_args(
            teacher,
            data,
            tmp_path / "out",
            "--use_peft",
            "true",
            "--lora_r",
            "4",
            "--lora_target_modules",
            "c_attn",
            "--chunked_loss",
            "false",
            config=config,
        )
    )
    assert results["distillation"]["mode"] == "sequence-level KD" and results["distillation"]["peft"]
    assert results["distillation"]["loss_chunk_size"] is None
    log = [e for e in results["train_log"] if "loss" in e]
    assert all(e["on_policy_fraction"] == 0.0 and "hard_loss" in e for e in log)
    merged = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "out")  # the adapter is merged on save
    assert not any("lora" in name for name in merged.state_dict())


def test_recipe_torchrun_two_processes(setup, tmp_path):
    teacher, data = setup
    argv = recipe_args(teacher, data, tmp_path / "two", "--lmbda", "0.5", "--per_device_train_batch_size", "2")
    torchrun(ROOT / "recipes" / "distil_causal_lm.py", argv)
    results = json.loads((tmp_path / "two" / "distillation_results.json").read_text())
    assert results["distillation"]["global_train_batch_size"] == 4
    # the coin is the same on both processes: the averaged fraction is 0 or 1 at every step, as seeded
    assert [e["on_policy_fraction"] for e in results["train_log"] if "loss" in e] == expected_fractions(3, 4)
    assert results["student"]["cross_entropy"] == pytest.approx(reference_ce(tmp_path / "two", data[1]), rel=1e-4)


def test_recipe_rejects_data_in_neither_format(setup, tmp_path):
    teacher, data = setup
    with pytest.raises(ValueError, match="'prompt' and 'completion' columns"):
        distil_causal_lm.main(recipe_args(teacher, data, tmp_path / "out", "--prompt_column", "nope"))


def test_recipe_rejects_sequences_longer_than_the_model(setup, tmp_path):
    teacher, data = setup
    with pytest.raises(ValueError, match="exceeds the teacher's 64 positions"):
        distil_causal_lm.main(recipe_args(teacher, data, tmp_path / "out", "--max_new_tokens", "60"))


def test_recipe_refuses_hard_baseline_under_deepspeed_at_start(setup, tmp_path, monkeypatch):
    """The baseline is a second trainer, which DeepSpeed refuses in the same process: refused before any work."""
    teacher, data = setup
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # what accelerate launch with a DeepSpeed config sets
    with pytest.raises(ValueError, match="--compare_with_hard_baseline cannot run under DeepSpeed.*own launch"):
        distil_causal_lm.main(recipe_args(teacher, data, tmp_path / "out", "--compare_with_hard_baseline", "true"))
    assert not (tmp_path / "out").exists()
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    distil_causal_lm.LMTrainingArguments(
        output_dir=str(tmp_path / "x"), compare_with_hard_baseline=True, use_cpu=True, report_to="none"
    )  # the same arguments without DeepSpeed


def test_recipe_hard_baseline_and_generation_metrics(setup, tmp_path):
    from rouge_score import rouge_scorer

    teacher, data = setup
    offpolicy = str(ROOT / "recipes" / "configs" / "causal_lm_offpolicy.yaml")
    extra = [
        "--compare_with_hard_baseline",
        "true",
        "--generation_eval_steps",
        "2",
        "--generation_eval_samples",
        "4",
        "--final_generation_eval_samples",
        "6",
    ]
    results = distil_causal_lm.main(recipe_args(teacher, data, tmp_path / "out", *extra, config=offpolicy))
    generation = ("rougeL", "teacher_nll", "generated_length", "distinct_2")
    for side in ("teacher", "student", "hard_baseline"):
        assert all(k in results[side] for k in (*generation, "perplexity")), side
    base, gain = results["hard_baseline"], results["distillation_gain"]
    assert base["optimizer_steps"] == 4 and results["generation_eval_examples"] == 6
    assert all(gain[k] == pytest.approx(results["student"][k] - base[k]) for k in (*generation, "perplexity"))
    # ROUGE-L of the saved student, recomputed one prompt at a time (no padding) with plain generate
    tok = tf.AutoTokenizer.from_pretrained(tmp_path / "out")
    student = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    scorer, scores = rouge_scorer.RougeScorer(["rougeL"]), []
    for line in Path(data[1]).read_text().splitlines()[:6]:
        row = json.loads(line)
        ids = torch.tensor([tok(row["question"], add_special_tokens=False)["input_ids"]])
        out = student.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=6,
            do_sample=False,
            eos_token_id=tok.sep_token_id,
            pad_token_id=tok.pad_token_id,
        )[0, ids.shape[1] :]
        reference = tok.decode(tok(row["answer"], add_special_tokens=False)["input_ids"], skip_special_tokens=True)
        scores.append(scorer.score(reference, tok.decode(out, skip_special_tokens=True))["rougeL"].fmeasure)
    assert results["student"]["rougeL"] == pytest.approx(sum(scores) / len(scores))
    # during training: the generation metrics of the student every 2 steps, logged as eval metrics
    logged = [e for e in results["eval_log"] if "eval_rougeL" in e]
    assert [e["step"] for e in logged] == [2, 4] and all("eval_teacher_nll" in e for e in logged)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "## What distillation bought" in card and "| ROUGE-L F (greedy completions) |" in card
    assert f"{base['rougeL']:.4f}" in card and f"{results['student']['teacher_nll']:.4f}" in card
    # the baseline is the cross-entropy-only run of the same student: same init, seed, data order and steps
    ce = distil_causal_lm.main(
        recipe_args(
            teacher,
            data,
            tmp_path / "ce",
            "--soft_weight",
            "0",
            "--hard_weight",
            "1",
            "--final_generation_eval_samples",
            "0",
            config=offpolicy,
        )
    )
    assert base["cross_entropy"] == pytest.approx(ce["student"]["cross_entropy"], rel=1e-5)


def test_recipe_warm_start_config(setup, tmp_path):
    """The shipped warm-start config (paths and sizes overridden): off-policy steps first, then lambda 1."""
    teacher, data = setup
    config = str(ROOT / "recipes" / "configs" / "causal_lm_onpolicy_warmstart.yaml")
    results = distil_causal_lm.main(
        recipe_args(
            teacher, data, tmp_path / "out", "--lmbda_start_step", "2", "--chunked_loss", "false", config=config
        )
    )
    log = [e for e in results["train_log"] if "loss" in e]
    assert [e["on_policy_fraction"] for e in log] == [0.0, 0.0, 1.0, 1.0]
    d = results["distillation"]
    assert (d["divergence"], d["lmbda"], d["lmbda_start_step"]) == ("forward_kl", 1.0, 2)
    assert d["on_policy_divergence"] in ("jsd", "reverse_kl", "forward_kl")


def test_recipe_packing_equals_padded(setup, tmp_path):
    """--packing: the same student and the same evaluation as padded batches (on-policy steps included)."""
    teacher, data = setup
    config = tf.AutoConfig.from_pretrained(teacher)  # no dropout, so that both runs draw the same numbers
    config.update({"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0})
    config.save_pretrained(teacher)
    # lr 1e-4, not 1e-2: AdamW turns the float noise of near-zero gradients into lr-sized updates, and weights
    # apart by 1e-2 can flip a sampled token in a later on-policy step (then the runs train on different text).
    runs = {
        flag: distil_causal_lm.main(
            recipe_args(teacher, data, tmp_path / flag, "--lmbda", "0.5", "--learning_rate", "1e-4", *extra)
        )
        for flag, extra in (("padded", ()), ("packed", ("--packing", "true")))
    }
    for who in ("student", "teacher"):
        assert runs["packed"][who]["cross_entropy"] == pytest.approx(runs["padded"][who]["cross_entropy"], rel=1e-5)
    loss = [[e["loss"] for e in runs[flag]["train_log"] if "loss" in e] for flag in ("padded", "packed")]
    assert len(loss[0]) == 4 and loss[1] == pytest.approx(loss[0], rel=1e-5, abs=1e-7)  # losses ~1e-3
    padded = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "padded").state_dict()
    packed = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "packed").state_dict()
    # AdamW turns float-level gradient noise of these near-zero losses into updates far below its steps (lr 1e-2)
    for name, value in padded.items():
        torch.testing.assert_close(packed[name], value, rtol=1e-3, atol=2e-4, msg=name)
