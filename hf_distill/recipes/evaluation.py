"""Teacher and student evaluated on the same batches: metrics, parameters and inference speed."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from transformers.trainer_pt_utils import get_model_param_count, nested_concat

from ..modeling import forward_params
from ..positions import IGNORE_INDEX


@dataclass
class Comparison:
    """{model name: metrics}, {name: examples/s}, {name: parameter count} for models run on the same batches."""

    metrics: dict[str, dict[str, float]]
    speed: dict[str, float]
    parameters: dict[str, int]

    def side(self, name: str) -> dict:
        """One model's row of the results: its metrics, parameters and examples/s."""
        return {**self.metrics[name], "parameters": self.parameters[name], "examples_per_second": self.speed[name]}

    def speedup(self, fast: str = "student", slow: str = "teacher") -> float:
        return self.speed[fast] / self.speed[slow]


def _accepted(model) -> set[str]:
    base = getattr(model, "module", model)  # DDP / DeepSpeed engine
    base = getattr(base, "student", base)  # a ProjectedStudent (learned projections) passes its inputs on
    return forward_params(base)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _gather(accelerator, x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 2:  # (B, L) token predictions/labels: lengths differ between processes
        x = accelerator.pad_across_processes(x, dim=1, pad_index=IGNORE_INDEX)
    return accelerator.gather_for_metrics(x).cpu()


def _append(done: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
    # token rows of different lengths are padded with -100 (ignored by the metrics)
    return new if done is None else nested_concat(done, new, padding_index=IGNORE_INDEX)


def compare_on_eval(
    trainer, models: dict[str, torch.nn.Module], eval_dataset, metric_fn, parameters: dict[str, int] | None = None
) -> Comparison:
    """Evaluate several models on the same eval batches, predictions gathered across processes.

    Speed is timed per process on its own batches, each model on the same batch one after the other, after
    one warm-up forward each (not timed). `parameters` defaults to the full sizes of the models given (also
    under DeepSpeed ZeRO-3); pass the counts of the bare models when a wrapper adds modules.
    """
    loader = trainer.get_eval_dataloader(eval_dataset)
    accelerator, device = trainer.accelerator, trainer.args.device
    accepted = {name: _accepted(m) for name, m in models.items()}
    preds = dict.fromkeys(models)
    seconds = dict.fromkeys(models, 0.0)
    labels, n_examples, warm = None, 0, False
    for m in models.values():
        m.eval()
    with torch.no_grad():
        for batch in loader:
            batch = trainer._prepare_inputs(batch)
            y = batch.pop("labels")
            for name, model in models.items():
                inputs = {k: v for k, v in batch.items() if k in accepted[name]}
                if not warm:
                    model(**inputs)
                _sync(device)
                start = time.perf_counter()
                logits = model(**inputs)["logits"]  # (B, C), or (B, L, V) for token heads; a ProjectedStudent: dict
                _sync(device)
                seconds[name] += time.perf_counter() - start
                preds[name] = _append(preds[name], _gather(accelerator, logits.argmax(-1)))
            warm = True
            n_examples += len(y)
            labels = _append(labels, _gather(accelerator, y))
    metrics = {name: metric_fn(p.numpy(), labels.numpy()) for name, p in preds.items()}
    speed = {name: n_examples / max(s, 1e-9) for name, s in seconds.items()}
    if parameters is None:
        parameters = {name: get_model_param_count(m, trainable_only=False) for name, m in models.items()}
    return Comparison(metrics, speed, parameters)
