"""A dataset's settings: its file or built-in, the columns its fields come from, how its videos' frames are
sampled, its prompt, few-shot examples and answer extraction (`DatasetConfig`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from evalfleet.config.model import _Strict


class FieldMap(_Strict):
    """Column names in the source file for each sample field."""

    id: str | None = None
    """Sample id column; defaults to `id`, `index`, `qid` or the row number."""
    question: str = "question"
    """Question / prompt column."""
    answer: str | None = "answer"
    """Reference answer column (a string, or a list of accepted answers)."""
    image: str | None = "image"
    """Image column: a path relative to the dataset file, base64 text, or bytes; or a list of them (in CSV/TSV, a
    JSON list)."""
    video: str | None = "video"
    """Video column: a video file or a folder of its frames, with the rules of image paths (`image_root`); its frames
    are sampled as the dataset's `frames` says."""


class FrameSettings(_Strict):
    """How a video's frames are sampled (`data/video.py`), named as the peers name them: `nframe` evenly spaced
    (VLMEvalKit), or `fps` a second of the video (VLMEvalKit, lmms-eval) at most `max_frames_num` (lmms-eval)."""

    nframe: int | None = Field(8, ge=1)
    """Frames a video, evenly spaced (its two ends left out); used unless `fps` is set."""
    fps: float | None = Field(None, gt=0)
    """Frames a second of the video instead (a folder of frames has no rate: `nframe` only)."""
    max_frames_num: int | None = Field(32, ge=1)
    """The most frames `fps` gives, evenly chosen among them."""

    @model_validator(mode="after")
    def _one_rule(self) -> FrameSettings:
        if self.fps is None and self.nframe is None:
            raise ValueError("set `nframe` (frames evenly spaced) or `fps` (frames a second)")
        return self


class FewShotConfig(_Strict):
    """Worked examples put before each question, rendered with the dataset's `prompt` and `instruction`."""

    path: str | None = None
    """File of examples in any dataset format, read with the dataset's `fields` (relative to the config file)."""
    examples: list[dict[str, Any]] | None = None
    """Inline examples, each a row such as {question: ..., answer: ...} (with any column the prompt names)."""
    n: int | None = Field(None, ge=1)
    """Use the first n examples (default: all)."""
    multiturn: bool = True
    """Each example as a user turn and an assistant turn (chat models); false: all of them inside the user
    message, each as `question answer` and a blank line, then the question."""

    @model_validator(mode="after")
    def _one_source(self) -> FewShotConfig:
        if (self.path is None) == (self.examples is None):
            raise ValueError("give exactly one of `path` or `examples`")
        return self


class DatasetConfig(_Strict):
    """One dataset of the run."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    """Unique name, used in the store and file names."""
    path: str | None = None
    """Data file (.jsonl, .csv, .tsv, .parquet); relative paths are relative to the config file."""
    image_root: str | None = None
    """The folder image paths of the rows are relative to, and must stay inside (default: the data file's folder;
    relative to the config file). Symbolic links inside it may point anywhere; a path that climbs out of it with
    `..`, or an absolute path elsewhere, is refused."""
    absolute_images: bool = False
    """Accept absolute image paths wherever they point (relative ones still stay inside `image_root`)."""
    builtin: Literal["easy-vqa", "pathvqa", "slake", "vqa-rad", "PathVQA_VAL", "PathVQA_TEST"] | None = None
    """A dataset by name instead of a file: `easy-vqa` (PyPI package), or the medical VQA sets `pathvqa`, `slake`,
    `vqa-rad` (and VLMEvalKit's names `PathVQA_VAL`, `PathVQA_TEST`) read from your copy under `root`
    (`data/named.py` lists the releases it reads)."""
    root: str | None = None
    """The folder of your copy of a named medical dataset (relative to the config file)."""
    lang: str = "en"
    """SLAKE's question language: `en` or `zh`."""
    columns: list[str] = []
    """Columns of the rows kept with each sample, for `group_by` and the reports (a named dataset keeps its own:
    answer_type, modality, ...)."""
    format: Literal["auto", "jsonl", "csv", "tsv", "parquet", "vlmeval"] = "auto"
    """File format; `auto` goes by the extension (a .tsv with an `index` column is VLMEvalKit)."""
    split: str = "test"
    """Split of a built-in dataset."""
    fields: FieldMap = FieldMap()
    """Column mapping."""
    frames: FrameSettings = FrameSettings()
    """How the frames of a row's video are sampled."""
    limit: int | None = Field(None, ge=1)
    """Keep at most this many samples (after shuffling)."""
    shuffle: bool = False
    """Shuffle with the run's seed before `limit`."""
    prompt: str = "{question}"
    """Template of the user message; `{question}` and any column of the row may be used."""
    instruction: str | None = None
    """Put on a new line after the prompt (e.g. "Answer with the number only."); for multiple choice it replaces
    the default "Please select the correct answer from the options above."."""
    system_prompt: str | None = None
    """System message for this dataset's questions (instead of the model's `system_prompt`)."""
    few_shot: FewShotConfig | None = None
    """Worked examples before each question."""
    extract: list[str] | None = None
    """Answer extraction before metrics (`scoring/extract.py`): e.g. [strip_think, boxed, answer_prefix,
    last_number]; default: [strip_think, choice] for multiple choice, else [strip_think, answer_prefix]."""

    @field_validator("extract")
    @classmethod
    def _known_steps(cls, v: list[str] | None) -> list[str] | None:
        from evalfleet.scoring.extract import check_steps

        return None if v is None else check_steps(v)

    @model_validator(mode="after")
    def _one_source(self) -> DatasetConfig:
        if (self.path is None) == (self.builtin is None):
            raise ValueError("give exactly one of `path` or `builtin`")
        if self.builtin not in (None, "easy-vqa") and self.root is None:
            raise ValueError(f"builtin {self.builtin}: give `root`, the folder of your copy of it")
        return self
