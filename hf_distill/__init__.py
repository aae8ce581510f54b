"""hf_distill: knowledge distillation for Hugging Face Transformers models."""

from .cache import cache_teacher_outputs
from .config import DistillationArguments
from .evaluation import GenerationEvalCallback, evaluate_generation
from .layers import init_student_from_teacher, uniform_layer_map
from .lm_data import PromptCompletionCollator, tokenize_prompt_completion
from .losses import (
    DIVERGENCES,
    divergence_loss,
    ensemble_log_probs,
    hidden_state_loss,
    logit_mse_loss,
    soft_target_loss,
    teacher_log_probs,
    topk_divergence_loss,
    topk_soft_target_loss,
)
from .model_card import render_model_card, save_model_card
from .objective import DistillationObjective, LogitsPair, TopKTargets
from .trainer import DistillationTrainer, NonFiniteLossError

__version__ = "0.1.0"

__all__ = [
    "DIVERGENCES",
    "DistillationArguments",
    "DistillationObjective",
    "DistillationTrainer",
    "GenerationEvalCallback",
    "LogitsPair",
    "NonFiniteLossError",
    "PromptCompletionCollator",
    "TopKTargets",
    "cache_teacher_outputs",
    "divergence_loss",
    "ensemble_log_probs",
    "evaluate_generation",
    "hidden_state_loss",
    "init_student_from_teacher",
    "logit_mse_loss",
    "render_model_card",
    "save_model_card",
    "soft_target_loss",
    "teacher_log_probs",
    "tokenize_prompt_completion",
    "topk_divergence_loss",
    "topk_soft_target_loss",
    "uniform_layer_map",
]
