"""A request the OpenAI door refuses for the prompt's kind never reached a variant: no exposure is recorded."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.completions.conftest import unique
from tests.seams.conftest import Served, eventually, rows, started_experiment
from tests.seams.test_seams_dec5 import ADA, config, prompt, until_routed


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "litestar"])
@pytest.mark.parametrize("stream", [False, True])
async def test_a_chat_prompt_asked_for_a_text_completion_is_refused_without_exposing_the_unit(
    served: Served, admin: dict[str, str], clean_database: AsyncEngine, fast_path: bool, stream: bool
) -> None:
    client = await served(fast_path=fast_path, experiment_exposure_flush_seconds=0.02)
    await config(client, admin, "main", backend="fault", model=unique("ok"))
    await prompt(client, admin, "Say hello to {{ name }}.", "Greet {{ name }}.")
    await started_experiment(client, admin, "kinds")
    await until_routed(client, admin, "someone")
    body = {"model": "prompt:greet", "prompt": "", "variables": ADA, "user": "visitor", "stream": stream}

    refused = await client.post("/v1/completions", json=body, headers=admin)

    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["param"] == "model"
    # A unit routed after the refusal: once its exposure is written, one recorded before it would be too.
    await until_routed(client, admin, "later")
    await eventually(lambda: _exposed(clean_database, "later"), "the exposure of the unit routed after the refusal")
    assert not await _exposed(clean_database, "visitor")


async def _exposed(engine: AsyncEngine, unit: str) -> bool:
    return bool(await rows(engine, "SELECT unit FROM exposures WHERE unit = :unit", unit=unit))
