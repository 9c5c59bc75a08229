"""Fixtures of the webhook tests: a receiver on this machine that answers from a script."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from litestar import Litestar, Request, post
from litestar.exceptions import HTTPException

from tests.conftest import serve_over_http


@dataclass
class Receiver:
    """A webhook receiver that answers from a script of status codes, then 200."""

    url: str = ""
    script: list[int] = field(default_factory=list)
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.received]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver()

    @post("/hook", status_code=200)
    async def hook(request: Request[Any, Any, Any]) -> dict[str, str]:
        state.received.append((dict(request.headers), await request.body()))
        status = state.script.pop(0) if state.script else 200
        if status != 200:
            raise HTTPException(status_code=status, detail="scripted failure")
        return {"ok": "yes"}

    async with serve_over_http(Litestar([hook])) as base:
        state.url = f"{base}/hook"
        yield state
