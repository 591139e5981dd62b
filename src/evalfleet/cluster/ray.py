"""Ray: each replica is an actor placed by Ray on any node with the GPUs the plan gives it (a placement
group for a replica of several GPUs). The driver dials each actor over TCP and drives it through the
same connection protocol as a local worker process, so its queue, store and event loop do not change;
an actor that dies (or whose node does) closes the connection, and the driver requeues and replaces it.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import replace
from multiprocessing.connection import Client, Connection, Listener
from typing import Any

from evalfleet.engine.worker import worker_main
from evalfleet.errors import UserError
from evalfleet.plan.placement import Gpu, Machine
from evalfleet.records import WorkerSpec

START_TIMEOUT_S = 900.0
"""How long an actor may wait for resources (and start) before the run gives up."""
AUTHKEY = secrets.token_bytes(16)
"""Connections from this driver's actors are authenticated with it."""


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs Ray: pip install 'evalfleet[ray]'") from None
    return ray


def connect(address: str | None) -> None:
    """Join the cluster at `address` (`auto`: the one started on this node), or start a local one."""
    ray = _ray()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {k: v for k, v in os.environ.items() if k == "PYTHONPATH"}})


def cluster_machine() -> Machine:
    """The cluster as one pool: every GPU (their memory probed on one GPU node) and every CPU."""
    ray = _ray()
    resources = ray.cluster_resources()
    n_gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
    if not n_gpus:
        return Machine([], cpus)

    @ray.remote(num_gpus=1)
    def probe() -> Gpu:
        from evalfleet.plan.placement import probe_machine

        return probe_machine().gpus[0]

    gpu = ray.get(probe.remote(), timeout=START_TIMEOUT_S)
    return Machine([replace(gpu, index=i, id=f"ray{i}") for i in range(n_gpus)], cpus)


class RayProcess:
    """A replica as a Ray actor, with what the driver uses of a local worker process."""

    sentinel = None  # no OS handle: the connection's end tells the driver the actor is gone

    def __init__(self, spec: WorkerSpec, model_json: str, batch_size: int, output_dir: str) -> None:
        ray = _ray()
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        k = len(spec.gpus)
        options: dict[str, Any] = {"num_gpus": k, "num_cpus": 1 if k else spec.threads, "max_restarts": 0}
        if k > 1:  # the replica's GPUs reserved together, on one node
            group = placement_group([{"GPU": k, "CPU": 1}], strategy="STRICT_PACK")
            ray.get(group.ready(), timeout=START_TIMEOUT_S)
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(group)
        self.actor = ray.remote(_Replica).options(**options).remote()
        try:
            address, self.pid = ray.get(self.actor.listen.remote(AUTHKEY), timeout=START_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise UserError(f"Ray could not place replica {spec.name} ({k} GPU(s)) within {START_TIMEOUT_S:.0f} s: "
                            "the cluster lacks the resources") from None
        self.done = self.actor.serve.remote(spec, model_json, batch_size, output_dir)
        self.conn: Connection = Client(address, authkey=AUTHKEY)
        self.exitcode: int | None = None

    def join(self, timeout: float | None = None) -> None:
        ray = _ray()
        ready, _ = ray.wait([self.done], timeout=timeout)
        if ready and self.exitcode is None:
            try:
                ray.get(self.done)
                self.exitcode = 0
            except ray.exceptions.RayError:  # the actor (or its node) died
                self.exitcode = -1
            ray.kill(self.actor)

    def is_alive(self) -> bool:
        return self.exitcode is None and not _ray().wait([self.done], timeout=0)[0]

    def kill(self) -> None:
        _ray().kill(self.actor)
        self.exitcode = self.exitcode if self.exitcode is not None else -9


class _Replica:
    """The actor: listens on its node for the driver, then runs the worker loop on that connection."""

    def listen(self, authkey: bytes) -> tuple[tuple[str, int], int]:
        import ray

        self.node = ray.util.get_node_ip_address()
        self.listener = Listener((self.node, 0), authkey=authkey)
        return self.listener.address, os.getpid()

    def serve(self, spec: WorkerSpec, model_json: str, batch_size: int, output_dir: str) -> None:
        import ray

        conn = self.listener.accept()
        gpus = tuple(str(g) for g in ray.get_gpu_ids())  # Ray's assignment, already in CUDA_VISIBLE_DEVICES
        worker_main(conn, replace(spec, gpus=gpus), model_json, batch_size, output_dir, where=self.node)
        conn.close()


class RayLauncher:
    """`engine.launcher.Launcher` for Ray: each worker an actor, dialled over TCP."""

    def start(self, spec: WorkerSpec, model_json: str, batch_size: int, output_dir: str
              ) -> tuple[RayProcess, Connection]:
        proc = RayProcess(spec, model_json, batch_size, output_dir)
        return proc, proc.conn
