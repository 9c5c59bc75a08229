"""A stand-in OpenAI-compatible backend whose answers the test scripts through the prompt itself.

The answer is the request's last message (or its prompt), so a template like ``{{ answer }}`` makes
an item answer its own ``answer`` variable: pass rates are known before the run. The model name
picks the behaviour:

    echo            answer at once; an answer starting with "hold" waits until the test sets ``released``
    down            503 to every request
    down-then-echo  503 until ``up`` is set, then echo
    unstructured    400 to a request asking for ``response_format`` (a backend without structured output), else echo
    throttled       429 with ``Retry-After: 120`` to every request

Usage: 5 prompt tokens, 1 completion token per word of the answer.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from typing import Any

CHAT = "/v1/chat/completions"


@dataclass
class StandIn:
    requests: list[dict[str, Any]] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)
    up: threading.Event = field(default_factory=threading.Event)

    def completions(self, model: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.requests if model is None or r["model"] == model]

    def asked(self, content: str) -> int:
        """How many completions were asked with ``content`` as the last message."""
        return sum(1 for r in self.requests if r.get("messages") and r["messages"][-1]["content"] == content)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        payload = json.loads(body or b"{}")
        if scope["path"] == "/tokenize":
            await _json(send, 200, {"count": 10, "max_model_len": 4096, "tokens": []})
            return
        self.requests.append(payload)
        model = str(payload.get("model", ""))
        if model == "down" or (model == "down-then-echo" and not self.up.is_set()):
            await _json(send, 503, {"error": {"message": "down"}}, [(b"retry-after", b"0")])
            return
        if model == "unstructured" and "response_format" in payload:
            await _json(send, 400, {"error": {"message": "response_format is not supported by this model"}})
            return
        if model == "throttled":
            await _json(send, 429, {"error": {"message": "slow down"}}, [(b"retry-after", b"120")])
            return
        answer = payload["messages"][-1]["content"] if "messages" in payload else str(payload.get("prompt", ""))
        if answer.startswith("hold"):
            await asyncio.to_thread(self.released.wait)
        await _stream(send, answer, chat=scope["path"] == CHAT)


async def _stream(send: Any, answer: str, *, chat: bool) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    choice: dict[str, Any] = {"index": 0, "delta": {"content": answer}} if chat else {"index": 0, "text": answer}
    last: dict[str, Any] = {"index": 0, "finish_reason": "stop", **({"delta": {}} if chat else {"text": ""})}
    usage = {"prompt_tokens": 5, "completion_tokens": len(answer.split()), "total_tokens": 5 + len(answer.split())}
    for chunk in ({"choices": [choice]}, {"choices": [last]}, {"choices": [], "usage": usage}):
        await send(
            {"type": "http.response.body", "body": b"data: " + json.dumps(chunk).encode() + b"\n\n", "more_body": True}
        )
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


async def _json(send: Any, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps(body).encode(), "more_body": False})
