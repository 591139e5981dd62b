"""`evalfleet init | validate`: a starter config, and every problem of a config found before anything runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from evalfleet.cli.common import SetOpt, _guard, app, console, set_overrides
from evalfleet.errors import UserError

STARTER = """\
# evalfleet config: `evalfleet validate {name}` checks it, `evalfleet run {name}` runs it.
# Relative paths are relative to this file. Every setting: README.md, "Configuration".
name: my-eval                    # results go to output_dir/name
output_dir: runs

model:
  path: path/to/model            # a local folder (config.json, weights, tokenizer) or a hub id org/name
  dtype: auto                    # bfloat16 on a GPU, float32 on the CPU
  batch_size: auto               # chosen from the GPU memory; halved on out-of-memory
  generation:
    max_new_tokens: 64
    temperature: 0.0             # 0: greedy; above 0 samples, with a seed per sample

datasets:
  - name: my-data
    path: data/my-data.jsonl     # .jsonl, .csv, .tsv (VLMEvalKit TSVs too) or .parquet
    fields:                      # the columns that hold each part of a sample
      question: question
      answer: answer             # a reference, or a list of accepted answers
      image: image               # optional: a path relative to image_root (default: the data file's folder)
    # prompt: "{{question}} Answer with one word."   # any column of the row may be named
    # limit: 100

metrics: [exact_match, lenient_match]   # also: vqa_accuracy; [] to generate without scoring
max_error_rate: 0.05             # exit 1 when more samples than this end in an error

# A judge after the answers (then give `stages` instead of `model`):
# stages:
#   - {{name: generate, kind: generate, model: {{path: path/to/model}}}}
#   - name: judge
#     kind: judge
#     model: {{path: path/to/judge}}
#     prompt: "Question: {{question}}\\nReference: {{answer}}\\nAnswer: {{prediction}}\\nScore 1-5:"
"""


@app.command("init")
def init_cmd(
    path: Annotated[Path, typer.Argument(help="Where to write the config.")] = Path("evalfleet.yaml"),
    force: Annotated[bool, typer.Option("--force/--no-force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented starter config to edit."""

    def go() -> None:
        if path.exists() and not force:
            raise UserError(f"{path} exists; --force overwrites it")
        path.write_text(STARTER.format(name=path.name))
        console.print(f"wrote {path}: set model.path and the dataset, then `evalfleet validate {path}`",
                      markup=False, highlight=False)

    _guard(go)


@app.command("validate")
def validate_cmd(
    config: Annotated[Path, typer.Argument(help="YAML config file.")],
    sets: SetOpt = None,
) -> None:
    """Check a config, its model paths, datasets, fields and templates, without loading a model or writing."""

    def go() -> None:
        from evalfleet.config import OVERRIDE_OPTIONS, load_config
        from evalfleet.preflight import input_problems, read_datasets, row_errors

        cfg = load_config(config, set_overrides(sets), OVERRIDE_OPTIONS)
        data = read_datasets(cfg)
        problems = input_problems(cfg, data) + [f"dataset {n} cannot be read: {why}" for n, why in data.failed.items()]
        if problems:
            raise UserError(f"{config}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
        counts = ", ".join(f"{name} {len(samples)} samples ({sum(bool(s.error) for s in samples)} with errors)"
                           for name, samples in data.samples.items())
        stages = " -> ".join(f"{s.name} ({s.kind}, {s.model.path})" for s in cfg.pipeline())
        console.print(f"{config}: valid. Stages: {stages}. Datasets: {counts}. Results would go to {cfg.run_dir}",
                      markup=False, highlight=False)
        for line in row_errors(cfg, data):  # what the run would say of them
            console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)

    _guard(go)
