"""The console's stop page reads the prompt's production version once: the gate's refusals and the "stays
production" line are judged against the same reading (two readings could straddle a promotion)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from registry.auth.principal import Actor
from registry.console.experiments import ExperimentPages
from registry.prompts.models import PromptVersion
from registry.runtime import Runtime
from tests.conftest import AppClient
from tests.experiments.conftest import make_experiment, make_metric, make_prompt


def counting(read: Callable[[int], Awaitable[dict[Any, PromptVersion]]], calls: list[int]) -> Any:
    async def counted(prompt_id: int) -> dict[Any, PromptVersion]:
        calls.append(prompt_id)
        return await read(prompt_id)

    return counted


async def test_the_stop_page_reads_the_production_version_once(client: AppClient, admin: dict[str, str]) -> None:
    runtime: Runtime = client.app.state.runtime
    await make_prompt(client, admin, "stop-page-read")
    await make_metric(client, admin, "converted")
    await make_experiment(client, admin, "stop-page-read", "stop-page-read")
    holders_read: list[int] = []

    async with runtime.sessionmaker() as session:
        pages = ExperimentPages(session, runtime.prompt_limits)
        repository = pages.experiments.prompts.workflow.repository
        repository.holders = counting(repository.holders, holders_read)  # type: ignore[method-assign]
        page = await pages.stop_page("stop-page-read", Actor("alice"))

    assert (page.production, page.cannot_win) == (1, {})
    assert len(holders_read) == 1
