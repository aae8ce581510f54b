"""Several teachers routed per example: a dataset column names each row's teacher; the set-up of paired positions.

With `DistillationArguments.teacher_id_column`, row b is scored by its own teacher only (domain experts: code
from one teacher, chat from another) instead of by the ensemble of all teachers. A teacher is named by its
0-based index in `teacher_model` or by the name / path it was given as. Unknown names are a ValueError at
construction (the train and eval sets are read then). Teachers may speak other tokenizers
(`hf_distill.cross_tokenizer`). `PairedDistillation.build` sets up what both need: the collator that turns the
column into `teacher_index` and aligns the rows, and the soft loss over the aligned pairs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from .cross_tokenizer import (
    TEACHER_INDEX,
    AlignedSoftLoss,
    TokenAligner,
    VocabularyMap,
    realigned_batches,
)

logger = logging.getLogger(__name__)


class TeacherRoutes:
    """Resolves the values of the routing column to teacher indices.

    Args:
        column: the dataset column naming each row's teacher.
        names: per teacher, the name or path it was given as (or None); a row may also name its 0-based index
            or the folder name of that path.
    """

    def __init__(self, column: str, names: list[str | None]):
        self.column = column
        self.names = names
        self._lookup = {}
        for k, name in enumerate(names):
            self._lookup[k] = k
            self._lookup[str(k)] = k
            if name:
                self._lookup.setdefault(str(name), k)
                self._lookup.setdefault(os.path.basename(os.path.normpath(str(name))), k)

    def index(self, value, where: str = "a row") -> int:
        key = value.item() if torch.is_tensor(value) else value
        if isinstance(key, float) and key.is_integer():
            key = int(key)
        if key in self._lookup and not isinstance(key, bool):
            return self._lookup[key]
        known = ", ".join(f"{k} ({n})" if n else str(k) for k, n in enumerate(self.names))
        raise ValueError(
            f"{where} names teacher {value!r} in column {self.column!r}, but the teachers are: {known}. Use a "
            "teacher's 0-based index or the name it was given as, or fix the data."
        )

    def check_dataset(self, dataset, what: str) -> None:
        """Every row of `dataset` must name a known teacher (read once, before training)."""
        if dataset is None:
            return
        columns = getattr(dataset, "column_names", None)
        if columns is not None and self.column not in columns:
            raise ValueError(
                f"teacher_id_column={self.column!r} but {what} has no such column (columns: {sorted(columns)}); add "
                "it (dataset.add_column) or unset teacher_id_column to let every teacher score every row."
            )
        values = dataset[self.column] if columns is not None else [row[self.column] for row in dataset]
        for i, value in enumerate(values):
            self.index(value, where=f"row {i} of {what}")


class PairedCollator:
    """Wraps a collator: turns the routing column into `teacher_index` (B,) and aligns the rows for the teachers.

    The routing values are taken out of the features before the wrapped collator runs (padding collators do not
    take strings). Alignment runs here, in the data loader, once per batch (`TokenAligner`).

    Args:
        collator: the wrapped collator (e.g. `PromptCompletionCollator`, padded).
        routes: the routing column's resolver, or None (one teacher for every row).
        aligner: pairs each row's positions with its teacher's.
    """

    def __init__(self, collator, routes: TeacherRoutes | None, aligner: TokenAligner):
        self.collator, self.routes, self.aligner = collator, routes, aligner

    def __call__(self, features: list[dict]) -> dict:
        teacher = None
        if self.routes is not None:
            column = self.routes.column
            teacher = [self.routes.index(f[column]) for f in features]
            features = [{k: v for k, v in f.items() if k != column} for f in features]
        batch = dict(self.collator(features))
        if teacher is not None:
            batch[TEACHER_INDEX] = torch.tensor(teacher, dtype=torch.long)
        return self.aligner(batch)


@dataclass
class PairedDistillation:
    """What routed and cross-tokenizer distillation add to a trainer: the collator, the aligner, the soft loss."""

    routes: TeacherRoutes | None
    aligner: TokenAligner
    loss: AlignedSoftLoss

    @classmethod
    def build(
        cls,
        args,
        student,
        teachers: list,
        sources: list,
        processing_class,
        teacher_tokenizers: list,
        vocab_limit: int | None,
        datasets: dict,
        cached: bool,
    ) -> PairedDistillation | None:
        """None unless args.cross_tokenizer or args.teacher_id_column; a ValueError for what cannot be combined.

        Args:
            args: the DistillationArguments (cross_tokenizer, teacher_id_column, temperature, divergence, ...).
            student: the student model; teachers: the loaded teachers; sources: what `teacher_model` gave.
            processing_class: the student's tokenizer.
            teacher_tokenizers: per teacher, its tokenizer where it differs from the student's, else None.
            vocab_limit: the shared tokenizer's size when the logits carry padding rows.
            datasets: {name: dataset or {name: dataset}} whose routing column is checked.
            cached: whether the train set carries cached teacher outputs.
        """
        mode, column = args.cross_tokenizer, args.teacher_id_column
        if mode is None and column is None:
            return None
        check_paired(args, student, len(teachers), cached)
        routes = None if column is None else routes_for(column, sources, teachers, datasets)
        maps = None if mode is None else vocabulary_maps(mode, processing_class, teacher_tokenizers)
        lengths = [
            getattr(getattr(t, "config", None), "n_positions", None)
            or getattr(getattr(t, "config", None), "max_position_embeddings", None)
            for t in teachers
        ]
        aligner = TokenAligner(processing_class, teacher_tokenizers, lengths)
        loss = AlignedSoftLoss(
            len(teachers), mode, args.temperature, args.divergence, args.divergence_kwargs(), maps, vocab_limit
        )
        return cls(routes, aligner, loss)

    def collator(self, collator) -> PairedCollator:
        if getattr(collator, "pack", False):
            raise ValueError(
                "cross_tokenizer / teacher_id_column pair the positions of each row with its teacher's, "
                "which packed batches do not keep apart; use padded batches (PromptCompletionCollator("
                "pack=False), no --packing)."
            )
        return PairedCollator(collator, self.routes, self.aligner)

    def batches(self, iterator):
        """The micro-batches of a step, aligned again where their completions were re-sampled (lmbda > 0)."""
        return realigned_batches(self.aligner, iterator)

    def columns(self) -> set[str]:
        """Dataset columns to keep (remove_unused_columns)."""
        return {self.routes.column} if self.routes is not None else set()


def check_paired(args, student, n_teachers: int, cached: bool) -> None:
    """ValueError for what cross_tokenizer / teacher_id_column cannot be combined with.

    Args:
        args: the DistillationArguments.
        student: the student model (a causal LM is needed).
        n_teachers: how many teachers were loaded.
        cached: whether the train set carries cached teacher outputs.
    """
    from .modeling import is_causal_lm

    mode, column = args.cross_tokenizer, args.teacher_id_column
    what = " and ".join(
        x
        for x in (f"cross_tokenizer={mode!r}" if mode else "", f"teacher_id_column={column!r}" if column else "")
        if x
    )
    unsupported = (
        "cached teacher outputs (they hold the teacher's logits at the student's positions only; run the teacher live)"
        if cached
        else "a student that is not a causal LM"
        if not is_causal_lm(student)
        else "hidden-state or attention alignment (hidden_weight / attention_weight > 0: the positions and "
        "widths differ across teachers and tokenizers)"
        if args.hidden_weight > 0 or args.attention_weight > 0
        else "seq_kd (teacher samples are in the teacher's tokens)"
        if args.seq_kd and mode
        else None
    )
    if unsupported:
        raise ValueError(f"{what} cannot be combined with {unsupported}; unset one of them.")
    if column is None and n_teachers > 1:
        raise ValueError(
            f"{what} with {n_teachers} teachers that all score every row (an ensemble) is not supported: "
            "teachers with other vocabularies cannot be averaged. Route each row to one teacher with "
            "teacher_id_column, or distil from one teacher."
        )
    if column is not None and n_teachers < 2:
        logger.warning("teacher_id_column=%r with one teacher: every row must name it.", column)


def routes_for(column: str, sources: list, teachers: list, datasets: dict) -> TeacherRoutes:
    """The `TeacherRoutes` of `column`, with every row of `datasets` checked (a ValueError names a bad one).

    Args:
        column: args.teacher_id_column.
        sources: what `teacher_model` gave (names / paths name their teacher; else its config's name_or_path).
        teachers: the loaded teachers.
        datasets: {name: dataset or {name: dataset}}.
    """
    names = [
        s if isinstance(s, (str, os.PathLike)) else getattr(t, "name_or_path", None) for s, t in zip(sources, teachers)
    ]
    routes = TeacherRoutes(column, [str(n) if n else None for n in names])
    for what_set, ds in datasets.items():
        for name, d in ds.items() if isinstance(ds, dict) else [(what_set, ds)]:
            routes.check_dataset(d, name)
    return routes


def vocabulary_maps(mode: str, processing_class, teacher_tokenizers: list) -> list[VocabularyMap]:
    """Per teacher, the `VocabularyMap` from the student's tokenizer; ValueError unless all are fast tokenizers.

    Args:
        mode: args.cross_tokenizer (for the message).
        processing_class: the student's tokenizer.
        teacher_tokenizers: per teacher, its tokenizer where it differs from the student's, else None.
    """
    if processing_class is None or not getattr(processing_class, "is_fast", False):
        raise ValueError(
            f"cross_tokenizer={mode!r} decodes the student's rows and needs its fast tokenizer (character "
            "offsets) as processing_class."
        )
    for k, tok in enumerate(teacher_tokenizers):
        if tok is not None and not getattr(tok, "is_fast", False):
            raise ValueError(
                f"teacher {k}'s tokenizer is not a fast tokenizer: cross_tokenizer needs "
                "character offsets (return_offsets_mapping); load it with use_fast=True."
            )
    maps = [
        VocabularyMap.from_tokenizers(processing_class, tok if tok is not None else processing_class)
        for tok in teacher_tokenizers
    ]
    for k, m in enumerate(maps):
        if not m.identical:
            logger.info(
                "teacher %d: %d tokens shared with the student's vocabulary (of %d and %d).",
                k,
                len(m),
                m.student_size,
                m.teacher_size,
            )
    return maps
