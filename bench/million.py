"""A million samples through the driver (issue 40, item 3), on this CPU: whole `evalfleet run` commands whose workers
are the tests' stand-in workers (`tests/standin.py`: real spawned processes speaking the driver-worker protocol,
answering each sample with its question upper-cased at once), so that the driver, not a model, is the bottleneck.
The driver is evalfleet's as shipped; only its launcher (and the prewarm that would import a model) is swapped for
the stand-in's, in the driver's own process (`--drive`).

For each of JSONL and parquet (--rows rows, questions of 8-60 words, SmolLM2's tokenizer for the plan):
  fresh       the command on a new run folder: the driver's set-up (until its stage is planned and chunked, read
              from the run's log), the first result stored (polled in the store), the whole command, the results
              committed per second, the driver's peak memory
  status      `evalfleet status RUN` on the finished run
  show        `evalfleet show RUN` (its first sample)
  report      `evalfleet report RUN` (json, md)
  resume      the command again after a kill once a third of the results were stored: its set-up, until the first
              new result, and the whole command

    PYTHONPATH=src python bench/million.py [--rows 1000000] [--formats jsonl,parquet] [--work DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]


def drive(argv: list[str]) -> None:
    """`evalfleet run ...` in this process, its workers the stand-ins."""
    from standin import StandInLauncher

    import evalfleet.run

    evalfleet.run.launcher = lambda *args, **kw: StandInLauncher()
    evalfleet.run.prewarm = lambda cfg: None
    from evalfleet.cli import main

    sys.argv = ["evalfleet", *argv]
    main()


def datasets(work: Path, rows: int, formats: list[str]) -> dict[str, Path]:
    from driver_overhead import dataset

    jsonl = dataset(work, rows)
    out = {"jsonl": jsonl}
    if "parquet" in formats:
        path = jsonl.with_suffix(".parquet")
        if not path.exists():
            import pyarrow.json as pj
            import pyarrow.parquet as pq

            pq.write_table(pj.read_json(jsonl), path)
        out["parquet"] = path
    return {f: out[f] for f in formats}


def evalfleet(*args: str, quiet: bool = True) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "evalfleet.cli", *args], check=True,
                   stdout=subprocess.DEVNULL if quiet else None)
    return time.perf_counter() - t


def stored(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1)
        try:
            return con.execute("SELECT max(rowid) FROM results").fetchone()[0] or 0
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def command(config: Path, db: Path, total: int, *, kill_at: int | None = None) -> dict:
    """One driver command, its store polled: the first result's time, the end, the results count over time."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--drive", "run", str(config)], stdout=subprocess.DEVNULL,
                            start_new_session=True)
    first = None
    start_n = stored(db)
    marks = []
    rss = {"running": 0, "reporting": 0}  # the driver's resident memory, sampled, before and after its last result
    while proc.poll() is None:
        time.sleep(0.25)
        n = stored(db)
        now = time.perf_counter() - t0
        marks.append((now, n))
        phase = "reporting" if n >= total else "running"
        rss[phase] = max(rss[phase], resident(proc.pid))
        if first is None and n > start_n:
            first = now
        if kill_at is not None and n >= kill_at:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return {"killed_at": n, "seconds": now}
    if proc.returncode:
        raise SystemExit(f"the driver failed (exit {proc.returncode})")
    wall = time.perf_counter() - t0
    growing = [(t, n) for t, n in marks if start_n < n]
    rate = None
    if len(growing) >= 2:
        (t1, n1), (t2, n2) = growing[0], growing[-1]
        rate = (n2 - n1) / (t2 - t1) if t2 > t1 else None
    gib = {f"rss_{phase}_gib": round(v / 2**30, 2) for phase, v in rss.items()}
    return {"first_result_s": first, "seconds": wall, "results_per_s": rate, **gib}


def resident(pid: int) -> int:
    """A process's resident memory in bytes (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def setup_seconds(run_dir: Path) -> float | None:
    """From the command's start to its stage's chunks cut, as the run records its start-up (`startup` meta)."""
    con = sqlite3.connect(run_dir / "store.db")
    try:
        row = con.execute("SELECT value FROM meta WHERE key='startup'").fetchone()
    finally:
        con.close()
    return json.loads(row[0]) if row else None


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--drive":
        drive(sys.argv[2:])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--formats", default="jsonl,parquet")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-million"))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    from evalfleet.assets import smollm2_path

    paths = datasets(args.work, args.rows, args.formats.split(","))
    table = []
    for fmt, path in paths.items():
        run_dir = args.work / "runs" / fmt
        config = args.work / f"{fmt}.yaml"
        config.write_text(json.dumps({
            "name": fmt, "output_dir": str(args.work / "runs"), "model": {"path": str(smollm2_path())},
            "datasets": [{"name": "q", "path": str(path), "prompt": "{question} Answer briefly."}]}))
        subprocess.run(["rm", "-rf", str(run_dir)], check=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        fresh = command(config, run_dir / "store.db", args.rows)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        fresh["startup"] = setup_seconds(run_dir)
        fresh["peak_rss_gib"] = round(peak / 2**20, 2) if peak > before else None
        row = {"format": fmt, "fresh": fresh,
               "status_s": evalfleet("status", str(run_dir)),
               "show_s": evalfleet("show", str(run_dir), "q", f"q{args.rows // 2}"),
               "report_s": evalfleet("report", str(run_dir))}
        subprocess.run(["rm", "-rf", str(run_dir)], check=True)
        killed = command(config, run_dir / "store.db", args.rows, kill_at=args.rows // 3)
        row["killed"] = killed
        row["resume"] = command(config, run_dir / "store.db", args.rows)
        row["resume"]["startup"] = setup_seconds(run_dir)
        table.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{args.rows:,} samples, stand-in workers (tests/standin.py), this machine's CPU\n")
    print("| format | fresh: set-up s | first result s | command s | results/s | peak RSS GiB | status s | show s | "
          "report s | resume: first new result s | command s |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for r in table:
        f, res = r["fresh"], r["resume"]
        print(f"| {r['format']} | {f['startup']} | {f['first_result_s']:.1f} | {f['seconds']:.1f} | "
              f"{f['results_per_s'] or 0:,.0f} | {f['peak_rss_gib']} | {r['status_s']:.2f} | {r['show_s']:.2f} | "
              f"{r['report_s']:.1f} | {res['first_result_s'] or 0:.1f} | {res['seconds']:.1f} |")
    if args.out:
        args.out.write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
