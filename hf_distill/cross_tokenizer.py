"""Cross-tokenizer distillation: aligning two tokenizations of one text, the vocabulary map, ULD and the hybrid loss.

A teacher that speaks another tokenizer predicts over other units, at other positions. Three pieces make its
predictions usable (`DistillationArguments.cross_tokenizer`):

- **Alignment** (`TokenAligner`, once per batch on the CPU side): each student row is decoded to its text and
  that text is tokenized by the teacher's tokenizer; fast tokenizers' offset mappings give each token's
  character span. Student position i (which has read tokens 0..i and predicts token i+1) is paired with the
  teacher position j whose token span ends at the same character: both have read the same text and predict
  what follows it. Positions without such a partner are **skipped** (no probability merging of multi-token
  spans, unlike TRL's GOLD): where the two tokenizations cut the text at different places, neither side's
  distribution is about the same continuation. A leading special token (bos) is paired with the teacher's bos,
  a trailing end token (eos / [SEP]) is the end of the text on both sides.
- **ULD** (Boizard et al., 2024, `uld_per_position`): the L1 distance between the two probability vectors sorted
  in decreasing order, the shorter padded with zeros: no vocabulary mapping needed.
- **Hybrid** (`hybrid_per_position`): for tokens whose strings exist in both vocabularies (`VocabularyMap`, built
  once from the two tokenizers) the exact divergence of the registry (`losses.DIVERGENCES`) on the shared tokens
  plus one bin holding every other token's mass; ULD on the unshared tokens' probabilities.

With identical tokenizers the alignment is the identity and the map covers the whole vocabulary, so the hybrid
loss is exactly the same-tokenizer divergence and ULD is ULD on identical positions.

`AlignedSoftLoss` computes the soft term over the aligned pairs, per teacher (rows can be routed to different
teachers, `hf_distill.routing`), from full logits or chunk by chunk from last hidden states (no (B, L, V)
logits of either model).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import losses
from .chunked import OutputHead
from .lm_data import end_token_id, is_packed
from .positions import IGNORE_INDEX, TEACHER_POSITION, soft_token_mask
from .positions import next_labels as shifted_labels

logger = logging.getLogger(__name__)

CROSS_TOKENIZER_MODES = ("uld", "hybrid")
# Batch keys the aligner adds (models never see them): the teachers' tokens of each row and the ids they were made
# from (to notice a batch whose completions were re-sampled, and align it again).
TEACHER_INPUT_IDS = "teacher_input_ids"
TEACHER_ATTENTION_MASK = "teacher_attention_mask"
ALIGNED_INPUT_IDS = "aligned_input_ids"
TEACHER_INDEX = "teacher_index"  # (B,) the teacher of each row (hf_distill.routing); absent = teacher 0
ALIGNMENT_KEYS = (TEACHER_INPUT_IDS, TEACHER_ATTENTION_MASK, ALIGNED_INPUT_IDS, TEACHER_POSITION)


# ---- the losses of one aligned pair of positions ---------------------------------------------------------------


def sorted_l1(p_s: torch.Tensor, p_t: torch.Tensor) -> torch.Tensor:
    """ULD's distance: sum_k |sort(p_s)_k - sort(p_t)_k|, both sorted decreasingly, the shorter padded with 0.

    Args:
        p_s: (N, Vs) probabilities (or a sub-vector of them) of the student.
        p_t: (N, Vt) probabilities of the teacher.

    Returns:
        (N,) one distance per position.
    """
    width = max(p_s.shape[-1], p_t.shape[-1])
    s = F.pad(p_s.sort(dim=-1, descending=True).values, (0, width - p_s.shape[-1]))  # (N, W)
    t = F.pad(p_t.sort(dim=-1, descending=True).values, (0, width - p_t.shape[-1]))
    return (s - t).abs().sum(-1)


def uld_per_position(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Universal Logit Distillation at temperature T, T^2-scaled like the registry's divergences: (N,).

    T^2 * sum_k |sort(softmax(z_s / T))_k - sort(softmax(z_t / T))_k| (float32).

    Args:
        student_logits: (N, Vs) raw student logits at the paired positions.
        teacher_logits: (N, Vt) raw teacher logits at the paired positions (any vocabulary size).
        temperature: T > 0.
    """
    p_s = F.softmax(student_logits.float() / temperature, dim=-1)  # (N, Vs)
    p_t = F.softmax(teacher_logits.float() / temperature, dim=-1)  # (N, Vt)
    return sorted_l1(p_s, p_t) * temperature**2


@dataclass
class VocabularyMap:
    """Tokens both vocabularies hold: student id `student_ids[k]` is the same string as teacher id `teacher_ids[k]`.

    `student_size` / `teacher_size` are the tokenizers' sizes (logits beyond them are vocabulary padding and are
    left out). `student_rest` / `teacher_rest` are the other ids of each side. `identical` when the tokenizers
    have the same vocabulary (the map is then the identity over all of it).
    """

    student_ids: torch.Tensor
    teacher_ids: torch.Tensor
    student_size: int
    teacher_size: int
    identical: bool = False

    def __post_init__(self):
        self.student_rest = _complement(self.student_ids, self.student_size)
        self.teacher_rest = _complement(self.teacher_ids, self.teacher_size)

    def __len__(self) -> int:
        return int(self.student_ids.numel())

    @classmethod
    def from_tokenizers(cls, student_tokenizer, teacher_tokenizer) -> VocabularyMap:
        """Pair tokens by the text they add to a sequence (`token_texts`); special tokens by role (bos, end).

        Tokenizers with the same decoder (both byte-level BPE, say) pair equal token strings instead, which
        also covers tokens that decode to no whole character. A string held by several tokens of one
        vocabulary is left out (the map is one to one).

        Args:
            student_tokenizer: the student's fast tokenizer.
            teacher_tokenizer: the teacher's fast tokenizer.
        """
        n_s, n_t = len(student_tokenizer), len(teacher_tokenizer)
        if student_tokenizer.get_vocab() == teacher_tokenizer.get_vocab():
            ids = torch.arange(n_s)
            return cls(ids, ids.clone(), n_s, n_t, identical=True)
        if _same_decoder(student_tokenizer, teacher_tokenizer):  # a token string means the same text in both
            special = set(student_tokenizer.all_special_ids) | set(teacher_tokenizer.all_special_ids)
            s_vocab, t_vocab = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
            pairs = {
                s_id: t_vocab[token]
                for token, s_id in s_vocab.items()
                if token in t_vocab and s_id not in special and t_vocab[token] not in special
            }
        else:
            s_texts, t_texts = token_texts(student_tokenizer), token_texts(teacher_tokenizer)
            pairs = {s_texts[text]: t_id for text, t_id in t_texts.items() if text in s_texts}
        for role in ("bos_token_id",):
            s_id, t_id = getattr(student_tokenizer, role, None), getattr(teacher_tokenizer, role, None)
            if s_id is not None and t_id is not None:
                pairs[s_id] = t_id
        s_end, t_end = end_token_id(student_tokenizer), end_token_id(teacher_tokenizer)
        if s_end is not None and t_end is not None:
            pairs = {s: t for s, t in pairs.items() if t != t_end}
            pairs[s_end] = t_end
        s_ids = torch.tensor(sorted(pairs), dtype=torch.long)
        t_ids = torch.tensor([pairs[i] for i in s_ids.tolist()], dtype=torch.long)
        return cls(s_ids, t_ids, n_s, n_t)


def _same_decoder(a, b) -> bool:
    """Whether two fast tokenizers turn token strings into text the same way (e.g. both byte-level BPE)."""
    try:
        decoders = [json.loads(t.backend_tokenizer.to_str()).get("decoder") for t in (a, b)]
    except (AttributeError, ValueError):
        return False
    return decoders[0] is not None and decoders[0] == decoders[1]


def _complement(ids: torch.Tensor, size: int) -> torch.Tensor:
    keep = torch.ones(size, dtype=torch.bool)
    keep[ids] = False
    return keep.nonzero().squeeze(-1)


def token_texts(tokenizer) -> dict[str, int]:
    """{text the token adds after an ordinary word: id} for the non-special tokens whose text is unique.

    The text comes from the tokenizer's own decoder: decode([anchor, id]) minus decode([anchor]), so that a
    word-initial WordPiece token reads " word", a continuation "##ing" reads "ing", and a byte-level BPE token
    "Ġword" reads " word". Tokens that decode to nothing, to a replacement character (partial UTF-8) or to a text
    another token shares are left out.

    Args:
        tokenizer: a tokenizer with `batch_decode` (any transformers tokenizer).
    """
    anchor = tokenizer("a", add_special_tokens=False)["input_ids"][:1]
    special = set(tokenizer.all_special_ids)
    ids = [i for i in range(len(tokenizer)) if i not in special]
    head = tokenizer.decode(anchor)
    decoded = tokenizer.batch_decode([anchor + [i] for i in ids])
    seen: dict[str, int] = {}
    clashes = set()
    for i, text in zip(ids, decoded):
        if not text.startswith(head):
            continue
        text = text[len(head) :]
        if not text or "\ufffd" in text:
            continue
        if text in seen:
            clashes.add(text)
        seen[text] = i
    return {text: i for text, i in seen.items() if text not in clashes}


def hybrid_per_position(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    vocab_map: VocabularyMap,
    temperature: float,
    divergence: str = "forward_kl",
    **params: float,
) -> torch.Tensor:
    """The hybrid loss at temperature T, T^2-scaled: (N,).

    With p_s, p_t the two distributions at T (over each tokenizer's ids), S the shared tokens (`vocab_map`):
    divergence(student, teacher) on the coarsened distributions [p(S), p(everything else)] (the registry's
    function, the rest bin floored at float32 eps, left out when both sides have no other token), plus ULD's
    sorted L1 between the probabilities of the unshared tokens of each side.

    Args:
        student_logits: (N, >= vocab_map.student_size) raw student logits at the paired positions.
        teacher_logits: (N, >= vocab_map.teacher_size) raw teacher logits at the paired positions.
        vocab_map: the shared tokens (`VocabularyMap.from_tokenizers`).
        temperature: T > 0.
        divergence: a name of `losses.DIVERGENCES`; `params` are its own (jsd_beta, skew_alpha).
    """
    fn = losses.DIVERGENCES.get(divergence)
    if fn is None:
        raise ValueError(
            f"cross_tokenizer='hybrid' needs a distribution divergence from {list(losses.DIVERGENCES)}, "
            f"got {divergence!r}."
        )
    m = vocab_map
    s, t = student_logits[:, : m.student_size], teacher_logits[:, : m.teacher_size]  # padding rows are no tokens
    log_ps = F.log_softmax(s.float() / temperature, dim=-1)  # (N, Vs)
    log_pt = F.log_softmax(t.float() / temperature, dim=-1)  # (N, Vt)
    dev = log_ps.device
    shared_s, shared_t = log_ps[:, m.student_ids.to(dev)], log_pt[:, m.teacher_ids.to(dev)]  # (N, |S|)
    rest_s_ids, rest_t_ids = m.student_rest.to(dev), m.teacher_rest.to(dev)
    if rest_s_ids.numel() == 0 and rest_t_ids.numel() == 0:
        return fn(shared_s, shared_t, **params) * temperature**2
    floor = math.log(torch.finfo(torch.float32).eps)
    rest_s, rest_t = log_ps[:, rest_s_ids], log_pt[:, rest_t_ids]  # (N, Vs - |S|), (N, Vt - |S|)
    bin_s = _log_mass(rest_s, floor)  # (N, 1)
    bin_t = _log_mass(rest_t, floor)
    shared = fn(torch.cat([shared_s, bin_s], -1), torch.cat([shared_t, bin_t], -1), **params)  # (N,)
    return (shared + sorted_l1(rest_s.exp(), rest_t.exp())) * temperature**2


def _log_mass(log_p: torch.Tensor, floor: float) -> torch.Tensor:
    """log of the summed probability of the columns of log_p (N, K) -> (N, 1), at least `floor`."""
    if log_p.shape[-1] == 0:
        return log_p.new_full((log_p.shape[0], 1), floor)
    return torch.logsumexp(log_p, dim=-1, keepdim=True).clamp_min(floor)


def registry_per_position(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    divergence: str,
    vocab_limit: int | None = None,
    **params: float,
) -> torch.Tensor:
    """The same-tokenizer soft loss per position (N,): the registry's divergence at T, T^2-scaled ("mse": raw).

    Args:
        student_logits: (N, V) raw student logits; teacher_logits: (N, V) raw teacher logits (same vocabulary).
        temperature: T > 0.
        divergence: a name of `losses.DIVERGENCES` or `losses.LOGIT_DIVERGENCES`; `params` are its own.
        vocab_limit: compare the first `vocab_limit` entries only (vocabulary padding), or None for all.
    """
    if vocab_limit is not None:
        student_logits, teacher_logits = student_logits[:, :vocab_limit], teacher_logits[:, :vocab_limit]
    if divergence in losses.LOGIT_DIVERGENCES:
        return losses.LOGIT_DIVERGENCES[divergence](student_logits.float(), teacher_logits.float(), **params)
    log_ps = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_pt = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return losses.DIVERGENCES[divergence](log_ps, log_pt, **params) * temperature**2


# ---- alignment ----------------------------------------------------------------------------------------------


def align_ends(student_ends: list[int], teacher_ends: list[int]) -> dict[int, int]:
    """{student position: teacher position} of the positions whose consumed text ends at the same character.

    `*_ends[i]` is the character where the text read through position i ends (-1: a position never paired,
    such as a trailing end token). Where several positions of one side end at the same character (a character
    cut into several byte tokens), the last one is used: it has read the whole character.

    Args:
        student_ends: per student position of one row, the character its text ends at, or -1.
        teacher_ends: the same for the teacher's positions of that row.
    """
    last_t = {}
    for j, end in enumerate(teacher_ends):
        if end >= 0:
            last_t[end] = j
    last_s = {}
    for i, end in enumerate(student_ends):
        if end >= 0:
            last_s[end] = i
    return {i: last_t[end] for end, i in last_s.items() if end in last_t}


def _special_edges(ids: list[int], special: set[int]) -> tuple[int, int]:
    """(number of leading, number of trailing) special tokens of a row."""
    lead = 0
    while lead < len(ids) and ids[lead] in special:
        lead += 1
    trail = 0
    while trail < len(ids) - lead and ids[len(ids) - 1 - trail] in special:
        trail += 1
    return lead, trail


class TokenAligner:
    """Adds each row's teacher tokens and the teacher position aligned with every student position to a batch.

    `teacher_tokenizers[k]` is teacher k's tokenizer, or None when it is the student's (identity alignment).
    Keys added: `teacher_input_ids` / `teacher_attention_mask` (B, Lt), each row tokenized for its own teacher
    (`teacher_index`, default teacher 0), right-padded; `teacher_position` (B, Ls): the teacher position paired
    with each student position whose soft loss counts, else -1 (read by `lm_data.soft_token_mask`);
    `aligned_input_ids`, the student ids these were computed from. `max_lengths[k]` cuts teacher k's rows.

    Args:
        student_tokenizer: the student's fast tokenizer (decodes the rows, offsets of its own tokens).
        teacher_tokenizers: per teacher, its fast tokenizer, or None for the student's.
        max_lengths: per teacher, the most tokens it reads (its positions), or None.
    """

    def __init__(self, student_tokenizer, teacher_tokenizers: list, max_lengths: list[int | None] | None = None):
        self.student = student_tokenizer
        self.teachers = list(teacher_tokenizers)
        self.max_lengths = list(max_lengths) if max_lengths is not None else [None] * len(self.teachers)
        self.special = set(student_tokenizer.all_special_ids) if student_tokenizer is not None else set()
        self.unaligned_tokens = 0  # student content tokens whose decoded text re-tokenizes differently (skipped)

    def needs_alignment(self, batch: dict) -> bool:
        """True when the batch carries no alignment or one made for other student tokens (re-sampled)."""
        done = batch.get(ALIGNED_INPUT_IDS)
        ids = batch["input_ids"]
        return not (torch.is_tensor(done) and done.shape == ids.shape and torch.equal(done.to(ids.device), ids))

    def __call__(self, batch: dict) -> dict:
        if is_packed(batch):
            raise ValueError(
                "routed / cross-tokenizer teachers need padded batches (one row per example), not packed "
                "ones; use PromptCompletionCollator(pack=False)."
            )
        ids = batch["input_ids"]  # (B, Ls)
        device = ids.device
        batch = {k: v for k, v in batch.items() if k not in ALIGNMENT_KEYS}
        soft = soft_token_mask(batch)
        soft = torch.ones_like(ids, dtype=torch.bool) if soft is None else soft.bool()
        mask = batch.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else mask
        teacher = batch.get(TEACHER_INDEX)
        teacher = [0] * ids.shape[0] if teacher is None else teacher.tolist()
        rows = [r[m.bool()].tolist() for r, m in zip(ids.cpu(), mask.cpu())]  # real tokens (right padding)
        t_rows, pairs = self._teacher_rows(rows, teacher)
        width = max(len(r) for r in t_rows)
        t_ids = torch.zeros(len(rows), width, dtype=torch.long)  # (B, Lt)
        t_mask = torch.zeros_like(t_ids)
        position = torch.full(ids.shape, -1, dtype=torch.long)  # (B, Ls)
        soft_rows = soft.cpu().tolist()
        for b, (row, paired) in enumerate(zip(t_rows, pairs)):
            t_ids[b, : len(row)] = torch.tensor(row, dtype=torch.long)
            t_mask[b, : len(row)] = 1
            for i, j in paired.items():
                if soft_rows[b][i]:
                    position[b, i] = j
        return {
            **batch,
            TEACHER_INPUT_IDS: t_ids.to(device),
            TEACHER_ATTENTION_MASK: t_mask.to(device),
            TEACHER_POSITION: position.to(device),
            ALIGNED_INPUT_IDS: ids,
        }

    def _teacher_rows(self, rows: list[list[int]], teacher: list[int]) -> tuple[list, list[dict[int, int]]]:
        """Per row, its teacher's tokens (cut to that teacher's max length) and {student pos: teacher pos}."""
        t_rows, pairs = [None] * len(rows), [{} for _ in rows]
        for k, tok in enumerate(self.teachers):
            members = [b for b, t in enumerate(teacher) if t == k]
            if not members:
                continue
            if tok is None:
                for b in members:
                    t_rows[b], pairs[b] = rows[b], {i: i for i in range(len(rows[b]))}
            else:
                for b, (t_ids, paired) in zip(members, self._cross_rows([rows[b] for b in members], tok)):
                    t_rows[b], pairs[b] = t_ids, paired
            limit = self.max_lengths[k]
            for b in members:
                if limit is not None and len(t_rows[b]) > limit:
                    t_rows[b] = t_rows[b][:limit]
                    pairs[b] = {i: j for i, j in pairs[b].items() if j < limit}
        return t_rows, pairs

    def _cross_rows(self, rows: list[list[int]], teacher_tokenizer) -> list[tuple[list[int], dict[int, int]]]:
        """For student rows (real tokens): the teacher's tokens of the same text and the aligned positions."""
        edges = [_special_edges(r, self.special) for r in rows]
        contents = [r[lead : len(r) - trail] for r, (lead, trail) in zip(rows, edges)]
        texts = self.student.batch_decode(contents, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        s_enc = self.student(texts, add_special_tokens=False, return_offsets_mapping=True)
        t_enc = teacher_tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        t_bos, t_end = getattr(teacher_tokenizer, "bos_token_id", None), end_token_id(teacher_tokenizer)
        out = []
        for b, (row, (lead, trail)) in enumerate(zip(rows, edges)):
            content, again = contents[b], s_enc["input_ids"][b]
            same = 0  # the student's ids re-tokenize to themselves up to here; later positions are skipped
            while same < min(len(content), len(again)) and content[same] == again[same]:
                same += 1
            self.unaligned_tokens += len(content) - same
            s_ends = [0] * lead + [end for _, end in s_enc["offset_mapping"][b][:same]]
            s_ends += [-1] * (len(row) - len(s_ends))
            t_content = list(t_enc["input_ids"][b])
            t_lead = [t_bos] if lead and t_bos is not None else []
            t_ids = t_lead + t_content + ([t_end] if trail and t_end is not None else [])
            t_ends = [0] * len(t_lead) + [end for _, end in t_enc["offset_mapping"][b]]
            t_ends += [-1] * (len(t_ids) - len(t_ends))
            out.append((t_ids, align_ends(s_ends, t_ends)))
        return out


def realigned_batches(aligner: TokenAligner, batches):
    """Yield each batch, aligned again when its student tokens changed (completions sampled after collation).

    Args:
        aligner: the `TokenAligner` of the run.
        batches: an iterator of collated batches.
    """
    for batch in batches:
        yield aligner(batch) if aligner.needs_alignment(batch) else batch


# ---- the soft loss over aligned pairs, per teacher ----------------------------------------------------------


class AlignedSoftLoss:
    """The soft term over (student position, teacher position) pairs, each row scored by its own teacher.

    `mode`: None (same tokenizer: the registry divergence, `vocab_limit` applied), "uld" or "hybrid"
    (`vocab_maps[k]` for teacher k). soft = sum over pairs / number of pairs (the batch's `soft_token_mask`);
    per teacher k, the part of it that comes from its rows is logged as teacher{k}_soft_loss (they sum to
    soft_loss) with its pairs as teacher{k}_tokens.

    Args:
        n_teachers: the number of teachers.
        mode: None, "uld" or "hybrid".
        temperature: T > 0; divergence / params: the registry divergence and its parameters (None / "hybrid").
        vocab_maps: per teacher, its `VocabularyMap` (cross-tokenizer modes).
        vocab_limit: the shared tokenizer's size when the logits carry padding rows (mode None).
    """

    def __init__(
        self,
        n_teachers: int,
        mode: str | None,
        temperature: float,
        divergence: str,
        params: dict,
        vocab_maps: list | None = None,
        vocab_limit: int | None = None,
    ):
        if mode not in (None, *CROSS_TOKENIZER_MODES):
            raise ValueError(f"cross_tokenizer must be one of {CROSS_TOKENIZER_MODES} or unset, got {mode!r}.")
        self.n_teachers, self.mode, self.temperature = n_teachers, mode, temperature
        self.divergence, self.params = divergence, params
        self.vocab_maps = vocab_maps or [None] * n_teachers
        self.vocab_limit = vocab_limit

    # -- which rows and positions each teacher scores

    def rows(self, inputs: dict, k: int) -> torch.Tensor:
        """(B_k,) the batch rows routed to teacher k."""
        ids = inputs["input_ids"]
        index = inputs.get(TEACHER_INDEX)
        if index is None:
            return torch.arange(ids.shape[0], device=ids.device) if k == 0 else ids.new_zeros(0)
        return (index.to(ids.device) == k).nonzero().squeeze(-1)

    def teacher_inputs(self, inputs: dict, k: int) -> dict | None:
        """Teacher k's forward inputs: its tokens of its rows, cut to their longest row; None without rows."""
        rows = self.rows(inputs, k)
        if rows.numel() == 0:
            return None
        mask = inputs[TEACHER_ATTENTION_MASK][rows]  # (B_k, Lt)
        width = max(int(mask.sum(1).max()), 1)
        return {"input_ids": inputs[TEACHER_INPUT_IDS][rows, :width], "attention_mask": mask[:, :width]}

    def pairs(self, inputs: dict, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher k's pairs: batch row (N_k,), student position (N_k,), row among its rows (N_k,), teacher pos."""
        rows = self.rows(inputs, k)
        position = inputs[TEACHER_POSITION][rows]  # (B_k, Ls)
        local, s_pos = (position >= 0).nonzero(as_tuple=True)
        return rows[local], s_pos, local, position[local, s_pos]

    # -- the loss of gathered rows

    def pair_loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, k: int) -> torch.Tensor:
        """Sum over the N pairs of the per-position loss; student (N, Vs), teacher (N, Vt) logits."""
        T = self.temperature
        if self.mode == "uld":
            s = student_logits if self.vocab_maps[k] is None else student_logits[:, : self.vocab_maps[k].student_size]
            t = teacher_logits if self.vocab_maps[k] is None else teacher_logits[:, : self.vocab_maps[k].teacher_size]
            return uld_per_position(s, t, T).sum()
        if self.mode == "hybrid":
            return hybrid_per_position(
                student_logits, teacher_logits, self.vocab_maps[k], T, self.divergence, **self.params
            ).sum()
        return registry_per_position(
            student_logits, teacher_logits, T, self.divergence, self.vocab_limit, **self.params
        ).sum()

    def full_loss(self, inputs: dict, student_logits: torch.Tensor, teacher_outputs: list):
        """(soft loss, per-teacher logs) from full logits: student (B, Ls, Vs), teacher k's (B_k, Lt, Vt)."""
        total, logs, count = student_logits.float().sum() * 0.0, {}, 0
        sums = []
        for k, out in enumerate(teacher_outputs):
            if out is None:
                sums.append((student_logits.new_zeros(()), 0))
                continue
            rows, s_pos, local, t_pos = self.pairs(inputs, k)
            value = self.pair_loss(student_logits[rows, s_pos], out["logits"][local, t_pos], k)
            sums.append((value, rows.numel()))
            total, count = total + value, count + rows.numel()
        soft = total / max(count, 1)
        for k, (value, n) in enumerate(sums):
            logs[f"teacher{k}_soft_loss"] = value.detach().float() / max(count, 1)
            logs[f"teacher{k}_tokens"] = torch.tensor(float(n))
        return soft, logs

    def chunked_loss(
        self,
        inputs: dict,
        student_hidden: torch.Tensor,
        teacher_hidden: list,
        student_head: OutputHead,
        teacher_heads: list[OutputHead],
        chunk_size: int,
        w_soft: float,
        w_hard: float,
    ):
        """(weighted soft + hard loss, soft mean, hard mean or None, per-teacher logs) from last hidden states.

        student_hidden (B, Ls, H); teacher_hidden[k] (B_k, Lt, H_t) of teacher k's rows (None without rows).
        `w_soft` / `w_hard` are the terms' weights (times their token scales); the soft term is a mean over this
        batch's pairs, the hard one over its next-token labels, as on the full-logits path.
        """
        labels = inputs.get("labels")
        B, L = student_hidden.shape[:2]
        next_labels = None
        if torch.is_tensor(labels) and not bool((labels == IGNORE_INDEX).all()):
            next_labels = shifted_labels(labels).reshape(-1)  # (B * L,)
        groups, n_soft = [], 0
        for k in range(len(teacher_heads)):
            if teacher_hidden[k] is None or not w_soft:
                continue
            rows, s_pos, local, t_pos = self.pairs(inputs, k)
            groups.append((k, rows * L + s_pos, teacher_hidden[k][local, t_pos]))  # (N_k,), (N_k, H_t)
            n_soft += rows.numel()
        n_hard = int((next_labels != IGNORE_INDEX).sum()) if next_labels is not None else 0
        plan = _Plan(
            self, groups, teacher_heads, next_labels, w_soft / max(n_soft, 1), w_hard / max(n_hard, 1), chunk_size
        )
        flat = student_hidden.reshape(B * L, -1)  # (B * L, H)
        loss, soft_sums, hard_sum = _AlignedHeadLoss.apply(
            flat, student_head.weight, student_head.bias, student_head, plan
        )
        logs = {}
        for k in range(len(teacher_heads)):
            logs[f"teacher{k}_soft_loss"] = soft_sums[k] / max(n_soft, 1)
            logs[f"teacher{k}_tokens"] = torch.tensor(float(sum(g[1].numel() for g in groups if g[0] == k)))
        soft = soft_sums.sum() / max(n_soft, 1)
        hard = hard_sum / n_hard if n_hard else None
        return loss, soft, hard, logs


@dataclass
class _Plan:
    loss: AlignedSoftLoss
    groups: list  # (teacher k, flat student positions (N_k,), teacher hidden rows (N_k, H_t))
    teacher_heads: list
    next_labels: torch.Tensor | None  # (B * L,)
    soft_scale: float
    hard_scale: float
    chunk_size: int


def _needed_rows(n: int, plan, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(R,) the student positions (of n) paired with a teacher position or carrying a counted next-token label,
    and (n,) each position's index among them (-1: not needed)."""
    wanted = torch.zeros(n, dtype=torch.bool, device=device)
    for _, flat, _ in plan.groups:
        wanted[flat] = True
    if plan.next_labels is not None and plan.hard_scale:
        wanted |= plan.next_labels.to(device) != IGNORE_INDEX
    rows = wanted.nonzero().squeeze(-1)  # (R,)
    slot = torch.full((n,), -1, dtype=torch.long, device=device)
    slot[rows] = torch.arange(rows.numel(), device=device)
    return rows, slot


def _chunk_loss(
    z: torch.Tensor,
    start: int,
    stop: int,
    rows: torch.Tensor,
    groups: list,
    plan,
    soft_sums: torch.Tensor,
    hard_sum: torch.Tensor,
) -> torch.Tensor:
    """The scaled loss of the student logits `z` (n, V) of rows[start:stop]; adds the detached pair losses to
    `soft_sums` (per teacher) and the cross-entropy sum to `hard_sum` in place."""
    total = z.new_zeros((), dtype=torch.float32)
    for k, where, h_t in groups:
        inside = (where >= start) & (where < stop)
        if not bool(inside.any()):
            continue
        t_head = plan.teacher_heads[k]
        with torch.no_grad():
            tw = t_head.weight.to(h_t.dtype)
            tb = None if t_head.bias is None else t_head.bias.to(h_t.dtype)
            t_logits = t_head.finish(F.linear(h_t[inside], tw, tb))  # (n_k, V_t)
        value = plan.loss.pair_loss(z[where[inside] - start], t_logits, k)
        soft_sums[k] += value.detach()
        total = total + plan.soft_scale * value
    if plan.next_labels is not None and plan.hard_scale:
        y = plan.next_labels.to(z.device)[rows[start:stop]]
        hard = F.cross_entropy(z.float(), y, ignore_index=IGNORE_INDEX, reduction="sum")
        hard_sum += hard.detach()
        total = total + plan.hard_scale * hard
    return total


class _AlignedHeadLoss(torch.autograd.Function):
    """loss = soft_scale * sum of pair losses + hard_scale * next-token cross-entropy, from student hidden rows.

    As in `hf_distill.chunked`, the student's logits exist one chunk of rows at a time and the gradients with
    respect to (hidden, weight, bias) are formed chunk by chunk during the forward; the backward scales them.
    Rows are the student positions that are paired with a teacher position or carry a next-token label.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, head, plan):
        device = hidden.device
        rows, slot = _needed_rows(hidden.shape[0], plan, device)  # (R,) positions whose logits are needed, (N,)
        dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else weight.dtype
        w = weight.detach().to(dtype)
        b = None if bias is None else bias.detach().to(dtype)
        g_hidden = torch.zeros_like(hidden) if hidden.requires_grad else None
        g_weight = torch.zeros(w.shape, dtype=torch.float32, device=device) if weight.requires_grad else None
        g_bias = (
            torch.zeros(w.shape[0], dtype=torch.float32, device=device)
            if b is not None and bias.requires_grad
            else None
        )
        n_teachers = len(plan.teacher_heads)
        soft_sums = torch.zeros(n_teachers, dtype=torch.float32, device=device)
        hard_sum = torch.zeros((), dtype=torch.float32, device=device)
        groups = [(k, slot[flat], h_t) for k, flat, h_t in plan.groups]  # pair -> index among `rows`
        with torch.autocast(device.type, enabled=False):
            for start in range(0, rows.numel(), plan.chunk_size):
                stop = min(start + plan.chunk_size, rows.numel())
                h = hidden[rows[start:stop]].detach().to(dtype)  # (n, H)
                with torch.enable_grad():
                    raw = F.linear(h, w, b).requires_grad_(True)  # (n, V): the only student logits alive
                    z = head.finish(raw)
                    total = _chunk_loss(z, start, stop, rows, groups, plan, soft_sums, hard_sum)
                    g_raw = torch.autograd.grad(total, raw)[0] if total.requires_grad else None
                if g_raw is None:
                    continue
                g = g_raw.to(dtype)
                if g_hidden is not None:
                    g_hidden[rows[start:stop]] = (g @ w).to(g_hidden.dtype)
                if g_weight is not None:
                    g_weight += (g.t() @ h).float()
                if g_bias is not None:
                    g_bias += g_raw.float().sum(0)
        ctx.grads = [g_hidden, g_weight, g_bias]
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(soft_sums, hard_sum)
        loss = plan.soft_scale * soft_sums.sum() + plan.hard_scale * hard_sum
        return loss, soft_sums, hard_sum

    @staticmethod
    def backward(ctx, grad_loss, _grad_soft, _grad_hard):
        out = [None if g is None else g.mul_(grad_loss).to(dtype) for g, dtype in zip(ctx.grads, ctx.dtypes)]
        ctx.grads = None
        return (*out, None, None)
