"""Training schedules built from DistillationArguments: two-stage distillation and the hard-label baseline.

- Two-stage distillation (TinyBERT, Jiao et al. 2020): the student first learns the teacher's
  intermediate layers (hidden states, and attention maps when `attention_weight > 0`), then its
  predictions (soft targets + labels). `two_stage_arguments` returns the two argument sets; run the
  same DistillationTrainer twice, the second run starting from the first's student.
- The hard-label baseline (`hard_baseline_arguments`): the same student, the same seed and the same
  number of optimizer steps, trained on the labels alone, which is what "distillation bought +x points"
  must be measured against.

The user's arguments are never modified: new copies are returned (`dataclasses.replace`).
"""

from __future__ import annotations

import dataclasses
import os

from .config import DistillationArguments

# On-policy settings that only make sense with lmbda > 0: off in the baseline (where the arguments have them).
ON_POLICY_OFF = {"lmbda_start_step": 0, "lmbda_warmup_steps": 0, "on_policy_divergence": None}


def two_stage_arguments(
    args: DistillationArguments,
    intermediate_epochs: float | None = None,
    intermediate_weight: float | None = None,
    intermediate_steps: int | None = None,
) -> tuple[DistillationArguments, DistillationArguments]:
    """(stage 1, stage 2) arguments: intermediate-layer distillation only, then prediction-layer distillation only.

    Stage 1: soft and hard weights 0, hidden weight `intermediate_weight` (default: args.hidden_weight,
    or 1.0 when that is 0), attention weight kept, `intermediate_steps` steps or else `intermediate_epochs`
    epochs (default: args' epochs), no best-checkpoint selection (stage 2 selects), output in
    `<output_dir>/stage1`. Stage 2: args' soft/hard weights and budget, hidden and attention weights 0.
    """
    if args.soft_weight == 0 and args.hard_weight == 0:
        raise ValueError("two-stage distillation needs soft_weight or hard_weight > 0 for its prediction stage.")
    weight = intermediate_weight if intermediate_weight is not None else (args.hidden_weight or 1.0)
    if weight <= 0:
        raise ValueError(f"intermediate_weight must be > 0 (the hidden-state loss of stage 1), got {weight}.")
    epochs = args.num_train_epochs if intermediate_epochs is None else intermediate_epochs
    if not epochs > 0:
        raise ValueError(f"intermediate_epochs must be > 0, got {epochs}.")
    if intermediate_steps is not None and intermediate_steps < 1:
        raise ValueError(f"intermediate_steps must be >= 1, got {intermediate_steps}.")
    stage1 = dataclasses.replace(
        args,
        soft_weight=0.0,
        hard_weight=0.0,
        hidden_weight=weight,
        num_train_epochs=epochs,
        max_steps=intermediate_steps or -1,
        output_dir=os.path.join(args.output_dir, "stage1"),
        metric_for_best_model=None,
        load_best_model_at_end=False,
    )
    stage2 = dataclasses.replace(args, hidden_weight=0.0, attention_weight=0.0)
    return stage1, stage2


def two_stage_budget(
    args: DistillationArguments, hidden_share: float
) -> tuple[DistillationArguments, DistillationArguments]:
    """(stage 1, stage 2) arguments (see `two_stage_arguments`) that share `args`' budget: the two stages together
    run `args.max_steps` optimizer steps when it is set (> 0), else `args.num_train_epochs` epochs.

    Args:
        args: the run's arguments; their budget (max_steps, or num_train_epochs) bounds both stages together.
        hidden_share: the hidden-state stage's share of the budget, in (0, 1). With max_steps, stage 1 gets
            round(share * max_steps) steps (at least 1, at most max_steps - 1) and stage 2 the rest.
    """
    if not 0 < hidden_share < 1:
        raise ValueError(f"hidden_share must be in (0, 1), got {hidden_share}.")
    if args.max_steps > 0:
        if args.max_steps < 2:
            raise ValueError(
                f"--max_steps {args.max_steps} cannot be split between the hidden-state stage and the "
                "prediction stage: pass --max_steps 2 or more, or --two_stage no."
            )
        first = min(max(1, round(args.max_steps * hidden_share)), args.max_steps - 1)
        return two_stage_arguments(
            dataclasses.replace(args, max_steps=args.max_steps - first), intermediate_steps=first
        )
    total = args.num_train_epochs
    return two_stage_arguments(
        dataclasses.replace(args, num_train_epochs=total * (1 - hidden_share)),
        intermediate_epochs=total * hidden_share,
    )


def hard_baseline_arguments(args: DistillationArguments, max_steps: int, output_dir: str | None = None):
    """Arguments of the hard-label baseline: `args` (seed, batch, schedule, learning rate) with soft, hidden and
    attention weights 0, hard weight 1, exactly `max_steps` optimizer steps (the distilled run's count), and the
    dataset's own labels (causal LMs: no on-policy or teacher-sampled completions)."""
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1 (the distilled run's optimizer steps), got {max_steps}.")
    return dataclasses.replace(
        args,
        soft_weight=0.0,
        hard_weight=1.0,
        hidden_weight=0.0,
        attention_weight=0.0,
        lmbda=0.0,
        seq_kd=False,
        **{name: value for name, value in ON_POLICY_OFF.items() if hasattr(args, name)},
        max_steps=int(max_steps),
        output_dir=output_dir or os.path.join(args.output_dir, "hard_baseline"),
    )
