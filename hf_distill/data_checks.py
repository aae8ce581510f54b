"""What a row of text data must hold before it is tokenised: one string per text cell, chat messages as lists of
{"role", "content"} dicts. One home for these checks; the recipes, the cache CLI and `lm_data` call them, so that
non-text values (numbers, lists, structs, None) stop with the file, the row and the column named instead of being
trained on as Python reprs (`str(value)`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

BLANK_POLICIES = ("error", "allowed", "skipped")


def _place(source: str | None, row: int, column: str, flag: str | None) -> str:
    where = f"{source}, " if source else ""
    named = f" (--{flag})" if flag else ""
    return f"{where}row {row} (0-based, header not counted), column {column!r}{named}"


def _shown(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def non_text_reason(value) -> str | None:
    """Why `value` is not one text cell (None when it is a string). Missing values (None / NaN) are not judged here."""
    if isinstance(value, str):
        return None
    if isinstance(value, bool):
        return f"a boolean ({value!r})"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, dict):
        return f"a struct / mapping with keys {sorted(map(str, value))}"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} value(s) ({_shown(value)})"
    return f"a {type(value).__name__} ({_shown(value)})"


def check_text_column(
    values: Iterable, column: str, source: str | None = None, flag: str | None = None, blank: str = "error"
) -> None:
    """Every value of a text column must be one string.

    Args:
        values: the column's values, in row order (e.g. `dataset[column]`).
        column: the column's name (for the message).
        source: where the rows come from, e.g. "--train_file data/train.jsonl" (for the message).
        flag: the argument that names the column, e.g. "text_column" (for the message).
        blank: what an empty / whitespace / None / NaN value means: "error" (it is refused), "allowed" (an empty
            string is kept, None / NaN are refused: e.g. an empty prompt), "skipped" (raw text where blank lines
            separate paragraphs: skipped, but at least one row must hold text).

    Raises:
        ValueError: naming the source, the first bad row, the column and the fix.
    """
    if blank not in BLANK_POLICIES:
        raise ValueError(f"blank must be one of {BLANK_POLICIES}, got {blank!r}.")
    blanks, seen_text = [], False
    for row, value in enumerate(values):
        if _is_missing(value) or (isinstance(value, str) and not value.strip()):
            if blank == "error" or (blank == "allowed" and _is_missing(value)):
                blanks.append(row)
            continue
        reason = non_text_reason(value)
        if reason is not None:
            raise ValueError(
                f"{_place(source, row, column, flag)} holds {reason}, not text: every value of a text column must be "
                f"one string. Point the flag at a text column, or {_text_fix(value)}."
            )
        seen_text = True
    if blank == "skipped" and not seen_text:
        raise ValueError(
            f"{source or 'the data'} has no non-blank text in column {column!r}: nothing to train or evaluate on."
        )
    if blanks:
        _refuse_blanks(blanks, column, source, flag, blank)


def _text_fix(value) -> str:
    """How to turn a non-text cell like `value` into text (for the message)."""
    if isinstance(value, (list, tuple)):
        return "join the list into one string (or, for chat data, use a 'messages' column)"
    if isinstance(value, (int, float)):
        return "store the values as strings (e.g. JSON Lines with quoted values)"
    return "flatten it into one string"


def _refuse_blanks(blanks: list[int], column: str, source: str | None, flag: str | None, blank: str) -> None:
    """The error for the blank rows `blanks` (0-based) of a text column, naming the first ten."""
    shown = ", ".join(str(i) for i in blanks[:10]) + (", ..." if len(blanks) > 10 else "")
    what = "None / NaN (an empty string is fine)" if blank == "allowed" else "empty or NaN"
    raise ValueError(
        f"{len(blanks)} row(s) of {source or 'the data'} have no value in column {column!r}"
        f"{f' (--{flag})' if flag else ''}: {what} at data row(s) {shown} (0-based, header not counted). "
        "Drop or fill those rows."
    )


def check_chat_column(values: Iterable, column: str = "messages", source: str | None = None) -> None:
    """Every value of a chat column must be a list of {"role": str, "content": ...} dicts.

    Args:
        values: the column's values, in row order.
        column: the column's name (for the message).
        source: where the rows come from (for the message).

    Raises:
        ValueError: naming the source, the first bad row, the column and the fix.
    """
    for row, conversation in enumerate(values):
        place = _place(source, row, column, None)
        if not isinstance(conversation, (list, tuple)):
            hint = (
                " It looks like JSON text: parse it (json.loads) into a list before training."
                if isinstance(conversation, str) and conversation.lstrip().startswith("[")
                else ""
            )
            what = (
                f"a string ({_shown(conversation)})"
                if isinstance(conversation, str)
                else non_text_reason(conversation)
            )
            raise ValueError(
                f"{place} holds {what} where chat data needs a list of messages "
                f"[{{'role': ..., 'content': ...}}, ...].{hint} For plain text use 'prompt' / 'completion' columns."
            )
        for i, message in enumerate(conversation):
            if (
                not isinstance(message, dict)
                or not isinstance(message.get("role"), str)
                or message.get("content") is None
            ):
                raise ValueError(
                    f"{place}: message {i} is {_shown(message)}; every message must be a mapping with a string "
                    "'role' and a 'content'. Fix that row or drop it."
                )
