"""What every command shares: the Typer app, the console, running a config, and turning errors into exit codes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from evalfleet.errors import RunError, UserError
from evalfleet.stopping import Stopped

app = typer.Typer(add_completion=False, no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]},
                  help="evalfleet: evaluate models on datasets over every GPU, resumably.")


def _version(value: bool) -> None:
    if value:
        from evalfleet import __version__

        typer.echo(f"evalfleet {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                   help="Print the version and exit.")] = False) -> None:
    """evalfleet: evaluate models on datasets over every GPU, resumably."""


def set_overrides(items: list[str] | None) -> dict[str, Any]:
    """`--set key.path=value` options as dotted config keys; each value is read as YAML (`3`, `0.5`, `true`,
    `[0, 1]`, `null`, text) and checked against the schema like the config file."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item}: expected KEY=VALUE, e.g. --set model.generation.max_new_tokens=64")
        try:
            out[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError:
            out[key.strip()] = text
    return out
console = Console()
if not console.is_terminal:  # logs and pipes: keep tables on one line each
    console = Console(width=160)


def _execute(cfg: Any, *, fresh: bool, log_file: Path | None, retry_errors: bool = False,
             redo: list[str] | None = None) -> None:
    from evalfleet.reporting.failures import too_many_errors
    from evalfleet.run import run

    summary = run(cfg, fresh=fresh, retry_errors=retry_errors, redo=redo, console=console, log_file=log_file)
    failed = [f"{name}: {ds.get('error')}" for name, ds in summary["datasets"].items() if ds.get("status") == "failed"]
    problems = ["these datasets could not be read, the others' results are saved:", *(f"  {f}" for f in failed)] \
        if failed else []
    if too_many := too_many_errors(summary["errors"], cfg.max_error_rate):
        problems += [*too_many, "(the results are saved; the errors are listed above and in the predictions; "
                                "`--retry-errors` computes them again)"]
    if problems:  # the run as a whole did not do what was asked
        raise RunError("\n".join(problems))


def _guard(fn: Callable[[], None], store: Path | None = None) -> None:
    """Print user errors (exit 2) and runs that could not go on (exit 1) without a traceback; after a stop signal,
    exit 130 (Ctrl-C) or 75 (SIGTERM, SIGUSR1: preempted, run again to resume). `store`: the store the command
    reads, named in its errors."""
    from evalfleet.store import store_errors

    try:
        if store is None:
            fn()
        else:
            with store_errors(store):
                fn()
    except (UserError, RunError) as err:
        console.print(f"[bold red]error:[/bold red] {escape(str(err))}", highlight=False, soft_wrap=True)
        raise typer.Exit(err.exit_code) from None
    except Stopped as stop:
        console.print(f"[evalfleet] {stop}; results so far are saved. Run the same command again to resume.",
                      markup=False, highlight=False)
        raise typer.Exit(stop.exit_code) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


GpusOpt = Annotated[str | None, typer.Option("--gpus", help="GPU indices, e.g. 0,1,2 (default: all visible).")]
WorkersOpt = Annotated[int | None, typer.Option("--workers", help="CPU worker processes (forces CPU).")]
LimitOpt = Annotated[int | None, typer.Option("--limit", help="At most N samples per dataset.")]
FreshOpt = Annotated[bool, typer.Option("--fresh/--no-fresh", help="Delete earlier results of this run and start "
                                                                    "over.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Any setting, KEY=VALUE with a dotted key, e.g. "
                                                              "model.generation.max_new_tokens=64, datasets.NAME.limit=10 "
                                                              "(a dataset or stage by name or index; datasets.limit=10: "
                                                              "every dataset) (repeatable).")]
MaxMemOpt = Annotated[str | None, typer.Option("--max-memory-per-gpu", help="Cap per GPU, e.g. 10GiB.")]
ModeOpt = Annotated[str | None, typer.Option("--mode", help="auto, single, data_parallel, model_parallel, hybrid.")]
LogOpt = Annotated[Path | None, typer.Option("--log-file", help="Full log (default: RUN_DIR/run.log).")]
