"""Shared fixtures: real tiny models (SmolLM2 from PyPI, a random-weight Qwen2-VL built offline)."""

from __future__ import annotations

import io
import os
import traceback
from pathlib import Path
from typing import Any

import cpu_share  # noqa: F401  # first: under pytest-xdist, this test process's CPUs
import pytest
from rich.console import Console

from evalfleet.backends.transformers.processors import without_video_processor
from evalfleet.config import RunConfig, parse_config
from evalfleet.scoring import score_output

without_video_processor()  # what evalfleet's workers do, for the tests that load VLM processors themselves
pytest_plugins = ["require_all"]

DEMO_QUESTIONS = Path(__file__).parents[1] / "src" / "evalfleet" / "data" / "demo_questions.jsonl"


@pytest.fixture(scope="session")
def smollm2() -> Path:
    from evalfleet.assets import smollm2_path

    return smollm2_path()


@pytest.fixture(scope="session")
def tiny_qwen2vl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import build_tiny_qwen2vl

    return build_tiny_qwen2vl(tmp_path_factory.mktemp("models") / "tiny-qwen2-vl")


@pytest.fixture(scope="session")
def tiny_pix2pix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import build_pix2pix

    return build_pix2pix(tmp_path_factory.mktemp("models") / "tiny-pix2pix")


@pytest.fixture(scope="session")
def tiny_qwen25vl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import build_tiny_qwen2vl

    return build_tiny_qwen2vl(tmp_path_factory.mktemp("models") / "tiny-qwen2.5-vl", arch="qwen2_5_vl")


def make_config(out: Path, model_path: Path, datasets: list[dict[str, Any]], **over: Any) -> RunConfig:
    data: dict[str, Any] = {
        "name": "t",
        "output_dir": str(out),
        "model": {"path": str(model_path), "dtype": "float32", "batch_size": 4, "generation": {"max_new_tokens": 16}},
        "datasets": datasets,
        "metrics": ["lenient_match", "exact_match"],
        "workers": 1,
    }
    for key, value in over.items():
        if isinstance(value, dict):
            data[key] = {**data.get(key, {}), **value}
        else:
            data[key] = value
    return parse_config(data)


def quiet_console() -> Console:
    return Console(file=io.StringIO(), width=200)


def score_now(rows: list[dict[str, Any]], metrics: list[str]) -> None:
    """Score rows as the driver does when it commits them (each row's `score`, as the store gives it back)."""
    for r in rows:
        ok = r["finished"] and r["error"] is None
        r["score"] = score_output(r["prediction"], r["answers"], metrics=metrics,
                                  options=r.get("metadata", {}).get("options")) if ok else None


def loaded_backend(path: Path, engine: str, new_tokens: int = 12, share_prefixes: bool = True,
                   **generation: Any) -> Any:
    """A loaded TransformersBackend on the CPU in fp32 with `engine`, greedy unless `generation` says."""
    from evalfleet.backends.transformers.backend import TransformersBackend
    from evalfleet.config import ModelConfig

    cfg = ModelConfig(path=str(path), dtype="float32", engine=engine, share_prefixes=share_prefixes,
                      generation={"max_new_tokens": new_tokens, **generation})
    b = TransformersBackend(cfg, n_gpus=0)
    b.load()
    return b


def continuous_answers(b: Any, requests: list[Any], slots: int, engine: list[Any] | None = None
                       ) -> list[tuple[str, int]]:
    """All requests through a continuous stream of `slots` slots (refilled as rows end, decoding down to one slot
    wide once the queue is dry): (text, tokens) each. `engine` gets the engine appended."""
    from evalfleet.backends.transformers.graphs import decode_widths

    stream = b.stream(slots, None)
    assert stream is not None
    stream.engine.widths = decode_widths(slots, smallest=1)
    if engine is not None:
        engine.append(stream.engine)
    return [(g.text, g.n_tokens) for g in drain(stream, b.prepare(requests))]


def drain(stream: Any, prepared: Any) -> list[Any]:
    """A whole prepared batch through `stream` (added, then stepped until it is idle): its Generations in order."""
    stream.add(prepared, list(range(len(prepared.prompts))))
    answers: dict[int, Any] = {}
    while stream.busy:
        answers.update(stream.step())
    return [answers[i] for i in range(len(prepared.prompts))]


def spread_answer_lengths(path: Path, requests: list[Any], new_tokens: int) -> None:
    """Add to the EOS ids of the random-weight model at `path` the token that, as an EOS, ends its greedy answers
    to `requests` at the most different steps (so that an engine's slots are refilled at different times)."""
    from transformers import GenerationConfig

    b = loaded_backend(path, "generate", new_tokens)
    prepared = b.prepare(requests)
    new = b.model.generate(**prepared.inputs, max_new_tokens=new_tokens, do_sample=False,
                           pad_token_id=b.tokenizer.pad_token_id)[:, prepared.inputs["input_ids"].shape[1]:]
    rows = new.tolist()

    def ends(token: int) -> int:  # how many different lengths the answers get if `token` ends them
        return len({row.index(token) if token in row else None for row in rows})

    gen = GenerationConfig.from_pretrained(path)
    gen.eos_token_id = [b.tokenizer.eos_token_id, max(sorted({t for row in rows for t in row}), key=ends)]
    gen.save_pretrained(path)


def cli(*args: str, cwd: Path | None = None) -> tuple[int, str]:
    """`evalfleet ARGS` run in this process by typer's runner, as a shell would see it: the exit code, and the output
    with the traceback of an exception that escaped (its workers come from this process's fork server, which has
    torch imported: a run starts in a second, not the ~5 s of a fresh process's imports). The tests that need a
    driver of its own (signals, kills, status from another process, the demo in test_claims) start one."""
    from typer.testing import CliRunner

    from evalfleet.cli import app

    here = Path.cwd()
    os.chdir(cwd or here)
    try:
        result = CliRunner().invoke(app, list(args), prog_name="evalfleet")
    finally:
        os.chdir(here)
    out = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        out += "".join(traceback.format_exception(*result.exc_info))
    return result.exit_code, out
