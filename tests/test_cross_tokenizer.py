"""Cross-tokenizer distillation (hf_distill.cross_tokenizer): ULD, the hybrid loss, the alignment, the trainer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from testing_utils import distillation_args
from xtok_setup import bpe_tokenizer, lm_dataset, tiny_gpt2, wordpiece_tokenizer

from hf_distill import DistillationArguments, DistillationTrainer
from hf_distill.chunked import OutputHead
from hf_distill.cross_tokenizer import (
    TokenAligner,
    VocabularyMap,
    hybrid_per_position,
    sorted_l1,
    uld_per_position,
)
from hf_distill.lm_data import PromptCompletionCollator, soft_token_mask
from hf_distill.losses import DIVERGENCES, divergence_loss, teacher_log_probs


def args(tmp_path, **kw) -> DistillationArguments:
    base = {"per_device_train_batch_size": 4, "max_steps": 2, "learning_rate": 1e-2}
    return distillation_args(tmp_path / "out", **{**base, **kw})


@pytest.fixture(scope="module")
def toks():
    return bpe_tokenizer(), wordpiece_tokenizer()


# ---- losses ----------------------------------------------------------------------------------------------------


def reference_uld(s_logits, t_logits, T):
    """ULD written plainly: per position, sorted probability lists, zero-padded, summed absolute differences."""
    out = []
    for s, t in zip(s_logits, t_logits):
        ps = sorted(torch.softmax(s.double() / T, -1).tolist(), reverse=True)
        pt = sorted(torch.softmax(t.double() / T, -1).tolist(), reverse=True)
        n = max(len(ps), len(pt))
        ps, pt = ps + [0.0] * (n - len(ps)), pt + [0.0] * (n - len(pt))
        out.append(T * T * sum(abs(a - b) for a, b in zip(ps, pt)))
    return torch.tensor(out)


@pytest.mark.parametrize("T", [1.0, 2.0])
def test_uld_matches_a_plain_reference(T):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 9, generator=g) * 3, torch.randn(6, 5, generator=g) * 3
    torch.testing.assert_close(uld_per_position(s, t, T), reference_uld(s, t, T).float(), rtol=1e-5, atol=1e-6)
    # symmetric in the two vocabularies' sizes, zero for equal sorted vectors (a permuted vocabulary)
    torch.testing.assert_close(uld_per_position(t, s, T), uld_per_position(s, t, T))
    assert uld_per_position(s, s[:, torch.randperm(9, generator=g)], T).abs().max() < 1e-6
    assert sorted_l1(torch.tensor([[0.5, 0.5]]), torch.tensor([[1.0]])).item() == pytest.approx(1.0)


@pytest.mark.parametrize("divergence", list(DIVERGENCES))
def test_hybrid_over_an_identical_vocabulary_is_the_registry_divergence(divergence):
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(5, 11, generator=g), torch.randn(5, 11, generator=g)
    ids = torch.arange(11)
    identity = VocabularyMap(ids, ids.clone(), 11, 11, identical=True)
    expected = divergence_loss(s, teacher_log_probs(t, 2.0), 2.0, divergence=divergence, reduction="sum")
    got = hybrid_per_position(s, t, identity, 2.0, divergence).sum()
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    # a permuted identical vocabulary (other ids, same tokens) gives the same value
    perm = torch.randperm(11, generator=g)  # teacher id perm[k] is student id k
    permuted = VocabularyMap(ids, perm, 11, 11)
    t_perm = torch.empty_like(t)
    t_perm[:, perm] = t
    got = hybrid_per_position(s, t_perm, permuted, 2.0, divergence).sum()
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_hybrid_partial_vocabulary_by_hand():
    # student ids 0, 1 shared with teacher ids 1, 0; student id 2 and teacher ids 2, 3 are unshared
    m = VocabularyMap(torch.tensor([0, 1]), torch.tensor([1, 0]), 3, 4)
    p_s, p_t = torch.tensor([[0.5, 0.3, 0.2]]), torch.tensor([[0.1, 0.6, 0.2, 0.1]])
    got = hybrid_per_position(p_s.log(), p_t.log(), m, 1.0, "forward_kl")
    coarse_s, coarse_t = [0.5, 0.3, 0.2], [0.6, 0.1, 0.3]  # shared tokens in map order, then the rest bin
    kl = sum(t * (torch.tensor(t).log() - torch.tensor(s).log()) for s, t in zip(coarse_s, coarse_t))
    uld_rest = abs(0.2 - 0.2) + abs(0.0 - 0.1)  # sorted unshared: [0.2] vs [0.2, 0.1]
    assert got.item() == pytest.approx(float(kl) + uld_rest, rel=1e-5)


def test_vocabulary_map_pairs_token_texts(toks):
    bpe, wp = toks
    m = VocabularyMap.from_tokenizers(bpe, wp)
    s_tokens = bpe.convert_ids_to_tokens(m.student_ids.tolist())
    t_tokens = wp.convert_ids_to_tokens(m.teacher_ids.tolist())
    pairs = dict(zip(t_tokens, s_tokens))
    assert pairs["the"] == "Ġthe"  # word-initial WordPiece token = byte-level token with its space
    assert pairs["[SEP]"] == "<|endoftext|>"  # the end tokens by role
    assert all(not t.startswith("##") or s[0] != "Ġ" for t, s in pairs.items())  # continuations carry no space
    assert 0 < len(m) < min(len(bpe), len(wp))
    assert len(set(m.student_ids.tolist())) == len(m) == len(set(m.teacher_ids.tolist()))
    assert VocabularyMap.from_tokenizers(bpe, bpe).identical


# ---- alignment -------------------------------------------------------------------------------------------------


def test_alignment_of_a_hand_built_example_position_by_position():
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    student = wordpiece_tokenizer({w: i for i, w in enumerate(specials + ["the", "cat", "##s", "sat"])})
    teacher = wordpiece_tokenizer({w: i for i, w in enumerate(specials + ["sa", "##t", "cats", "the"])})
    # student: the | cat | ##s | sat | [SEP]   (text ends at 3, 7, 8, 12)
    # teacher: the | cats | sa | ##t | [SEP]   (text ends at 3, 8, 11, 12)
    example = {"input_ids": [4, 5, 6, 7, 3], "labels": [-100, 5, 6, 7, 3]}  # prompt "the", completion " cats sat"
    batch = PromptCompletionCollator(0)([example])
    out = TokenAligner(student, [teacher])(batch)
    assert out["teacher_input_ids"].tolist() == [[7, 6, 4, 5, 3]]
    assert out["teacher_attention_mask"].tolist() == [[1, 1, 1, 1, 1]]
    # position 0 ("the", predicts "cat") <-> teacher 0 ("the"); 1 ("cat", mid-word) has no partner; 2 ("##s") <-> 1
    # ("cats"); 3 ("sat", predicts [SEP]) <-> 3 ("##t"); 4 is [SEP] itself (predicts nothing)
    assert out["teacher_position"].tolist() == [[0, -1, 1, 3, -1]]
    assert soft_token_mask(out).tolist() == [[True, False, True, True, False]]
    assert torch.equal(out["aligned_input_ids"], batch["input_ids"])


def test_alignment_with_bos_byte_level_and_padding(toks):
    bpe, wp = toks
    data = lm_dataset(bpe, n=4)
    batch = PromptCompletionCollator.from_tokenizer(bpe)([data[i] for i in range(4)])
    out = TokenAligner(bpe, [wp])(batch)
    for b in range(4):
        real = batch["attention_mask"][b].bool()
        s_ids = batch["input_ids"][b][real].tolist()
        t_ids = out["teacher_input_ids"][b][out["teacher_attention_mask"][b].bool()].tolist()
        assert t_ids[-1] == wp.sep_token_id  # the student's eos became the teacher's end token
        s_ends = [e for _, e in bpe(bpe.decode(s_ids[1:-1]), return_offsets_mapping=True)["offset_mapping"]]
        t_ends = [
            e
            for _, e in wp(bpe.decode(s_ids[1:-1]), add_special_tokens=False, return_offsets_mapping=True)[
                "offset_mapping"
            ]
        ]
        for i, j in enumerate(out["teacher_position"][b].tolist()):
            if j < 0:
                continue
            assert batch["completion_mask"][b, i + 1] == 1  # only positions that predict a completion token
            assert s_ends[i - 1] == t_ends[j]  # student position i reads token i (after bos): same text end
    identity = TokenAligner(bpe, [None])(batch)
    expected = torch.where(soft_token_mask(batch), torch.arange(batch["input_ids"].shape[1]), -1)
    assert torch.equal(identity["teacher_position"], expected)
    assert torch.equal(
        identity["teacher_input_ids"][batch["attention_mask"].bool()],
        batch["input_ids"][batch["attention_mask"].bool()],
    )


# ---- the trainer -----------------------------------------------------------------------------------------------


def loss_terms(trainer, features):
    batch = trainer.data_collator(features)
    trainer.model.eval()
    compute = trainer.chunked_distillation_loss if trainer._chunk_size else trainer.compute_distillation_loss
    with torch.no_grad():
        loss, terms, _ = compute(trainer.model, batch)
    return loss, terms, batch


@pytest.mark.parametrize("chunk", [None, 5])
@pytest.mark.parametrize("divergence", ["forward_kl", "jsd"])
def test_hybrid_with_identical_tokenizers_is_the_same_tokenizer_loss(tmp_path, toks, chunk, divergence):
    bpe, _ = toks
    data = lm_dataset(bpe, n=8)
    features = [data[i] for i in range(8)]
    terms = {}
    for mode in (None, "hybrid"):
        trainer = DistillationTrainer(
            tiny_gpt2(len(bpe), seed=1),
            tiny_gpt2(len(bpe), seed=0, hidden=24),
            args(tmp_path, cross_tokenizer=mode, loss_chunk_size=chunk, divergence=divergence),
            train_dataset=data,
            processing_class=bpe,
            teacher_processing_class=bpe,
            data_collator=PromptCompletionCollator.from_tokenizer(bpe),
        )
        terms[mode] = loss_terms(trainer, features)[1]
    assert terms["hybrid"]["soft_loss"].item() == pytest.approx(terms[None]["soft_loss"].item(), rel=1e-5)
    assert terms["hybrid"]["hard_loss"].item() == pytest.approx(terms[None]["hard_loss"].item(), rel=1e-5)


def test_uld_with_identical_tokenizers_is_uld_on_the_same_positions(tmp_path, toks):
    bpe, _ = toks
    data = lm_dataset(bpe, n=8)
    student, teacher = tiny_gpt2(len(bpe), seed=1), tiny_gpt2(len(bpe), seed=0, hidden=24)
    trainer = DistillationTrainer(
        student,
        teacher,
        args(tmp_path, cross_tokenizer="uld", temperature=2.0),
        train_dataset=data,
        processing_class=bpe,
        data_collator=PromptCompletionCollator.from_tokenizer(bpe),
    )
    features = [data[i] for i in range(8)]
    _, terms, _ = loss_terms(trainer, features)
    plain = PromptCompletionCollator.from_tokenizer(bpe)(features)
    mask = soft_token_mask(plain)
    with torch.no_grad():
        s = student(input_ids=plain["input_ids"], attention_mask=plain["attention_mask"]).logits[mask]
        t = teacher(input_ids=plain["input_ids"], attention_mask=plain["attention_mask"]).logits[mask]
    assert terms["soft_loss"].item() == pytest.approx(reference_uld(s, t, 2.0).mean().item(), rel=1e-5)


@pytest.mark.parametrize("mode", ["uld", "hybrid"])
def test_chunked_equals_full_logits_across_tokenizers(tmp_path, toks, mode):
    bpe, wp = toks
    data = lm_dataset(bpe, n=8)
    features = [data[i] for i in range(8)]
    results = {}
    for chunk in (None, 7):
        trainer = DistillationTrainer(
            tiny_gpt2(len(bpe), seed=1),
            tiny_gpt2(len(wp), seed=0, hidden=24),
            args(tmp_path, cross_tokenizer=mode, loss_chunk_size=chunk),
            train_dataset=data,
            processing_class=bpe,
            teacher_processing_class=wp,
            data_collator=PromptCompletionCollator.from_tokenizer(bpe),
        )
        batch = trainer.data_collator(features)
        compute = trainer.chunked_distillation_loss if chunk else trainer.compute_distillation_loss
        loss, terms, _ = compute(trainer.model, batch)
        loss.backward()
        results[chunk] = (
            loss.item(),
            terms["soft_loss"].item(),
            trainer.student.lm_head.weight.grad.clone(),
            trainer.student.transformer.h[0].mlp.c_fc.weight.grad.clone(),
        )
    full, chunked = results[None], results[7]
    assert chunked[0] == pytest.approx(full[0], rel=1e-5) and chunked[1] == pytest.approx(full[1], rel=1e-5)
    torch.testing.assert_close(chunked[2], full[2], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(chunked[3], full[3], rtol=1e-4, atol=1e-6)


def test_chunked_head_loss_never_builds_full_logits(toks):
    bpe, wp = toks
    from hf_distill.cross_tokenizer import AlignedSoftLoss

    loss = AlignedSoftLoss(1, "uld", 1.0, "forward_kl", {}, [VocabularyMap.from_tokenizers(bpe, wp)])
    data = lm_dataset(bpe, n=8)
    batch = TokenAligner(bpe, [wp])(PromptCompletionCollator.from_tokenizer(bpe)([data[i] for i in range(8)]))
    student, teacher = tiny_gpt2(len(bpe), seed=1), tiny_gpt2(len(wp), seed=0)
    hidden = student(input_ids=batch["input_ids"], output_hidden_states=True).hidden_states[-1]
    t_hidden = teacher(input_ids=batch["teacher_input_ids"], output_hidden_states=True).hidden_states[-1]
    widest = []
    real_linear = F.linear

    def spy(x, w, b=None):
        widest.append(x.shape[0])
        return real_linear(x, w, b)

    F.linear = spy
    try:
        loss.chunked_loss(
            batch, hidden, [t_hidden], OutputHead.from_model(student), [OutputHead.from_model(teacher)], 4, 1.0, 1.0
        )
    finally:
        F.linear = real_linear
    assert widest and max(widest) <= 4


def test_training_across_tokenizers_on_policy_peft_accumulation(tmp_path, toks):
    """lmbda=1 (the student's samples re-tokenized for the teacher), LoRA student, chunked, 2 micro-batches."""
    from peft import LoraConfig

    bpe, wp = toks
    data = lm_dataset(bpe, n=16)
    teacher = tiny_gpt2(len(wp), seed=0, hidden=24)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer = DistillationTrainer(
        tiny_gpt2(len(bpe), seed=1),
        teacher,
        args(
            tmp_path,
            cross_tokenizer="hybrid",
            lmbda=1.0,
            max_new_tokens=4,
            loss_chunk_size=8,
            gradient_accumulation_steps=2,
            logging_steps=1,
            per_device_train_batch_size=2,
        ),
        train_dataset=data,
        processing_class=bpe,
        teacher_processing_class=wp,
        data_collator=PromptCompletionCollator.from_tokenizer(bpe),
        peft_config=LoraConfig(r=2, target_modules=["c_attn"], task_type="CAUSAL_LM"),
    )
    realigned = []
    needs = trainer.paired.aligner.needs_alignment

    def counting(batch):  # the sampled batches arrive with an alignment made for the dataset's completions
        stale = needs(batch)
        realigned.append(stale)
        return stale

    trainer.paired.aligner.needs_alignment = counting
    lora = [p.clone() for n, p in trainer.student.named_parameters() if "lora_B" in n]
    trainer.train()
    logs = [e for e in trainer.state.log_history if "soft_loss" in e]
    assert logs and all(e["on_policy_fraction"] == 1.0 for e in logs)
    assert all(e["teacher0_tokens"] > 0 for e in logs)
    assert len(realigned) == 2 * 2 and all(realigned)  # every sampled micro-batch was aligned again
    after = [p for n, p in trainer.student.named_parameters() if "lora_B" in n]
    assert any(not torch.equal(a, b) for a, b in zip(lora, after))
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_accumulation_matches_one_big_batch(tmp_path, toks):
    bpe, wp = toks
    data = lm_dataset(bpe, n=8)
    weights = []
    for bs, k in ((4, 1), (2, 2)):
        torch.manual_seed(0)
        trainer = DistillationTrainer(
            tiny_gpt2(len(bpe), seed=1),
            tiny_gpt2(len(wp), seed=0, hidden=24),
            args(
                tmp_path,
                cross_tokenizer="uld",
                loss_chunk_size=6,
                max_steps=1,
                per_device_train_batch_size=bs,
                gradient_accumulation_steps=k,
                optim="sgd",
                learning_rate=1.0,
                lr_scheduler_type="constant",
                warmup_steps=0,
                max_grad_norm=0.0,
                data_seed=0,
            ),
            train_dataset=data.select(range(4)),
            processing_class=bpe,
            teacher_processing_class=wp,
            data_collator=PromptCompletionCollator.from_tokenizer(bpe),
        )
        trainer._get_train_sampler = lambda *a, **kw: torch.utils.data.SequentialSampler(range(4))
        trainer.train()
        weights.append(trainer.student.lm_head.weight.detach().clone())
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-4, atol=1e-6)


# ---- what is refused ---------------------------------------------------------------------------------------------


def test_different_tokenizers_without_cross_tokenizer_point_to_it(tmp_path, toks):
    bpe, wp = toks
    data = lm_dataset(bpe, n=4)
    with pytest.raises(ValueError, match="cross_tokenizer"):
        DistillationTrainer(
            tiny_gpt2(len(bpe)),
            tiny_gpt2(len(wp)),
            args(tmp_path),
            train_dataset=data,
            processing_class=bpe,
            teacher_processing_class=wp,
        )
    # a teacher folder carrying its own tokenizer is found too
    teacher = tiny_gpt2(len(wp))
    teacher.save_pretrained(tmp_path / "teacher")
    wp.save_pretrained(tmp_path / "teacher")
    with pytest.raises(ValueError, match="cross_tokenizer"):
        DistillationTrainer(
            tiny_gpt2(len(bpe)), str(tmp_path / "teacher"), args(tmp_path), train_dataset=data, processing_class=bpe
        )
    trainer = DistillationTrainer(
        tiny_gpt2(len(bpe)),
        str(tmp_path / "teacher"),
        args(tmp_path, cross_tokenizer="uld"),
        train_dataset=data,
        processing_class=bpe,
    )
    assert trainer.paired.aligner.teachers[0].get_vocab() == wp.get_vocab()


@pytest.mark.parametrize(
    "case, match",
    [
        ("hidden", "hidden-state"),
        ("seq_kd", "seq_kd"),
        ("ensemble", "ensemble"),
        ("no_student_tokenizer", "processing_class"),
        ("cached", "cached"),
    ],
)
def test_unsupported_combinations_fail_at_construction(tmp_path, toks, case, match):
    bpe, wp = toks
    data = lm_dataset(bpe, n=4)
    kw = {"cross_tokenizer": "uld"}
    teachers = tiny_gpt2(len(wp))
    extra = {"processing_class": bpe, "teacher_processing_class": wp}
    if case == "hidden":
        kw["hidden_weight"] = 1.0
    elif case == "seq_kd":
        kw["seq_kd"] = True
    elif case == "ensemble":
        teachers, extra["teacher_processing_class"] = [tiny_gpt2(len(wp)), tiny_gpt2(len(wp), seed=3)], [wp, wp]
    elif case == "no_student_tokenizer":
        extra.pop("processing_class")
    else:
        n = len(data)
        data = data.add_column("teacher_logits", [[[0.0] * 3] * len(data[i]["input_ids"]) for i in range(n)])
        teachers = None
    with pytest.raises(ValueError, match=match):
        DistillationTrainer(tiny_gpt2(len(bpe)), teachers, args(tmp_path, **kw), train_dataset=data, **extra)
