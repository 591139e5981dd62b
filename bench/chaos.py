"""Fault suite (issue 16): every fault injected from outside into real `evalfleet` processes (SmolLM2 on the CPU),
the ones fixed in issue 16 (tests/fault_scenarios.py, also run by tests/test_faults.py) and the ones that already
held, with a table: scenario, pass, samples lost (no answer once resumed to the end), answered twice (results
the workers delivered beyond one per sample, from their stored counts: work lost with a SIGKILLed driver is not
counted there), seconds from the signal to the driver's exit and from the resuming command's start to its first
new result, and whether the answers equal an uninterrupted run's on the same questions.

    python bench/chaos.py [--only NAME ...] [--work /tmp/chaos] [--record bench/RESULTS.md]

Needs root for the mount scenarios (a private mount namespace with a small tmpfs or ext4 on a loop device).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from datetime import date
from pathlib import Path

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from fault_scenarios import FIXES, Scenario, failing_filesystem  # noqa: E402
from faults import EXIT_INTERRUPTED, Lab, Outcome, alive, kill_group, wait_for  # noqa: E402


def worker_sigkill(tmp: Path, model: Path) -> Outcome:
    o = Outcome("a worker SIGKILLed mid-run")
    lab = Lab(tmp, model, n=16, workers=2)
    proc = lab.start()
    lab.wait_results(4, proc)
    victim = wait_for(lambda: next(iter(lab.worker_pids("running")), None), 60, "a running worker")
    os.kill(victim, signal.SIGKILL)
    rc, out = lab.finish(proc)
    assert rc == 0 and "died (exit code -9)" in out, out
    o.lost, o.recomputed, o.answers = lab.lost(), lab.recomputed(), lab.answers()
    return o


def driver_group_sigkill(tmp: Path, model: Path, cycles: int = 1) -> Outcome:
    o = Outcome("the driver's process group SIGKILLed, resumed" + (f" ({cycles} times)" if cycles > 1 else ""))
    lab = Lab(tmp, model, n=24, workers=1)
    for cycle in range(cycles):
        proc = lab.start(start_new_session=True)
        lab.wait_results(lab.results() + 3, proc)
        workers = lab.worker_pids()
        kill_group(proc)
        wait_for(lambda: not any(alive(p) for p in workers), 30, "the workers to end")
    lab.resume(o)
    o.answers = lab.answers()
    return o


def three_cycles(tmp: Path, model: Path) -> Outcome:
    return driver_group_sigkill(tmp, model, cycles=3)


def two_drivers(tmp: Path, model: Path) -> Outcome:
    o = Outcome("two drivers on one run folder")
    lab = Lab(tmp, model, n=24, workers=1)
    procs = [lab.start(), lab.start()]
    for p in procs:
        rc, out = lab.finish(p)
        assert rc == 0, out
    assert lab.leases() == 0, "leases left"
    o.lost, o.recomputed, o.answers = lab.lost(), lab.recomputed(), lab.answers()
    return o


def ctrl_c(tmp: Path, model: Path) -> Outcome:
    o = Outcome("Ctrl-C, then resume")
    lab = Lab(tmp, model, n=16, workers=1)
    proc = lab.start()
    lab.wait_results(4, proc)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    rc, out = lab.finish(proc, 60)
    o.stop_s = round(time.monotonic() - t0, 1)
    assert rc == EXIT_INTERRUPTED, out
    lab.resume(o)
    o.answers = lab.answers()
    return o


HELD: list[Scenario] = [worker_sigkill, driver_group_sigkill, three_cycles, two_drivers, ctrl_c]


def failing_filesystem_resumed(tmp: Path, model: Path) -> Outcome:
    return failing_filesystem(tmp, model, resume=True)


ALL: list[Scenario] = HELD + [failing_filesystem_resumed if s is failing_filesystem else s for s in FIXES]


def run_one(scenario: Scenario, work: Path, model: Path) -> Outcome:
    t0 = time.monotonic()
    try:
        o = scenario(work / scenario.__name__, model)
    except Exception as err:  # one failed scenario is a row, not the end of the suite
        o = Outcome(scenario.__name__, passed=False, notes=[f"{type(err).__name__}: {err}".splitlines()[0][:200]])
        traceback.print_exc()
    o.notes.append(f"{time.monotonic() - t0:.0f} s")
    return o


def table(outcomes: list[Outcome], reference: dict[str, str]) -> str:
    def cell(v: object) -> str:
        return "-" if v is None else str(v)

    rows = ["| scenario | pass | lost | answered twice | stop s | resume s | answers = uninterrupted | notes |",
            "|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        differ = None if o.answers is None else sum(reference.get(k) != v for k, v in o.answers.items())
        equal = "-" if differ is None else "yes" if not differ else f"no ({differ} differ)"
        rows.append(f"| {o.scenario} | {'yes' if o.passed else 'NO'} | {cell(o.lost)} | {cell(o.recomputed)} | "
                    f"{cell(o.stop_s)} | {cell(o.resume_s)} | {equal} | {'; '.join(o.notes)} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/chaos"))
    ap.add_argument("--only", nargs="*", help="scenario function names")
    ap.add_argument("--record", type=Path, help="append the table to this Markdown file (bench/RESULTS.md)")
    args = ap.parse_args()
    from evalfleet.assets import smollm2_path

    model = smollm2_path()
    scenarios = [s for s in ALL if not args.only or s.__name__ in args.only]
    ref_lab = Lab(args.work / "reference", model, n=24, workers=1)
    rc, out = ref_lab.cli()
    assert rc == 0, out
    reference = ref_lab.answers()
    outcomes = []
    for s in scenarios:
        print(f"--- {s.__name__}", flush=True)
        outcomes.append(run_one(s, args.work, model))
    text = table(outcomes, reference)
    print(text)
    if args.record:
        head = (f"\n### Fault suite, {date.today()}: `python bench/chaos.py` (CPU, 2 cores, SmolLM2-135M fp32, "
                f"{sum(o.passed for o in outcomes)}/{len(outcomes)} passed)\n\n")
        with args.record.open("a") as f:
            f.write(head + text + "\n")
    sys.exit(0 if all(o.passed for o in outcomes) else 1)


if __name__ == "__main__":
    main()
