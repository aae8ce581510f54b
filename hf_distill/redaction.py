"""Secrets kept out of what a run writes: which argument names and values are secrets, and redacted copies of
command lines and of TrainingArguments (the Trainer pickles its arguments into every training_args.bin)."""

from __future__ import annotations

import copy
import dataclasses
import re

# An argument with one of these words in its name (split at "_" / "-") carries a secret; its value is never written.
SECRET_WORDS = {"token", "password", "passwd", "pwd", "secret", "key", "apikey", "credentials", "auth"}
# Values that look like credentials wherever they appear (Hugging Face, OpenAI-style, AWS, GitHub tokens).
SECRET_VALUE = re.compile(
    r"\b(hf_[A-Za-z0-9]{16,}|sk-[A-Za-z0-9_-]{16,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{20,})\b"
)
REDACTED = "REDACTED"


def is_secret_name(name: str) -> bool:
    """Whether an argument called `name` ('hub_token', '--wandb-api-key') holds a secret."""
    name = name.lstrip("-").split("=", 1)[0].lower()
    return bool(SECRET_WORDS.intersection(re.split(r"[_-]", name)))


def redact_value(value):
    """`value` with every token-shaped substring replaced by REDACTED; lists, tuples and dicts are copied through."""
    if isinstance(value, str):
        return SECRET_VALUE.sub(REDACTED, value)
    if isinstance(value, dict):
        return {k: None if isinstance(k, str) and is_secret_name(k) else redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_value(v) for v in value)
    return value


def redacted_args(args):
    """A copy of the dataclass `args` (TrainingArguments) safe to write to disk: fields named like a secret
    (`hub_token`, ...) are None, token-shaped text in any other field (a `run_name` holding a token) is REDACTED.
    `args` itself is not changed (the Trainer still pushes with its token)."""
    safe = copy.copy(args)  # not dataclasses.replace: __post_init__ would run again (devices, warnings)
    for f in dataclasses.fields(args):
        value = getattr(args, f.name)
        if value is None or isinstance(value, (bool, int, float)):
            continue
        clean = None if is_secret_name(f.name) and isinstance(value, str) else redact_value(value)
        if clean is not value and clean != value:
            object.__setattr__(safe, f.name, clean)
    return safe
