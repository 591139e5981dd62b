"""Answer extraction: from a model's whole reply to the answer that metrics compare, kept beside the reply.

A chain is a list of step names. Transforms (`strip_think`, `first_line`) rewrite the text in order;
pickers (`answer_prefix`, `boxed`, `last_number`, `last_word`, `choice`, `regex:PATTERN`) are tried in
order and the first that finds something gives the answer. When none does, the transformed text is the
answer, except with `choice` (multiple choice): then there is no answer (`unmatched`), never a guess.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_THINK = re.compile(r"<think>.*?</think>|^.*?</think>", re.DOTALL)  # a closed block, or an opening lost to truncation
_ANSWER_TAGS = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.DOTALL)  # GLM-4.1V-Thinking: <answer>...</answer>
_BOX_TOKENS = re.compile(r"<\|begin_of_box\|>|<\|end_of_box\|>")
_PREFIX = re.compile(r"(?:final answer\s*[:：]?|the answer is\s*[:：]?|answer\s*[:：])\s*(.+)", re.IGNORECASE | re.DOTALL)
_NUMBER = re.compile(r"-?\d+(?:[.,]\d+)*")
_WORD = re.compile(r"[^\W_]+(?:['-][^\W_]+)*")


def _boxed(text: str) -> str | None:
    """The content of the last \\boxed{...}, braces balanced."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed{") - 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j].strip()
    return None


def _answer_prefix(text: str) -> str | None:
    matches = list(_PREFIX.finditer(text))
    if not matches:
        return None
    return matches[-1].group(1).strip().splitlines()[0].strip().rstrip(".").strip() or None


def _last(pattern: re.Pattern[str]) -> Callable[[str], str | None]:
    return lambda text: (found[-1] if (found := pattern.findall(text)) else None)


def choice(text: str, options: dict[str, str]) -> str | None:
    """The option letter a reply names: the letter alone or marked ("B", "(B)", "B.", "B)", "Answer: B"), or
    the full text of exactly one option; None when neither is there."""
    letters = "".join(sorted(options))
    if not letters:
        return None
    stripped = text.strip()
    marked = re.findall(rf"(?:^|[\s(\[:*])([{letters}])(?:$|[\s).\]:,*])", stripped)
    if len(set(marked)) == 1:
        return marked[0]
    lowered = stripped.lower()
    named = [k for k, v in options.items() if v.strip() and v.strip().lower() in lowered]
    if len(named) == 1:
        return named[0]
    if marked:  # several letters: the first one stated after an answer marker, else none
        after = _answer_prefix(stripped)
        return choice(after, options) if after and after != stripped else None
    return None


def unfinished_think(text: str) -> bool:
    """A reply still inside a thinking block: its last `<think>` is not closed (the token budget ran out)."""
    start = text.rfind("<think>")
    return start >= 0 and text.find("</think>", start) < 0


def _answer_tags(text: str) -> str:
    """The content of the last `<answer>` block (GLM-4.1V-Thinking's answer, its box markers dropped), else the
    text as it is."""
    found = _ANSWER_TAGS.findall(text)
    return _BOX_TOKENS.sub("", found[-1]).strip() if found else text


TRANSFORMS: dict[str, Callable[[str], str]] = {
    "strip_think": lambda text: _THINK.sub("", text).strip(),
    "answer_tags": _answer_tags,
    "first_line": lambda text: next((line.strip() for line in text.splitlines() if line.strip()), ""),
}
PICKERS: dict[str, Callable[[str], str | None]] = {
    "answer_prefix": _answer_prefix,
    "boxed": _boxed,
    "last_number": _last(_NUMBER),
    "last_word": _last(_WORD),
}
STEPS = [*TRANSFORMS, *PICKERS, "choice"]


def check_steps(steps: list[str]) -> list[str]:
    """Raise ValueError naming an unknown step or an invalid regex."""
    for step in steps:
        if step.startswith("regex:"):
            try:
                re.compile(step[len("regex:"):])
            except re.error as err:
                raise ValueError(f"extract step {step!r}: invalid regex ({err})") from None
        elif step not in STEPS:
            raise ValueError(f"unknown extract step {step!r}; known: {', '.join(STEPS)}, regex:PATTERN")
    return steps


def default_steps(options: dict[str, str] | None) -> list[str]:
    """Multiple choice: thinking removed (and the `<answer>` block taken, where there is one), then the option
    letter; otherwise the same, then the text after an "Answer:"-style marker if there is one."""
    return ["strip_think", "answer_tags", "choice"] if options else ["strip_think", "answer_tags", "answer_prefix"]


def extract(text: str, steps: list[str], options: dict[str, str] | None = None) -> tuple[str | None, str]:
    """(answer, how): `how` names the picker that found it, `fallback` (the transformed text), `unmatched`, or
    `truncated` (with `strip_think`: the reply ended inside its thinking, so it holds no answer to score)."""
    if "strip_think" in steps and unfinished_think(text):
        return None, "truncated"
    for step in steps:
        if step in TRANSFORMS:
            text = TRANSFORMS[step](text)
    for step in steps:
        if step in TRANSFORMS:
            continue
        if step == "choice":
            found = choice(text, options or {})
        elif step.startswith("regex:"):
            m = re.search(step[len("regex:"):], text, re.DOTALL)
            found = (m.group(1) if m and m.groups() else m.group(0) if m else None)
        else:
            found = PICKERS[step](text)
        if found is not None:
            return found, step
    return (None, "unmatched") if "choice" in steps else (text, "fallback")
