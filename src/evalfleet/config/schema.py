"""The run's settings: stages, placement, cluster, and the run itself (`RunConfig`); a dataset's are
`config/dataset.py`'s."""

from __future__ import annotations

import hashlib
import json
import re
import string
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from evalfleet.backends.kinds import kind as backend_kind
from evalfleet.config.dataset import DatasetConfig
from evalfleet.config.model import ModelConfig, _Strict


class PlacementConfig(_Strict):
    """How replicas of the model are laid out over the GPUs."""

    mode: Literal["auto", "single", "data_parallel", "model_parallel", "hybrid"] = "auto"
    """`auto`/`hybrid`: the planner picks GPUs per replica; `single`: one GPU; `data_parallel`: one replica
    per GPU; `model_parallel`: one replica sharded over all chosen GPUs."""
    gpus_per_replica: int | None = Field(None, ge=1)
    """Force k GPUs per replica (hybrid)."""
    max_memory_per_gpu: str | None = None
    """Cap per GPU, e.g. `10GiB`: used for the plan, the device map and the allocator."""
    cpu_worker_headroom: str | None = None
    """CPU workers: memory (address space) allowed beyond the loaded model, e.g. `2GiB`; a batch that needs
    more is split as on a CUDA out-of-memory."""


class ClusterConfig(_Strict):
    """Where the replicas run."""

    backend: Literal["local", "ray", "serve"] = "local"
    """`local`: processes on this machine; `ray`: Ray actors anywhere in a Ray cluster; `serve`: the replicas that
    `evalfleet serve` keeps loaded on this machine, for the stages whose model settings they match (the others
    start their own)."""
    address: str | None = None
    """Ray: the cluster to join (`auto`: the one started on this node; none: start a local one)."""
    serve_dir: str | None = None
    """Where served replicas register (default: the cache folder's `serve/HOSTNAME`)."""


BUILTIN_METRICS = ("exact_match", "vqa_accuracy", "lenient_match", "token_recall", "token_f1", "bleu1")
"""The names `scoring/metrics.py` registers (a test checks that they agree)."""


def _metric_name(name: str) -> str:
    if name not in BUILTIN_METRICS and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", name):
        raise ValueError(f"unknown metric {name!r}; built-in: {', '.join(BUILTIN_METRICS)}; or a plug-in "
                         "`module:function` (prediction, accepted answers -> a score in [0, 1])")
    return name


MetricName = Annotated[str, AfterValidator(_metric_name)]
"""A built-in metric (`scoring/metrics.py`) or a plug-in `module:function` with the built-ins' signature."""


class JudgeParse(_Strict):
    """How a judge's reply becomes a score."""

    kind: Literal["number", "json", "label"] = "number"
    """`number`: the reply's first number, which must lie in [min, max]; `json`: an object with `score` (and `reason`);
    `label`: the first of `labels` that the reply names."""
    min: float = 0.0
    """Lowest valid score (`number`, `json`)."""
    max: float = 10.0
    """Highest valid score (`number`, `json`)."""
    labels: dict[str, float] | None = None
    """`label`: each label and its score, e.g. {correct: 1, incorrect: 0}."""

    @model_validator(mode="after")
    def _labels_for_label(self) -> JudgeParse:
        if self.kind == "label" and not self.labels:
            raise ValueError("kind `label` needs `labels` (label: score)")
        if self.min > self.max:
            raise ValueError("`min` is above `max`")
        return self


JUDGE_FIELDS = ("question", "answer", "prediction", "id", "image", "edited_image")
"""What a judge template may name (`scoring/judge.py: render_judge_prompt`)."""


def template_problem(template: str, known: tuple[str, ...]) -> str | None:
    """Why `template` cannot be filled with the `known` fields (a name outside them, a lone brace), else None."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        return f"{err}; write a literal brace twice ({{{{ or }}}}), e.g. for JSON in the instructions"
    unknown = [n for n in dict.fromkeys(names) if n.split(".")[0].split("[")[0] not in known]
    if unknown:
        return (f"unknown placeholder{'s' if len(unknown) > 1 else ''} {', '.join('{' + n + '}' for n in unknown)}; "
                f"known: {', '.join('{' + k + '}' for k in known)} (a literal brace is written twice: {{{{ }}}})")
    return None


class StageConfig(_Strict):
    """One stage of a pipeline, run over all GPUs with its own model."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    """Stage name, used in the store and reports."""
    kind: Literal["generate", "edit", "judge"]
    """`generate` answers each sample; `edit` edits each sample's image by its instruction (diffusers);
    `judge` rates the first stage's answers or edited images."""
    model: ModelConfig
    """The stage's model."""
    prompt: str | None = None
    """Judge: the message template; `{question}`, `{answer}`, `{prediction}`, `{id}`, `{image}`,
    `{edited_image}`."""
    parse: JudgeParse = JudgeParse()
    """Judge: how the reply becomes a score."""
    gpus: list[int] | None = None
    """GPU indices for this stage (default: the run's `gpus`; with `concurrent_stages`, a share of them)."""
    python: str | None = None
    """The Python interpreter its workers run under, e.g. `/envs/qwen3/bin/python` for a judge that needs another
    transformers (evalfleet must be installed there too, the same version); default: the run's `python`, else
    the driver's own."""

    @model_validator(mode="after")
    def _consistent(self) -> StageConfig:
        if self.kind == "judge" and not self.prompt:
            raise ValueError("a judge stage needs a `prompt` template")
        if self.kind == "judge" and (why := template_problem(self.prompt or "", JUDGE_FIELDS)):
            raise ValueError(f"judge prompt: {why}")
        if (self.kind == "edit") != (backend_kind(self.model.backend).output == "images"):
            raise ValueError("an edit stage takes a `diffusers` model, and only an edit stage does")
        return self

    def fingerprint(self, seed: int) -> str:
        """Hash of what determines this stage's outputs; a resumed run must match it."""
        payload = self.model_dump(exclude={"name"})
        payload["seed"] = seed
        payload.pop("gpus")
        payload.pop("python")  # where it runs, like its GPUs
        for key in ("batch_size", "engine"):
            payload["model"].pop(key)
        for key in ("urls", "api_key_env", "max_in_flight", "timeout_s", "retries", "startup_timeout_s"):
            payload["model"]["server"].pop(key)  # where and how it is reached, not what it answers
        payload["model"].pop("generation" if self.kind == "edit" else "diffusion")
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


class RunConfig(_Strict):
    """A whole evaluation run."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    """Run name; results go to `output_dir/name`."""
    output_dir: str = "runs"
    """Parent folder of run folders (relative to the working directory)."""
    model: ModelConfig | None = None
    """The answering model: shorthand for a single `generate` stage."""
    stages: list[StageConfig] | None = None
    """The pipeline, in order: a `generate` or `edit` stage first, then `judge` stages."""
    datasets: list[DatasetConfig] = Field(min_length=1)
    """Datasets to evaluate."""
    metrics: list[MetricName] = ["exact_match"]
    """Metrics computed per sample and summarised per dataset."""
    seed: int = 0
    """Seed for shuffling and sampling."""
    gpus: list[int] | None = None
    """GPU indices to use; default: all visible GPUs."""
    workers: int | None = Field(None, ge=1)
    """CPU worker processes when no GPU is used (default 1)."""
    python: str | None = None
    """The Python interpreter workers run under (a stage's own `python` takes precedence); default: the
    driver's."""
    placement: PlacementConfig = PlacementConfig()
    """Replica layout over the GPUs."""
    cluster: ClusterConfig = ClusterConfig()
    """Local processes or a Ray cluster."""
    concurrent_stages: bool = False
    """Run all stages at once on disjoint GPU sets (each stage's `gpus`, or the GPUs dealt out evenly in stage
    order); judges take answers as they are stored. Every model must fit its share."""
    judge_cache: str | None = "judge_cache.db"
    """SQLite file of judge replies shared by all runs that name it (relative to `output_dir`); null: none."""
    shard: str | None = Field(None, pattern=r"^\d+/\d+$")
    """`i/N`: run only shard i of N (a stable hash of dataset and sample id) into RUN_DIR/shards/i-of-N;
    `evalfleet merge RUN_DIR` unites the shards."""
    lease_seconds: float = Field(120.0, gt=0)
    """Several `evalfleet run` processes on one run: a sample claimed by one that is not finished within this
    time (renewed while it lives) may be taken by another."""
    hang_seconds: float = Field(60.0, gt=0)
    """A worker that sends nothing, not even its heartbeat (every 2 s), for this long is hung (stopped, or stuck
    holding the interpreter): it is killed, its samples requeued, and another started."""
    stall_seconds: float = Field(1800.0, gt=0)
    """A worker that holds work but finishes none of it for this long is stuck (in a kernel, say) and is replaced
    likewise; raise it for batches that take longer."""
    chunk_size: int | None = Field(None, ge=1)
    """Samples handed to a worker at a time (default: the starting batch size; at most 256 where it is auto)."""
    limit: int | None = Field(None, ge=1)
    """Cap on samples per dataset, applied on top of each dataset's own limit."""
    show_samples: bool = False
    """Print a line per finished sample (worker, sample, score, answer) and a line per batch with its mean."""
    progress_every: int = Field(50, ge=1)
    """Non-terminal progress: print a line every N samples..."""
    progress_seconds: float = Field(30.0, gt=0)
    """...or every T seconds, whichever comes first."""
    group_by: list[str] = []
    """Columns (a dataset's `columns`, a named dataset's own) to break each dataset's results down by, in the
    summary, the console and the reports; `answer_type` is closed / open / mcq, the dataset's own where it has
    one, else from the answers (yes/no is closed)."""
    max_error_rate: float = Field(0.05, ge=0, le=1)
    """A stage whose samples end in an error (a bad row, an unreadable image, a failed batch or request) more often
    than this makes the run exit 1 once its results are saved, naming the first errors (judge replies without a
    score are counted apart, as unparsed).
    5 %: a handful of broken rows passes, a wrong field name or a broken judge prompt does not."""

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        for what, names in (("dataset", [d.name for d in self.datasets]),
                            ("stage", [s.name for s in self.stages or []])):
            dups = sorted({n for n in names if names.count(n) > 1})
            if dups:
                raise ValueError(f"{what} names must be unique; repeated: {', '.join(dups)}")
        if (self.model is None) == (self.stages is None):
            raise ValueError("give exactly one of `model` (one generate stage) or `stages`")
        if self.stages is not None and (self.stages[0].kind == "judge"
                                        or any(s.kind != "judge" for s in self.stages[1:])):
            raise ValueError("`stages` must start with one `generate` or `edit` stage, followed by `judge` stages")
        if self.shard is not None and not int(self.shard.split("/")[0]) < int(self.shard.split("/")[1]):
            raise ValueError(f"shard {self.shard}: the index must be below the count")
        given = [g for s in self.stages or [] for g in s.gpus or []]
        if self.concurrent_stages and len(given) != len(set(given)):
            raise ValueError("with `concurrent_stages`, the stages' `gpus` must not overlap")
        return self

    def pipeline(self) -> list[StageConfig]:
        """The stages to run, in order."""
        if self.stages is not None:
            return self.stages
        assert self.model is not None
        return [StageConfig(name="generate", kind="generate", model=self.model)]

    @property
    def run_dir(self) -> Path:
        """Where this process writes: the run folder, or its shard's folder inside it."""
        run = Path(self.output_dir) / self.name
        if self.shard is None:
            return run
        index, count = self.shard.split("/")
        return run / "shards" / f"{index}-of-{count}"

    @property
    def judge_cache_path(self) -> Path | None:
        return None if self.judge_cache is None else Path(self.output_dir) / Path(self.judge_cache).expanduser()
