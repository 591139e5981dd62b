"""OpenAI-compatible chat-completions endpoints (vLLM, SGLang, llama.cpp, hosted APIs) as a backend.

A batch's requests go out concurrently, at most `max_in_flight` per endpoint, each to the endpoint with
the fewest requests in flight. The openai client retries with exponential backoff on connection errors,
timeouts, 429 and 5xx. The API key is read from the environment variable the config names and is never
written anywhere. Images travel as PNG data URLs.
"""

from __future__ import annotations

import base64
import io
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from evalfleet.backends.base import Backend, Generation, Prepared, ReplicaLost, Request
from evalfleet.config import ModelConfig


def data_url(image: Any) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


class OpenAIBackend(Backend):
    """Chat completions against one or more base URLs (e.g. http://host:8000/v1)."""

    def __init__(self, cfg: ModelConfig, urls: list[str], model: str, alive: Any = None) -> None:
        """`model`: the name the endpoints serve; `alive`: a check that the server behind `urls` still runs."""
        from openai import OpenAI

        s = cfg.server
        key = os.environ.get(s.api_key_env, "") if s.api_key_env else "none"
        if s.api_key_env and not key:
            raise ValueError(f"server.api_key_env names {s.api_key_env}, which is not set")
        self.cfg, self.model, self.alive = cfg, model, alive
        self.clients = [OpenAI(base_url=u, api_key=key, max_retries=s.retries, timeout=s.timeout_s) for u in urls]
        self.in_flight = [0] * len(urls)
        self.lock = threading.Condition()
        self.pool = ThreadPoolExecutor(s.max_in_flight * len(urls), thread_name_prefix="request")
        self.label = f"{model} @ {', '.join(urls)}"

    def load(self) -> None:
        """Nothing to load: the endpoints serve already."""

    def prepare(self, requests: list[Request]) -> Prepared:
        """Chat messages (system prompt, few-shot turns, images as data URLs, the prompt) for each request;
        the stored prompt is the messages as JSON with each image as `<image>`."""
        batch, shown = [], []
        for r in requests:
            urls = [data_url(img) for img in r.images]
            batch.append(r.messages(self.cfg.system_prompt, self._content(r.prompt, urls)))
            shown.append(json.dumps(r.messages(self.cfg.system_prompt, self._content(r.prompt, ["<image>"] * len(urls))),
                                    ensure_ascii=False))
        return Prepared(batch, requests, shown)

    @staticmethod
    def _content(prompt: str, image_urls: list[str]) -> str | list[dict[str, Any]]:
        if not image_urls:
            return prompt
        return [*({"type": "image_url", "image_url": {"url": u}} for u in image_urls), {"type": "text", "text": prompt}]

    def _endpoint(self) -> int:
        """The least-loaded endpoint with room, waiting for one if all are full."""
        with self.lock:
            while min(self.in_flight) >= self.cfg.server.max_in_flight:
                self.lock.wait()
            i = self.in_flight.index(min(self.in_flight))
            self.in_flight[i] += 1
            return i

    def _one(self, messages: list[dict[str, Any]], seed: int) -> Generation:
        gen = self.cfg.generation
        i = self._endpoint()
        try:
            reply = self.clients[i].chat.completions.create(
                model=self.model, messages=messages, max_tokens=gen.max_new_tokens, temperature=gen.temperature,
                top_p=gen.top_p, seed=seed)
        finally:
            with self.lock:
                self.in_flight[i] -= 1
                self.lock.notify()
        usage = reply.usage
        return Generation(reply.choices[0].message.content or "", usage.completion_tokens if usage else 0)

    def generate(self, prepared: Prepared) -> list[Generation]:
        futures = [self.pool.submit(self._one, m, prepared.seed) for m in prepared.inputs]
        out = []
        for f in futures:
            try:
                out.append(f.result())
            except Exception as err:
                if self.alive is not None and not self.alive():
                    raise ReplicaLost("the server of this replica stopped") from err
                out.append(Generation("", 0, error=f"{type(err).__name__}: {err}"))
        return out
