"""Old home of the transfer-set helpers, kept importable: they live in `hf_distill.mixing`."""

from .mixing import UNLABELLED, label_with_teacher, mark_unlabelled

__all__ = ["UNLABELLED", "label_with_teacher", "mark_unlabelled"]
