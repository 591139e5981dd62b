"""A judge fed while its answerer runs builds its requests from the answers passed in memory (item 2 of issue
18): here the store holds no answers at all, so a feed that read them back from SQLite would find nothing."""

from __future__ import annotations

from evalfleet.config import StageConfig
from evalfleet.records import Result, Sample
from evalfleet.stages.judge import JudgeFeed
from evalfleet.store import Store


class Judge:
    """The stage a feed feeds (the `StageInput` protocol): what it was offered, and whether it was closed."""

    def __init__(self) -> None:
        self.chunks: list[list[Sample]] = []
        self.settled = 0
        self.closed = False

    def offer(self, chunks: list[list[Sample]], settled: int = 0) -> None:
        self.chunks += chunks
        self.settled += settled

    def close_inputs(self) -> None:
        self.closed = True


def test_a_feed_makes_judge_requests_from_results_in_memory(tmp_path):
    model = {"path": "unused", "generation": {"max_new_tokens": 4}}
    answerer = StageConfig(name="generate", kind="generate", model=model)
    judge_cfg = StageConfig(name="judge", kind="judge", model=model,
                            prompt="Q: {question} Reference: {answer} Reply: {prediction}. Score 0-10.")
    samples = [Sample("d", f"s{i}", f"What is {i} + {i}?", f"What is {i} + {i}?", [str(2 * i)]) for i in range(5)]
    store = Store(tmp_path / "store.db")
    store.put_samples(samples)
    judge = Judge()
    feed = JudgeFeed(judge_cfg, answerer, {"d": samples}, store, None, judge, 2, {})

    feed.offer([Result("d", "s0", "zero"), Result("d", "s1", None, "worker died"), Result("d", "s2", "four")])
    assert store.done_ids("generate", "d") == set()  # nothing was read back: the answers were never stored
    assert [[s.id for s in c] for c in judge.chunks] == [["s0", "s2"]] and judge.settled == 1
    assert judge.chunks[0][1].prompt == "Q: What is 2 + 2? Reference: 4 Reply: four. Score 0-10."
    failed = {r["id"]: r["error"] for r in store.rows("judge", "d") if r["finished"]}
    assert failed == {"s1": "nothing to judge: generate gave no answer (worker died)"}

    feed.offer([Result("d", "s3", "six")])  # half a chunk waits for more ...
    assert len(judge.chunks) == 1 and not judge.closed
    feed.close()  # ... until the answerer is done
    assert [[s.id for s in c] for c in judge.chunks] == [["s0", "s2"], ["s3"]] and judge.closed
    assert sorted(s.id for requests in feed.inputs.values() for s in requests) == ["s0", "s2", "s3"]
