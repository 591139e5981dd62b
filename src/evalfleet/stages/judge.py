"""Judge stages' inputs: requests built from the answering stage's stored answers (the judge template filled,
images attached), the judge cache shared between runs, and the feed that streams answers into a judge that
runs at the same time as its answerer."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from evalfleet.config import StageConfig
from evalfleet.records import ImageRef, Result, Sample
from evalfleet.scoring import score_output
from evalfleet.scoring.judge import render_judge_prompt
from evalfleet.store import JudgeCache, Store


class StageInput(Protocol):
    """What a feed needs of the stage it feeds (`engine.driver.StageDriver`)."""

    def offer(self, chunks: list[list[Sample]], settled: int = 0) -> None: ...

    def close_inputs(self) -> None: ...


def judge_plan_samples(stage: StageConfig, answered: StageConfig, loaded: dict[str, list[Sample]]) -> list[Sample]:
    """Stand-ins for a judge's requests before the answers exist, for its memory estimate: the template
    filled with an answer as long as the answering stage may write (a word per token)."""
    assert stage.prompt is not None
    filler = "word " * answered.model.generation.max_new_tokens if answered.kind == "generate" else "edits/x.png"
    out = []
    for s in (s for samples in loaded.values() for s in samples if s.error is None):
        try:
            prompt = render_judge_prompt(stage.prompt, s, filler)
        except KeyError:
            continue
        images = s.images * (("{image}" in stage.prompt) + ("{edited_image}" in stage.prompt))
        out.append(Sample(s.dataset, s.id, s.question, prompt, s.answers, images, s.source))
    return out


def judge_inputs(
    stage: StageConfig,
    answered: StageConfig,
    loaded: dict[str, list[Sample]],
    store: Store,
    cache: JudgeCache | None,
    answers: dict[str, list[Result]] | None = None,
) -> tuple[dict[str, list[Sample]], set[tuple[str, str]]]:
    """Samples whose prompt is the judge template filled with the `answered` stage's answer.

    `answers`: the answering stage's results just committed, by dataset, passed in memory by a feed; None:
    every answer stored so far (`stored_answers`: a judge after its answerer, or resuming). One the answering
    stage failed, or whose template cannot be filled, gets an error result at this stage instead (once; a
    later run does not redo it); a request judged before is answered from the cache. Returns the requests by
    dataset and the (dataset, id) of the samples given a result here (errors and cache hits).
    """
    assert stage.prompt is not None
    inputs: dict[str, list[Sample]] = {}
    failed: list[Result] = []
    for name, samples in loaded.items():
        by_id = {s.id: s for s in samples}
        judged = inputs.setdefault(name, [])
        for answer in stored_answers(store, answered.name, name) if answers is None else answers.get(name, []):
            if (s := by_id.get(answer.sample_id)) is None:
                continue
            if answer.output is None:
                failed.append(Result(name, s.id, None,
                                     f"nothing to judge: {answered.name} gave no answer ({answer.error})"))
                continue
            try:
                prompt = render_judge_prompt(stage.prompt, s, answer.output)
            except KeyError as err:
                failed.append(Result(name, s.id, None, f"judge prompt names {err}, which samples do not have"))
                continue
            images = s.images if "{image}" in stage.prompt else []
            if "{edited_image}" in stage.prompt:
                edited = store.path.parent / answer.output
                images = images + [ImageRef(f"{edited}:edited_image", path=str(edited))]
            request = Sample(name, s.id, s.question, prompt, s.answers, images, s.source)
            request.metadata["cache_key"] = _cache_key(stage, request)  # computed once: it reads the images
            judged.append(request)
    store.add_results(stage.name, failed)
    hits = _from_cache(stage, inputs, store, cache) if cache is not None else set()
    return inputs, hits | {(r.dataset, r.sample_id) for r in failed}


def stored_answers(store: Store, stage: str, dataset: str) -> list[Result]:
    """The results `stage` stored for `dataset`'s samples, in load order (a sample that could not be read
    counts as answered, with its error)."""
    return [Result(dataset, r["id"], r["prediction"], r["error"]) for r in store.rows(stage, dataset)
            if r["finished"]]


def _cache_key(stage: StageConfig, sample: Sample) -> str:
    """Judge model and decoding settings + rendered prompt + image bytes."""
    h = hashlib.sha256(stage.model.model_dump_json(exclude={"batch_size", "engine"}).encode())
    h.update(sample.prompt.encode())
    for ref in sample.images:
        h.update(ref.data if ref.data is not None else Path(ref.path or "").read_bytes())
    return h.hexdigest()


def _from_cache(
    stage: StageConfig, inputs: dict[str, list[Sample]], store: Store, cache: JudgeCache
) -> set[tuple[str, str]]:
    """Answer judge requests judged before (by any run sharing the cache); returns the (dataset, id) answered."""
    keys = {(s.dataset, s.id): s.metadata["cache_key"] for samples in inputs.values() for s in samples}
    hits = cache.get(list(keys.values()))
    answered = {(ds, sid): hits[k] for (ds, sid), k in keys.items() if k in hits}
    store.add_results(stage.name, [Result(ds, sid, out, worker="cache", score=score_output(out, [], kind="judge",
                                                                                           parse=stage.parse))
                                   for (ds, sid), out in answered.items()])
    return set(answered)


def fill_cache(stage: StageConfig, inputs: dict[str, list[Sample]], store: Store, cache: JudgeCache) -> None:
    """Remember this judge stage's replies for identical requests later."""
    entries = []
    for name, samples in inputs.items():
        replies = {r["id"]: r["prediction"] for r in store.rows(stage.name, name) if r["prediction"] is not None}
        entries += [(s.metadata["cache_key"], replies[s.id]) for s in samples if s.id in replies]
    cache.put(entries)


@dataclass
class JudgeFeed:
    """Streams the answering stage's committed results, passed in memory, into a judge's queue, in chunks of the
    judge's size."""

    stage: StageConfig
    answered: StageConfig
    loaded: dict[str, list[Sample]]
    store: Store
    cache: JudgeCache | None
    judge: StageInput
    chunk_size: int
    inputs: dict[str, list[Sample]]
    """Every request made so far (the cache is filled from them at the end)."""
    waiting: dict[str, list[Sample]] = field(default_factory=dict)
    """Requests not yet in a chunk, by dataset."""

    def offer(self, results: list[Result]) -> None:
        """The answering stage committed `results`: make their judge requests and pass full chunks on."""
        answers: dict[str, list[Result]] = {}
        for r in results:
            answers.setdefault(r.dataset, []).append(r)
        new, settled = judge_inputs(self.stage, self.answered, self.loaded, self.store, self.cache, answers)
        for name, requests in new.items():
            self.inputs.setdefault(name, []).extend(requests)
            self.waiting.setdefault(name, []).extend(s for s in requests if (name, s.id) not in settled)
        self.judge.offer(self.cut(final=False), len(settled))

    def close(self) -> None:
        """The answering stage is done: the last partial chunks go out; the judge's queue may close."""
        self.judge.offer(self.cut(final=True))
        self.judge.close_inputs()

    def cut(self, *, final: bool) -> list[list[Sample]]:
        """Full chunks of the waiting requests (and, when `final`, the partial ones too)."""
        chunks = []
        for waiting in self.waiting.values():
            while len(waiting) >= self.chunk_size or (final and waiting):
                chunks.append(waiting[: self.chunk_size])
                del waiting[: self.chunk_size]
        return chunks


def offer_all(feeds: list[JudgeFeed], results: list[Result]) -> None:
    for f in feeds:
        f.offer(results)


def close_all(feeds: list[JudgeFeed]) -> None:
    for f in feeds:
        f.close()
