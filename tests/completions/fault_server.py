"""An OpenAI-compatible server that misbehaves on cue, for the resilience tests.

A real engine cannot be made to time out or reset mid-stream when a test
wants it to, so this one does. The request's model name picks the behaviour:

    ok                      three tokens, usage, [DONE]
    status:CODE:N           answer CODE to the first N requests (N may be "all"), then ok
    context                 answer 400 with vLLM's message for a prompt longer than the model's context
    slow-headers:S          wait S seconds before answering at all
    slow-headers:S:STEP     the same, plus STEP seconds times the request's number modulo 20 (a spread of
                            delays that does not depend on how busy the machine is)
    slow-first:S            answer at once, but wait S seconds before the first token
    trickle:S               one token every S seconds (max_tokens of them, default 100), on a fixed schedule
    reset-after:K           K tokens, then drop the connection
    stall-after:K           K tokens in one write, then nothing until the client goes away
    malformed               a chunk that is not JSON
    malformed-after:K       K tokens, then a chunk that is not JSON
    malformed-joined:K      the same, all in one write (so one read upstream sees it all)
    say:TEXT                answer TEXT (percent-encoded in the name, see ``say``), 3 characters a chunk
    finish:N                as ok, with a finish reason of its own N characters long (digits, "0123456789...")
    errors:R                answer 500 to about a fraction R of requests (errors:0.10: about 10%), ok otherwise
    latency:LOW:HIGH        wait LOW to HIGH milliseconds (spread evenly) before answering, then ok
    errors:R,latency:LOW:HIGH   both: the wait, then a 500 or ok

``errors`` and ``latency`` draw each request's fate from a hash of the model name (tag included) and the
request's number, never from the clock or a global random state: the same names give the same sequence in
every run, and two names (two tags) give independent ones, as two versions of one backend would.

Like vLLM, every chunk carries the usage so far when the request asks for
``stream_options.continuous_usage_stats``; a behaviour ending in "+usage-at-end"
ignores that, like a server that only reports usage in its last chunk.
Anything after a "/" is a tag that keeps the counters of different tests apart.
``/tokenize`` counts words (plus 3 for chat) and reports a context of 4096.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

TOKENS = ["Hello", " from", " the", " fault", " server"]
CHAT = "/v1/chat/completions"


@dataclass
class SeenRequest:
    path: str
    model: str
    payload: dict[str, Any]
    disconnected: bool = False
    finished: bool = False
    sent: int = 0  # tokens streamed to the client
    headers: dict[str, str] = field(default_factory=dict)  # as received, names in lower case


@dataclass
class FaultServer:
    requests: list[SeenRequest] = field(default_factory=list)
    counters: Counter[str] = field(default_factory=Counter)

    def seen(self, model: str, path: str | None = None) -> list[SeenRequest]:
        return [r for r in self.requests if r.model == model and (path is None or r.path == path)]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        payload = json.loads(body or b"{}")
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        seen = SeenRequest(scope["path"], str(payload.get("model", "")), payload, headers=headers)
        self.requests.append(seen)
        if scope["path"] == "/tokenize":
            await self._tokenize(send, payload)
            return
        number = self.counters[seen.model]
        self.counters[seen.model] += 1
        behaviour, _, _tag = seen.model.partition("/")
        behaviour, _, modifier = behaviour.partition("+")
        name, _, arg = behaviour.partition(":")
        options = seen.payload.get("stream_options") or {}
        continuous = bool(options.get("include_usage") and options.get("continuous_usage_stats"))
        reply = _Reply(send, seen, continuous=continuous and modifier != "usage-at-end")
        try:
            await self._complete(reply, receive, seen, name, arg, number)
        finally:
            seen.finished = True

    async def _tokenize(self, send: Any, payload: dict[str, Any]) -> None:
        if "messages" in payload:
            count = 3 + sum(len(m["content"].split()) for m in payload["messages"])
        else:
            count = len(str(payload.get("prompt", "")).split())
        await _json(send, 200, {"count": count, "max_model_len": CONTEXT, "tokens": []})

    async def _complete(self, reply: _Reply, receive: Any, seen: SeenRequest, name: str, arg: str, number: int) -> None:
        send = reply.send
        max_tokens = int(seen.payload.get("max_tokens") or 100)
        if name == "status":
            code, _, times = arg.partition(":")
            if times == "all" or number < int(times or 1):
                headers = [(b"retry-after", b"0")] if code in ("429", "503") else []
                await _json(send, int(code), {"error": {"message": f"injected {code}"}}, headers)
                return
        if name == "context":
            message = f"This model's maximum context length is {CONTEXT} tokens. However, you requested more."
            await _json(send, 400, {"error": {"message": message}})
            return
        if name in SPREAD:
            failed, delay = spread(seen.model, f"{name}:{arg}", number)
            await asyncio.sleep(delay)
            if failed:
                await _json(send, 500, {"error": {"message": "injected 500"}})
                return
        if name == "slow-headers":
            delay, _, step = arg.partition(":")
            await asyncio.sleep(float(delay) + (number % 20) * float(step or 0))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await reply.role()
        if name == "malformed":
            await send({"type": "http.response.body", "body": b"data: {not json\n\n", "more_body": True})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
            return
        if name == "say":
            text = urllib.parse.unquote(arg)
            for start in range(0, len(text), SAY_CHUNK):
                event = reply.text_event(text[start : start + SAY_CHUNK])
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await reply.finish("stop")
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
            return
        if name == "slow-first":
            await asyncio.sleep(float(arg))
        if name == "trickle":
            count, interval = max_tokens, float(arg)
        elif name == "malformed-joined":
            events = b"".join(reply.token_event(index) for index in range(int(arg)))
            body = events + b"data: {not json\n\ndata: [DONE]\n\n"
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        elif name in ("reset-after", "malformed-after", "stall-after"):
            count, interval = int(arg), 0.0
        else:
            count, interval = min(max_tokens, 3), 0.0
        disconnect = asyncio.ensure_future(_wait_disconnect(receive))
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            if name == "stall-after":
                body = b"".join(reply.token_event(index) for index in range(count))
                await send({"type": "http.response.body", "body": body, "more_body": True})
                await disconnect
                seen.disconnected = True
                return
            for index in range(count):
                if interval:  # on a fixed schedule: a late wake-up does not delay the tokens after it
                    await asyncio.sleep(max(0.0, started + (index + 1) * interval - loop.time()))
                if disconnect.done():
                    seen.disconnected = True
                    return
                await send({"type": "http.response.body", "body": reply.token_event(index), "more_body": True})
            if name == "reset-after":
                raise ConnectionResetError("injected reset")
            if name == "malformed-after":
                await send({"type": "http.response.body", "body": b"data: {not json\n\n", "more_body": True})
                await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
                return
            reason = "length" if count >= max_tokens else "stop"
            if name == "finish":
                reason = ("0123456789" * (int(arg) // 10 + 1))[: int(arg)]
            await reply.finish(reason)
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
        except OSError:
            seen.disconnected = True
        finally:
            disconnect.cancel()


SPREAD = ("errors", "latency")


def draw(model: str, number: int, what: str) -> float:
    """A number in [0, 1) fixed by the model name, the request's number and what it decides."""
    digest = hashlib.sha256(f"{model}|{number}|{what}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def spread(model: str, behaviour: str, number: int) -> tuple[bool, float]:
    """Whether request ``number`` fails, and how long it waits (seconds), under ``errors:R,latency:LOW:HIGH``."""
    failed, delay = False, 0.0
    for part in behaviour.split(","):
        name, _, arg = part.partition(":")
        if name == "errors":
            failed = draw(model, number, "errors") < float(arg)
        elif name == "latency":
            low, _, high = arg.partition(":")
            delay = (float(low) + (float(high or low) - float(low)) * draw(model, number, "latency")) / 1000
        else:
            raise ValueError(f"unknown part {part!r} of {behaviour!r}")
    return failed, delay


PROMPT_TOKENS = 7
CONTEXT = 4096  # the model's context that /tokenize and the context-length answer report
SAY_CHUNK = 3


def say(text: str) -> str:
    """The behaviour that answers ``text``, in chunks of 3 characters (so a word often spans two)."""
    return "say:" + urllib.parse.quote(text, safe="")


class _Reply:
    """The chunks of one streamed answer, in the endpoint's shape, with vLLM's usage reporting."""

    def __init__(self, send: Any, seen: SeenRequest, *, continuous: bool) -> None:
        self.send = send
        self.seen = seen
        self.chat = seen.path == CHAT
        self.continuous = continuous

    def _chunk(self, choices: list[dict[str, Any]]) -> bytes:
        chunk: dict[str, Any] = {"choices": choices}
        if self.continuous:
            chunk["usage"] = _usage(self.seen.sent)
        return b"data: " + json.dumps(chunk).encode() + b"\n\n"

    async def role(self) -> None:
        if self.chat:
            body = self._chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}}])
            await self.send({"type": "http.response.body", "body": body, "more_body": True})

    def token_event(self, index: int) -> bytes:
        """The event of token ``index``; counted as sent when made (it is sent right after)."""
        token = TOKENS[index % len(TOKENS)]
        self.seen.sent += 1
        return self._chunk([{"index": 0, "delta": {"content": token}} if self.chat else {"index": 0, "text": token}])

    def text_event(self, text: str) -> bytes:
        """An event carrying ``text``, counted as one token."""
        self.seen.sent += 1
        return self._chunk([{"index": 0, "delta": {"content": text}} if self.chat else {"index": 0, "text": text}])

    async def finish(self, reason: str) -> None:
        last = {"index": 0, "finish_reason": reason} | ({"delta": {}} if self.chat else {"text": ""})
        await _event(self.send, {"choices": [last], **({"usage": _usage(self.seen.sent)} if self.continuous else {})})
        await _event(self.send, {"choices": [], "usage": _usage(self.seen.sent)})


def _usage(completion_tokens: int) -> dict[str, int]:
    total = PROMPT_TOKENS + completion_tokens
    return {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": completion_tokens, "total_tokens": total}


async def _wait_disconnect(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _event(send: Any, data: dict[str, Any]) -> None:
    await send(
        {"type": "http.response.body", "body": b"data: " + json.dumps(data).encode() + b"\n\n", "more_body": True}
    )


async def _json(send: Any, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None) -> None:
    raw = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": raw, "more_body": False})
