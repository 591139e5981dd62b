"""A stage's performance accounting: model load and unload seconds per worker, the wall time of loading and
unloading them all, each worker's usage, throughput once every replica was loaded, the stage's wall time and
GPU-hours. `data` is what the store keeps (`performance:<stage>`) and the summary shows."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from evalfleet.observe.startup import critical_replica, startup_line
from evalfleet.records import Result


@dataclass
class Performance:
    data: dict[str, Any] = field(
        default_factory=lambda: {"load_s": {}, "unload_s": {}, "workers": {}, "samples": 0, "generated_tokens": 0,
                                 "startup": {"workers": {}}})
    t_spawn: float = field(default_factory=time.monotonic)
    t_ready: float = 0.0
    """When every replica had loaded; throughput counts from then."""
    at_ready: tuple[int, int] = (0, 0)
    """(samples, generated tokens) finished before t_ready."""
    last_answer: dict[str, float] = field(default_factory=dict)
    """Worker -> when its latest results came (monotonic)."""

    def loaded(self, worker: str, seconds: float, every_replica: bool, phases: dict[str, float]) -> str | None:
        """A worker is ready after `seconds` (its start-up `phases`); once `every_replica` is, the line that says
        how long loading took."""
        self.data["load_s"][worker] = round(seconds, 2)
        self.data["startup"]["workers"][worker] = phases
        if "load_wall_s" in self.data or not every_replica:
            return None
        self.t_ready = time.monotonic()
        self.at_ready = (self.data["samples"], self.data["generated_tokens"])
        self.data["load_wall_s"] = round(self.t_ready - self.t_spawn, 2)
        each = ", ".join(f"{v:.1f}" for v in self.data["load_s"].values())
        return (f"{len(self.data['load_s'])} replica(s) ready in {self.data['load_wall_s']:.1f} s wall (process start "
                f"included); model load per replica: {each} s\n"
                + startup_line(critical_replica(self.data["startup"]["workers"])))

    def answered(self, results: list[Result], counts: dict[str, float] | None = None, worker: str | None = None
                 ) -> None:
        """Results came (from `worker`), and what the worker's prefills did meanwhile (`Stream.counts`)."""
        if results and "first result" not in self.data["startup"]:
            self.data["startup"]["first result"] = round(time.monotonic() - self.t_spawn, 2)
        if results and worker is not None:  # when each worker last answered: the run's tail (`generation_done`)
            self.last_answer[worker] = time.monotonic()
        self.data["samples"] += len(results)
        self.data["generated_tokens"] += sum(r.n_tokens or 0 for r in results)
        if counts:
            prefill = self.data.setdefault("prefill", {})
            for k, v in counts.items():
                prefill[k] = round(prefill.get(k, 0) + v, 3)

    def generation_done(self) -> None:
        """Every sample has a result: throughput from the moment every replica was loaded."""
        if not self.t_ready:
            return
        wall = time.monotonic() - self.t_ready
        d = self.data
        d["generate_wall_s"] = round(wall, 2)
        d["samples_per_s"] = round((d["samples"] - self.at_ready[0]) / wall, 2)
        d["generated_tokens_per_s"] = round((d["generated_tokens"] - self.at_ready[1]) / wall, 1)
        if len(self.last_answer) > 1:  # from the first worker's last answer to the last one's: others worked on
            first, last = min(self.last_answer.values()), max(self.last_answer.values())  # while it idled
            d["tail"] = {"idle_tail_s": round(last - first, 2), "of_generation": round((last - first) / wall, 3),
                         "last_answer_s": {w: round(t - self.t_ready, 2) for w, t in self.last_answer.items()}}

    def worker_usage(self, worker: str, usage: dict[str, Any]) -> None:
        self.data["workers"][worker] = usage

    def unloaded(self, worker: str, seconds: float) -> None:
        self.data["unload_s"][worker] = round(seconds, 3)

    def stopped(self, t_stop: float) -> str | None:
        """Every worker is gone (asked to stop at `t_stop`): wall time and GPU-hours; the unload line, if any."""
        used = self.data["workers"].values()
        self.data["wall_s"] = round(time.monotonic() - self.t_spawn, 2)
        self.data["gpu_hours"] = round(sum(u["gpus"] * u["held_s"] for u in used) / 3600, 4)
        if not self.data["unload_s"]:
            return None
        self.data["unload_wall_s"] = round(time.monotonic() - t_stop, 3)
        return f"{len(self.data['unload_s'])} replica(s) unloaded in {self.data['unload_wall_s']:.2f} s wall"


def reuse_line(prefill: dict[str, float] | None) -> str:
    """What sharing prefixes saved (issue 37): images encoded of those in prompts, prompt tokens copied instead of
    prefilled, and the prefill seconds that saved, estimated at the stage's own prefill seconds a prefilled token."""
    if not prefill or not prefill.get("prompt_tokens"):
        return "-"  # whole batches (`generate`, diffusers, endpoints): nothing is shared
    if prefill.get("prefills_unshared"):
        return "off (model.share_prefixes: false)"
    shared, total = prefill.get("shared_tokens", 0), prefill["prompt_tokens"]
    parts = []
    if prefill.get("images"):
        parts.append(f"images encoded {int(prefill.get('images_encoded', 0)):,} of {int(prefill['images']):,}")
    parts.append(f"prompt tokens shared {int(shared):,} of {int(total):,} ({shared / total:.0%})")
    if shared and total > shared and prefill.get("prefill_s"):
        parts.append(f"~{prefill['prefill_s'] / (total - shared) * shared:.1f} s prefill saved")
    return "; ".join(parts)
