"""A dataset's samples as a run reads them: from its file, the easy-vqa built-in or a named dataset (chosen
here, above the readers of `data/datasets.py` and `data/named.py`), with duplicate ids refused, the dataset's
system prompt and few-shot examples given to each sample, then seeded shuffling and limits."""

from __future__ import annotations

import random
from pathlib import Path

from evalfleet.config import DatasetConfig
from evalfleet.data.datasets import DatasetError, MediaResolver, easy_vqa_samples, file_samples, sample_from_row
from evalfleet.data.named import named_samples
from evalfleet.prompts import plain_layout
from evalfleet.records import Sample


def _few_shot_examples(cfg: DatasetConfig) -> list[tuple[str, str]]:
    """(user message, answer) of each few-shot example, rendered like the dataset's questions."""
    fs = cfg.few_shot
    assert fs is not None
    if fs.path is not None:
        examples = file_samples(cfg.model_copy(update={"path": fs.path, "format": "auto"}))
    else:
        where = Path(f"dataset {cfg.name} few_shot.examples")
        resolve = MediaResolver(Path.cwd(), base64_only=False)
        examples = [sample_from_row(cfg, where, "jsonl", i, row, resolve) for i, row in enumerate(fs.examples or [], 1)]
    examples = examples[: fs.n]
    for ex in examples:
        problem = ex.error
        if not problem and ex.images:
            problem = f"{ex.source}:{cfg.fields.image}: few-shot examples are text only"
        if not problem and not ex.answers:
            problem = f"{ex.source}:{cfg.fields.answer}: missing answer"
        if problem:
            raise DatasetError(f"dataset {cfg.name!r}: few-shot example {problem}")
    if fs.n is not None and len(examples) < fs.n:
        raise DatasetError(f"dataset {cfg.name!r}: few_shot.n is {fs.n} but there are only {len(examples)} examples")
    return [(ex.prompt, ex.answers[0]) for ex in examples]


def _add_context(cfg: DatasetConfig, samples: list[Sample]) -> None:
    """Give each sample the dataset's system prompt and few-shot examples (as chat turns, or in its prompt)."""
    context = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
    turns = [{"role": role, "content": text} for example in (_few_shot_examples(cfg) if cfg.few_shot else [])
             for role, text in zip(("user", "assistant"), example)]
    prefix = ""
    if cfg.few_shot is not None and not cfg.few_shot.multiturn:
        prefix = plain_layout(turns)
    else:
        context += turns
    if not context and not prefix:
        return  # nothing to give (a million samples: no loop for nothing)
    for s in samples:
        if not s.error:
            s.context = context
            s.prompt = prefix + s.prompt


def _refuse_duplicate(cfg: DatasetConfig, samples: list[Sample]) -> None:
    """Raise for the first sample whose id an earlier one has, naming where both are."""
    seen: dict[str, str] = {}
    for s in samples:
        if s.id in seen:
            raise DatasetError(f"dataset {cfg.name!r}: duplicate sample id {s.id!r} at {s.source} "
                               f"(first at {seen[s.id]})")
        seen[s.id] = s.source


def load_samples(cfg: DatasetConfig, *, seed: int, limit: int | None = None) -> list[Sample]:
    """All samples of one dataset after seeded shuffling and limits; raises DatasetError if unreadable."""
    if cfg.builtin in (None, "easy-vqa"):
        samples = easy_vqa_samples(cfg) if cfg.builtin else file_samples(cfg)
    else:  # the medical VQA sets, from the user's copy
        samples = named_samples(cfg)
    ids = {s.id for s in samples}
    if len(ids) < len(samples):
        _refuse_duplicate(cfg, samples)
    _add_context(cfg, samples)
    if cfg.shuffle:
        random.Random(seed).shuffle(samples)
    for cap in (cfg.limit, limit):
        if cap is not None:
            samples = samples[:cap]
    return samples
