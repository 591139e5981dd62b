"""Managed inference servers: each replica (worker) starts one server on its GPUs from a command template,
waits until it answers, talks to it through the OpenAI-compatible path, and stops it when done.

The server is the worker's child, in its own process group, killed with the worker even by SIGKILL
(PR_SET_PDEATHSIG): no orphans. A server that dies makes the worker fail with `ReplicaLost`; the driver
requeues the batch and starts a new worker, hence a new server. Logs go to RUN_DIR/servers/.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from evalfleet.backends.openai_backend import OpenAIBackend
from evalfleet.config import ModelConfig
from evalfleet.stopping import STOP_SIGNALS

SERVED_NAME = "evalfleet"
"""The model name every managed server is started with, and requests use."""
PRESETS = {
    "vllm": "vllm serve {model} --host 127.0.0.1 --port {port} --tensor-parallel-size {gpus} "
            "--served-model-name {name}",
    "sglang": f"{sys.executable} -m sglang.launch_server --model-path {{model}} --host 127.0.0.1 --port {{port}} "
              "--tp-size {gpus} --served-model-name {name}",
    "llama.cpp": f"{sys.executable} -m llama_cpp.server --model {{model}} --host 127.0.0.1 --port {{port}} "
                 "--model_alias {name} --n_gpu_layers {gpu_layers} --n_threads {threads} --n_threads_batch {threads}",
}
"""Command templates; fields: model, port, gpus (GPUs of the replica), gpu_layers (-1 on GPUs, else 0),
threads (CPU threads of the replica: llama.cpp's prompt threads default to every CPU of the machine, which
oversubscribes the replica's share of them), name."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_worker() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    for sig in STOP_SIGNALS:  # the worker ignores them (its driver stops it); the server must not inherit that
        signal.signal(sig, signal.SIG_DFL)


class ManagedServer(OpenAIBackend):
    """An OpenAIBackend whose endpoint is a server this worker started."""

    def __init__(self, cfg: ModelConfig, n_gpus: int, output_dir: str) -> None:
        s = cfg.server
        template = s.command or PRESETS[s.preset or "vllm"]
        port = free_port()
        self.command = template.format(model=shlex.quote(cfg.path), port=port, gpus=max(1, n_gpus), name=SERVED_NAME,
                                       gpu_layers=-1 if n_gpus else 0, threads=_threads())
        logs = Path(output_dir) / "servers"
        logs.mkdir(parents=True, exist_ok=True)
        self.log_path = logs / f"server-{os.getpid()}-{port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        # A local server that stops answering is most likely dead: few retries, then the replica is replaced.
        local = cfg.model_copy(update={"server": s.model_copy(update={"retries": min(s.retries, 2)})})
        url = f"http://127.0.0.1:{port}/v1"
        self.health_url = url + "/models"
        super().__init__(local, [url], SERVED_NAME, alive=lambda: self.proc is not None and self.proc.poll() is None)
        self.label = f"{s.preset or 'custom'} server :{port}"

    def load(self) -> None:
        """Start the server and wait until it answers."""
        with self.log_path.open("w") as log:
            log.write(f"$ {self.command}\n")
            log.flush()
            self.proc = subprocess.Popen(shlex.split(self.command), stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, preexec_fn=_die_with_worker)  # noqa: PLW1509 (prctl only)
        self.label += f" (pid {self.proc.pid})"
        self._wait_healthy(self.health_url, self.cfg.server.startup_timeout_s)

    def _wait_healthy(self, url: str, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text()[-2000:]
                raise RuntimeError(f"the server exited with code {self.proc.returncode} while starting "
                                   f"(log {self.log_path}):\n{tail}")
            try:
                with urllib.request.urlopen(url, timeout=5) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        self.close()
        raise RuntimeError(f"the server did not answer {url} within {timeout:.0f} s (log {self.log_path})")

    def close(self) -> None:
        """Stop the server and everything it started."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.pool.shutdown(wait=False, cancel_futures=True)


def _threads() -> int:
    """The worker's CPU threads (set from its placement)."""
    import torch

    return torch.get_num_threads()
