"""`evalfleet slurm`: jobs for a Slurm cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from evalfleet.cli.common import _guard, app, console
from evalfleet.config import load_config
from evalfleet.errors import UserError


@app.command("slurm")
def slurm_cmd(
    config: Annotated[Path, typer.Argument(help="YAML config file.")],
    array: Annotated[int | None, typer.Option("--array", help="Array tasks: the run is split into this many "
                                                              "shards, merged by a job after them.")] = None,
    ray_nodes: Annotated[int | None, typer.Option("--ray-nodes", help="Instead: one allocation of this many nodes "
                                                                      "running a Ray cluster for one run.")] = None,
    gpus_per_task: Annotated[int | None, typer.Option("--gpus-per-task", help="GPUs of each task.")] = None,
    cpus_per_task: Annotated[int | None, typer.Option("--cpus-per-task", help="CPU cores of each task.")] = None,
    mem: Annotated[str | None, typer.Option("--mem", help="Memory of each task, e.g. 64G.")] = None,
    time_limit: Annotated[str | None, typer.Option("--time", help="Time limit, e.g. 12:00:00.")] = None,
    partition: Annotated[str | None, typer.Option("--partition", help="Slurm partition.")] = None,
    account: Annotated[str | None, typer.Option("--account", help="Slurm account.")] = None,
    signal_before: Annotated[int, typer.Option("--signal-before", help="Seconds before the time limit at which "
                                               "each task is told to stop, saves its results and requeues itself "
                                               "(0: never).")] = 120,
    submit: Annotated[bool, typer.Option("--submit/--no-submit", help="sbatch the array and the merge job after it.")] = False,
) -> None:
    """Write a Slurm job array (task i runs shard i) and a merge job, or (--ray-nodes) one multi-node job running
    a Ray cluster for the run; with --submit, submit them."""

    def go() -> None:
        from evalfleet.cluster.slurm import SlurmOptions, slurm_jobs

        if (array is None) == (ray_nodes is None):
            raise UserError("give --array N (shards + merge) or --ray-nodes N (one Ray cluster)")
        opts = SlurmOptions(array or 1, gpus_per_task, cpus_per_task, mem, time_limit, partition, account,
                            signal_before)
        for line in slurm_jobs(load_config(config), config, opts, ray_nodes=ray_nodes, submit=submit):
            # soft_wrap: a path or command is never broken across lines (a log is 160 columns wide)
            console.print(f"[evalfleet] {line}", markup=False, highlight=False, soft_wrap=True)

    _guard(go)
