"""Fields the SDK's types let a caller send as null, sent so by the official SDK: null is the field's default."""

from __future__ import annotations

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.completions.conftest import publish, unique, usage_rows
from tests.completions.fault_server import CHAT, FaultServer
from tests.openai_compat.conftest import SyncFactory

VARIABLES = {"variables": {"name": "Ada"}}


async def test_stream_null_is_a_completion_not_streamed(
    client: httpx.AsyncClient, admin: dict[str, str], fault: FaultServer, admin_engine: AsyncEngine, sdk: SyncFactory
) -> None:
    """``stream: Optional[Literal[False]]`` in the SDK: ``stream=None`` sends ``"stream": null`` (it was a 422)."""
    model = unique("ok")
    await publish(client, admin, backend="fault", model=model, max_context_tokens=4096)
    openai_client = sdk(client, admin)

    completion = openai_client.chat.completions.create(
        model="prompt:greet", messages=[], stream=None, extra_body=VARIABLES
    )

    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "Hello from the"
    assert len(fault.seen(model, CHAT)) == 1
    rows = await usage_rows(client, admin, admin_engine)
    assert [(row["status"], row["stream"]) for row in rows] == [("ok", False)]


async def test_stream_null_on_the_completions_endpoint_is_a_completion_not_streamed(
    client: httpx.AsyncClient, admin: dict[str, str], fault: FaultServer, sdk: SyncFactory
) -> None:
    model = unique("ok")
    await publish(client, admin, backend="fault", model=model, kind="text", template="Once upon a {{ name }}")

    completion = sdk(client, admin).completions.create(
        model="prompt:greet", prompt=", there was", stream=None, extra_body=VARIABLES
    )

    assert completion.object == "text_completion"
    assert completion.choices[0].text == "Hello from the"
    assert [seen.payload["prompt"] for seen in fault.seen(model, "/v1/completions")] == ["Once upon a Ada, there was"]


async def test_prompt_null_runs_the_rendered_text_alone(
    client: httpx.AsyncClient, admin: dict[str, str], fault: FaultServer, sdk: SyncFactory
) -> None:
    """``prompt`` is ``Union[str, ..., None]`` in the SDK: ``prompt=None`` sends ``"prompt": null`` (it was a 422)."""
    model = unique("ok")
    await publish(client, admin, backend="fault", model=model, kind="text", template="Once upon a {{ name }}")

    completion = sdk(client, admin).completions.create(model="prompt:greet", prompt=None, extra_body=VARIABLES)

    assert completion.choices[0].text == "Hello from the"
    assert [seen.payload["prompt"] for seen in fault.seen(model, "/v1/completions")] == ["Once upon a Ada"]
