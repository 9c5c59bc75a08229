"""Tracked events leave in batches in the background, and none is lost or counted twice."""

from __future__ import annotations

import asyncio
import sys
import textwrap

import httpx
from prompt_registry_client import AsyncRegistryClient, BatchPolicy, CachePolicy, RegistryClient
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.clients.conftest import Live, Recorder, RecordingTransport
from tests.conftest import count_rows

NO_FEED = CachePolicy(watch_changes=False)


def metric(live: Live, key: str = "score") -> None:
    live.ok(live.admin.post("/v1/metrics", json={"key": key, "kind": "continuous", "aggregation": "sum"}))


async def test_every_tracked_event_is_recorded_once_the_client_closes(live: Live, clean_database: AsyncEngine) -> None:
    metric(live)
    recorder = Recorder()
    transport = RecordingTransport(recorder)
    batches = BatchPolicy(flush_interval=30, max_batch=500)  # only full batches leave before close
    registry = RegistryClient(live.url, live.key, transport=transport, batches=batches, cache=NO_FEED)

    def app_thread() -> None:
        with registry:
            for i in range(1234):
                registry.track(f"user-{i % 50}", "score", float(i))

    await asyncio.to_thread(app_thread)
    assert await count_rows(clean_database, "outcome_events") == 1234
    assert 3 <= recorder.count("POST /v1/events") <= 5, "batches of at most 500, not one request per event"
    assert registry.pending_events == 0
    assert registry.dropped_events == 0


async def test_a_batch_sent_again_after_its_answer_was_lost_is_counted_once(
    live: Live, clean_database: AsyncEngine
) -> None:
    metric(live)
    recorder = Recorder()
    lost: list[httpx.Request] = []

    def lose_the_first_answer(request: httpx.Request) -> bool:
        if request.url.path == "/v1/events" and not lost:
            lost.append(request)
            return True
        return False

    transport = RecordingTransport(recorder, lose_answer=lose_the_first_answer)

    def app_thread() -> list[str]:
        with RegistryClient(live.url, live.key, transport=transport, cache=NO_FEED) as registry:
            keys = [registry.track("user-1", "score", float(i)) for i in range(20)]
            assert registry.flush()
        return keys

    keys = await asyncio.to_thread(app_thread)
    assert lost, "the first batch reached the service but its answer did not come back"
    assert recorder.statuses["POST /v1/events 200"] == 2, "sent twice"
    assert await count_rows(clean_database, "outcome_events") == 20, "counted once"
    assert len(set(keys)) == 20


async def test_the_async_client_sends_its_events_on_aclose(live: Live, clean_database: AsyncEngine) -> None:
    metric(live)
    batches = BatchPolicy(flush_interval=30)
    async with AsyncRegistryClient(live.url, live.key, batches=batches, cache=NO_FEED) as registry:
        for i in range(40):
            registry.track("user-2", "score", 1.0 + i)
        assert registry.pending_events == 40
    assert await count_rows(clean_database, "outcome_events") == 40


async def test_events_still_queued_at_interpreter_exit_are_sent(live: Live, clean_database: AsyncEngine) -> None:
    metric(live)
    script = textwrap.dedent(
        f"""
        import asyncio
        from prompt_registry_client import AsyncRegistryClient, BatchPolicy, RegistryClient

        sync = RegistryClient({live.url!r}, {live.key!r}, batches=BatchPolicy(flush_interval=60))
        for i in range(7):
            sync.track("exit-sync", "score", 1.0)

        async def main():
            client = AsyncRegistryClient({live.url!r}, {live.key!r}, batches=BatchPolicy(flush_interval=60))
            for i in range(5):
                client.track("exit-async", "score", 1.0)
            return client

        kept = asyncio.run(main())  # the loop ends with the client neither flushed nor closed
        """
    )
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", script, stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    assert await count_rows(clean_database, "outcome_events") == 12
