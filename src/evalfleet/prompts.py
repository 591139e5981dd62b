"""How a sample becomes the text a model reads: the dataset's prompt template and instruction, multiple-choice
layout, and chat messages laid out as plain text for models without a chat template. (The system-prompt
precedence is `backends.Request.messages`; judge templates are `scoring.judge.render_judge_prompt`.)"""

from __future__ import annotations

import string
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from evalfleet.config import DatasetConfig

OPTION_LETTERS = tuple("ABCDEFGHIJ")


MCQ_INSTRUCTION = "Please select the correct answer from the options above."


def mcq_prompt(question: str, row: dict[str, Any], instruction: str | None) -> tuple[str, dict[str, str]]:
    """A multiple-choice question as VLMEvalKit lays it out (hint, question, lettered options, instruction),
    and its options by letter; the question unchanged when the row has no options."""
    options = {k: str(row[k]) for k in OPTION_LETTERS if row.get(k) not in (None, "") and str(row[k]) != "nan"}
    if not options:
        return question, {}
    hint = row.get("hint")
    lines = [f"Hint: {hint}"] if hint not in (None, "", "nan") else []
    lines += [f"Question: {question}", "Options:"] + [f"{k}. {v}" for k, v in options.items()]
    lines.append(instruction or MCQ_INSTRUCTION)
    return "\n".join(lines), options


def user_message(cfg: DatasetConfig, row: dict[str, Any], question: str, mcq: bool) -> str:
    """The prompt template filled from the row, then the instruction (for multiple choice, already in `question`)."""
    text = cfg.prompt.format_map({**row, "question": question})
    return f"{text}\n{cfg.instruction}" if cfg.instruction and not mcq else text


def question_affixes(template: str) -> tuple[str, str] | None:
    """(before, after) when a template names `{question}` alone, once, with no conversion or format: its user message
    is then before + question + after, what `user_message` makes without copying the row (a million rows: ~1 s)."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError:
        return None
    named = [i for i, (_, field, spec, conversion) in enumerate(parts) if field is not None]
    if len(named) != 1 or parts[named[0]][1:] != ("question", "", None):
        return None
    i = named[0]
    return "".join(p[0] for p in parts[: i + 1]), "".join(p[0] for p in parts[i + 1:])


def plain_layout(messages: list[dict[str, str]]) -> str:
    """Chat messages as one text, laid out as lm-evaluation-harness does without a chat template: a system
    message and a blank line, each user message and a space, each assistant message and a blank line."""
    ends = {"system": "\n\n", "user": " ", "assistant": "\n\n"}
    return "".join(m["content"] + ends[m["role"]] for m in messages)
