"""Requests per minute per API key: 429 with Retry-After, per-key overrides, shared through Redis in batches."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from registry.app import create_app
from registry.auth.keys import Scope
from registry.auth.principal import Principal
from registry.auth.rate_limit import WINDOW_SECONDS, RateLimiter
from registry.lib.errors import RateLimitedError
from registry.settings import Settings
from tests.conftest import REDIS_URL, AppClient, KeyFactory, problem, serve_in_process

LIST = "/v1/prompts"
Serve = Callable[..., Awaitable[AppClient]]


def mid_minute() -> float:
    """A clock held in the middle of one calendar minute: a test that took longer than a minute sees no reset."""
    return 1_800_000_000.0 + WINDOW_SECONDS / 2


@pytest.fixture
async def serve(settings: Settings, clean_database: AsyncEngine) -> AsyncIterator[Serve]:
    """Start apps on the test database with setting overrides (sync is manual: a long interval).

    The apps of one test share a Redis key prefix of their own: key ids restart in every test.
    """
    prefix = f"{settings.redis_key_prefix}{uuid.uuid4().hex[:8]}:"
    async with AsyncExitStack() as stack:

        async def start(**overrides: object) -> AppClient:
            options: dict[str, object] = {"rate_limit_sync_seconds": 3600, "redis_key_prefix": prefix, **overrides}
            app = create_app(settings.model_copy(update=options))
            app.state.runtime.rate_limiter.clock = mid_minute
            return await stack.enter_async_context(serve_in_process(app))

        yield start


def statuses(responses: list[object]) -> list[int]:
    return [r.status_code for r in responses]  # type: ignore[attr-defined]


async def test_a_key_over_its_limit_gets_429_with_retry_after(serve: Serve, make_key: KeyFactory) -> None:
    client = await serve(rate_limit_per_minute=3)
    key = await make_key(Scope.READ)

    responses = [await client.get(LIST, headers=key) for _ in range(4)]

    assert statuses(responses) == [200, 200, 200, 429]
    refused = responses[-1]
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert problem(refused)["type"] == "/problems/rate_limited"
    assert "3 requests per minute" in problem(refused)["detail"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60


async def test_keys_are_limited_independently(serve: Serve, make_key: KeyFactory) -> None:
    client = await serve(rate_limit_per_minute=2)
    first, second = await make_key(Scope.READ, name="first"), await make_key(Scope.READ, name="second")

    used_up = [await client.get(LIST, headers=first) for _ in range(3)]
    other = [await client.get(LIST, headers=second) for _ in range(2)]

    assert statuses(used_up) == [200, 200, 429]
    assert statuses(other) == [200, 200]


async def test_a_key_can_override_the_default_and_admins_can_change_it(
    serve: Serve, make_key: KeyFactory, admin: dict[str, str]
) -> None:
    client = await serve(rate_limit_per_minute=0)
    created = await client.post(
        "/v1/keys", json={"name": "batch-job", "scopes": ["read"], "rate_limit_per_minute": 2}, headers=admin
    )
    assert created.status_code == 201, created.text
    assert created.json()["api_key"]["rate_limit_per_minute"] == 2
    key = {"Authorization": f"Bearer {created.json()['key']}"}
    key_id = created.json()["api_key"]["id"]

    limited = [await client.get(LIST, headers=key) for _ in range(3)]
    changed = await client.put(f"/v1/keys/{key_id}/rate-limit", json={"per_minute": 0}, headers=admin)
    unlimited = [await client.get(LIST, headers=key) for _ in range(5)]
    bad = await client.put(f"/v1/keys/{key_id}/rate-limit", json={"per_minute": -1}, headers=admin)
    unknown = await client.put("/v1/keys/nosuchkey/rate-limit", json={"per_minute": 5}, headers=admin)
    audit = (await client.get("/v1/audit", headers=admin)).json()["items"]

    assert statuses(limited) == [200, 200, 429]
    assert changed.status_code == 200
    assert changed.json()["rate_limit_per_minute"] == 0
    assert statuses(unlimited) == [200] * 5  # the change dropped the cached key, so it applies at once
    assert bad.status_code == 422
    assert unknown.status_code == 404
    assert problem(unknown)["type"] == "/problems/api_key_not_found"
    assert any(entry["action"] == "api_key.rate_limit" for entry in audit)
    assert statuses([await client.get(LIST, headers=admin) for _ in range(5)]) == [200] * 5  # default: off


async def test_without_redis_each_process_counts_its_own_requests(serve: Serve, make_key: KeyFactory) -> None:
    client = await serve(rate_limit_per_minute=3, redis_url=None)
    key = await make_key(Scope.READ)

    before_sync = [await client.get(LIST, headers=key) for _ in range(2)]
    await client.app.state.runtime.rate_limiter.sync()
    after_sync = [await client.get(LIST, headers=key) for _ in range(2)]

    assert statuses(before_sync + after_sync) == [200, 200, 200, 429]


async def test_two_replicas_share_a_key_budget_through_redis(serve: Serve, make_key: KeyFactory) -> None:
    one, two = await serve(rate_limit_per_minute=10), await serve(rate_limit_per_minute=10)
    key = await make_key(Scope.READ)

    first = [await one.get(LIST, headers=key) for _ in range(6)]
    second = [await two.get(LIST, headers=key)]
    await one.app.state.runtime.rate_limiter.sync()
    await two.app.state.runtime.rate_limiter.sync()  # learns the total of both: 7
    second += [await two.get(LIST, headers=key) for _ in range(5)]
    await two.app.state.runtime.rate_limiter.sync()
    await one.app.state.runtime.rate_limiter.sync()
    last = await one.get(LIST, headers=key)

    assert statuses(first) == [200] * 6
    assert statuses(second) == [200] * 4 + [429] * 2  # the other replica's 6 were counted
    assert last.status_code == 429  # and this one learned of the other's


async def test_redis_going_away_falls_back_to_counting_in_process(serve: Serve, make_key: KeyFactory) -> None:
    client = await serve(rate_limit_per_minute=3, redis_url="redis://127.0.0.1:1/0")  # nothing listens there
    key = await make_key(Scope.READ)

    responses = [await client.get(LIST, headers=key) for _ in range(2)]
    await asyncio.wait_for(client.app.state.runtime.rate_limiter.sync(), timeout=10)
    responses += [await client.get(LIST, headers=key) for _ in range(2)]

    assert statuses(responses) == [200, 200, 200, 429]


async def test_admissions_made_during_a_sync_are_not_lost(redis_prefix: str) -> None:
    redis = Redis.from_url(REDIS_URL)
    prefix = f"{redis_prefix}{uuid.uuid4().hex[:8]}:"
    limiter = RateLimiter(redis, prefix, default_per_minute=5, clock=mid_minute)
    principal = Principal(1, "abc", "k", frozenset({"read"}))
    try:
        limiter.admit(principal)
        limiter.admit(principal)
        sync = asyncio.create_task(limiter.sync())
        await asyncio.sleep(0)  # the pipeline is on its way to Redis
        limiter.admit(principal)
        await sync
        await limiter.sync()
        limiter.admit(principal)
        limiter.admit(principal)

        with pytest.raises(RateLimitedError):
            limiter.admit(principal)
        assert [int(v) for v in await redis.mget(await redis.keys(f"{prefix}rate:1:*"))] == [3]
    finally:
        await redis.aclose()


async def test_a_new_calendar_minute_admits_a_key_again_with_retry_after_up_to_it() -> None:
    now = [mid_minute()]
    limiter = RateLimiter(None, "unused:", default_per_minute=2, clock=lambda: now[0])
    principal = Principal(1, "abc", "k", frozenset({"read"}))
    limiter.admit(principal)
    limiter.admit(principal)

    with pytest.raises(RateLimitedError) as refused:
        limiter.admit(principal)
    now[0] += WINDOW_SECONDS / 2
    await limiter.sync()
    limiter.admit(principal)

    assert refused.value.headers == {"Retry-After": str(int(WINDOW_SECONDS / 2))}
