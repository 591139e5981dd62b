"""Slurm: a job array whose tasks run one shard each plus a merge job after them, or one allocation of
several nodes running a Ray cluster that one `evalfleet run --ray-address` drives."""

from __future__ import annotations

import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from evalfleet.config import RunConfig
from evalfleet.errors import UserError
from evalfleet.stopping import EXIT_PREEMPTED


@dataclass
class SlurmOptions:
    """Resources of each array task (None: the cluster's default)."""

    tasks: int
    gpus_per_task: int | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    time: str | None = None
    partition: str | None = None
    account: str | None = None
    signal_before: int = 120
    """Seconds before the time limit at which Slurm sends SIGUSR1 (`--signal=B:USR1@N`): the task stops cleanly
    and requeues itself; 0: no early signal and no requeue at the time limit."""


def _header(name: str, out: Path, opts: SlurmOptions, *, array: bool) -> list[str]:
    per_task = {"array": f"0-{opts.tasks - 1}", "gpus-per-task": opts.gpus_per_task,
                "cpus-per-task": opts.cpus_per_task, "mem": opts.mem} if array else {}
    options = {"job-name": name, "output": out, **per_task, "time": opts.time, "partition": opts.partition,
               "account": opts.account}
    return ["#!/bin/bash"] + [f"#SBATCH --{key}={value}" for key, value in options.items() if value]


def write_scripts(cfg: RunConfig, config_path: Path, opts: SlurmOptions) -> tuple[Path, Path]:
    """Write RUN_DIR/slurm/array.sbatch (task i runs shard i of N; Slurm sets CUDA_VISIBLE_DEVICES to the
    task's GPUs) and RUN_DIR/slurm/merge.sbatch (unites the shards and writes the report)."""
    if opts.tasks < 1:
        raise UserError("--array: at least one task")
    run_dir = (Path(cfg.output_dir) / cfg.name).resolve()
    folder = run_dir / "slurm"
    folder.mkdir(parents=True, exist_ok=True)
    python = shlex.quote(sys.executable)
    cwd = shlex.quote(str(Path.cwd()))
    run = f"srun {python} -m evalfleet.cli run {shlex.quote(str(config_path.resolve()))} --shard slurm"
    array = _header(f"evalfleet-{cfg.name}", folder / "%A_%a.out", opts, array=True) + [
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        *([f"#SBATCH --signal=B:USR1@{opts.signal_before}"] if opts.signal_before else []),
        *_stoppable(run, cwd),
    ]
    merge = _header(f"evalfleet-{cfg.name}-merge", folder / "merge_%j.out", opts, array=False) + [
        "set -euo pipefail",
        f"cd {cwd}",
        f"srun {python} -m evalfleet.cli merge {shlex.quote(str(run_dir))}",
    ]
    paths = folder / "array.sbatch", folder / "merge.sbatch"
    for path, lines in zip(paths, (array, merge)):
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o755)
    return paths


def _stoppable(command: str, cwd: str) -> list[str]:
    """Run `command` in the background of the batch shell, passing SIGUSR1 (the time limit is near) and SIGTERM
    (scancel, preemption) on to it: evalfleet saves its results, stops its workers and exits with 75
    (EXIT_PREEMPTED). After SIGUSR1 the task then requeues itself and resumes where it stopped; after a preemption
    Slurm requeues it (`--requeue`); after a plain scancel it stays cancelled."""
    return [
        "set -uo pipefail",  # no -e: the run's exit status is read below
        f"cd {cwd} || exit 1",
        "requeue=0",
        "trap 'requeue=1; kill -USR1 \"$pid\" 2>/dev/null' USR1",
        "trap 'kill -TERM \"$pid\" 2>/dev/null' TERM",
        f"{command} &",
        "pid=$!",
        # `wait` returns early (128 + the signal) when a trapped signal arrives: wait until the run has ended,
        # then once more for its own exit status, which bash keeps.
        "rc=0; wait \"$pid\" || rc=$?",
        "while kill -0 \"$pid\" 2>/dev/null; do rc=0; wait \"$pid\" || rc=$?; done",
        "if [ \"$rc\" -gt 128 ]; then rc=0; wait \"$pid\" || rc=$?; fi",
        f"if [ \"$rc\" -eq {EXIT_PREEMPTED} ] && [ \"$requeue\" -eq 1 ]; then",
        "  echo \"evalfleet: stopped before the time limit; requeueing job $SLURM_JOB_ID to resume\"",
        "  scontrol requeue \"$SLURM_JOB_ID\"",
        "fi",
        "exit \"$rc\"",
    ]


def write_ray_script(cfg: RunConfig, config_path: Path, nodes: int, opts: SlurmOptions) -> Path:
    """Write RUN_DIR/slurm/ray.sbatch: one allocation of `nodes` nodes, a Ray head on the first and workers on
    the others (Ray's documented way on Slurm), then one `evalfleet run --ray-address` driving them all."""
    if nodes < 1:
        raise UserError("--ray-nodes: at least one node")
    run_dir = (Path(cfg.output_dir) / cfg.name).resolve()
    folder = run_dir / "slurm"
    folder.mkdir(parents=True, exist_ok=True)
    python = shlex.quote(sys.executable)
    lines = _header(f"evalfleet-{cfg.name}-ray", folder / "ray_%j.out", opts, array=False) + [
        f"#SBATCH --nodes={nodes}",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --exclusive",
        *([f"#SBATCH --gpus-per-node={opts.gpus_per_task}"] if opts.gpus_per_task else []),
        "set -euo pipefail",
        f"cd {shlex.quote(str(Path.cwd()))}",
        'mapfile -t hosts < <(scontrol show hostnames "$SLURM_JOB_NODELIST")',
        'head_ip=$(srun --nodes=1 --ntasks=1 -w "${hosts[0]}" hostname --ip-address | cut -d" " -f1)',
        'address="$head_ip:6379"',
        f'srun --nodes=1 --ntasks=1 -w "${{hosts[0]}}" {python} -m ray.scripts.scripts start --head '
        '--node-ip-address="$head_ip" --port=6379 --block &',
        "sleep 15",
        'for host in "${hosts[@]:1}"; do',
        f'  srun --nodes=1 --ntasks=1 -w "$host" {python} -m ray.scripts.scripts start --address="$address" --block &',
        "done",
        "sleep 15",
        f'{python} -m evalfleet.cli run {shlex.quote(str(config_path.resolve()))} --ray-address "$address"',
    ]
    path = folder / "ray.sbatch"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o755)
    return path


def sbatch(*args: str) -> str:
    """Submit with sbatch; the job id."""
    try:
        out = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, check=True)
    except FileNotFoundError:
        raise UserError("sbatch not found: submit the scripts on a Slurm login node") from None
    except subprocess.CalledProcessError as err:
        raise UserError(f"sbatch failed: {err.stderr.strip()}") from None
    return out.stdout.strip().split(";")[0]


def submit_jobs(array: Path, merge: Path) -> tuple[str, str]:
    """sbatch the array, then the merge job to run after it (whatever the tasks' outcome); the job ids."""
    job = sbatch(str(array))
    return job, sbatch(f"--dependency=afterany:{job}", str(merge))


def slurm_jobs(cfg: RunConfig, config: Path, opts: SlurmOptions, *, ray_nodes: int | None, submit: bool) -> list[str]:
    """`evalfleet slurm`: write the array and merge scripts (or, with `ray_nodes`, one Ray job), submit them if
    asked; returns what was done, a line each."""
    if ray_nodes is not None:
        script = write_ray_script(cfg, config, ray_nodes, opts)
        return [f"wrote {script}"] + ([f"submitted job {sbatch(str(script))}"] if submit else [])
    array_script, merge_script = write_scripts(cfg, config, opts)
    lines = [f"wrote {array_script} and {merge_script}"]
    if submit:
        job, merge_job = submit_jobs(array_script, merge_script)
        return lines + [f"submitted array job {job} and merge job {merge_job} (after it)"]
    return lines + [f"submit: sbatch {array_script}, then sbatch --dependency=afterany:JOBID {merge_script}"]
