"""Delivers webhooks: fans outbox events out to subscribers, then sends due deliveries.

Runs as a periodic job in every replica. Rows are claimed with
``FOR UPDATE SKIP LOCKED`` and a lease, so replicas share the work and a crashed
replica's claims expire; no network call happens inside a transaction.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import aiohttp
import structlog
from prometheus_client import CollectorRegistry, Counter
from prompt_registry_client.webhooks import SIGNATURE_HEADER, signature_header
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from yarl import URL

from registry import __version__
from registry.auth.audit import AuditLog
from registry.auth.principal import Actor
from registry.db.base import utcnow
from registry.db.text import without_nul
from registry.lib.http_client import read_at_most
from registry.webhooks.guard import AddressGuard, AddressRefusedError, WebhookHttp
from registry.webhooks.models import Webhook, WebhookDelivery
from registry.webhooks.repository import WebhookRepository
from registry.webhooks.rules import failing_too_long, retry_after_seconds, retry_delay, subscribes
from registry.webhooks.service import abandoned_note, delivery_body

logger = structlog.get_logger("registry.webhooks")

LEASE = timedelta(seconds=60)  # at least; longer than the delivery timeout, see ``WebhookDispatcher.lease``
BATCH = 50
KEPT = timedelta(days=30)  # how long the delivery log keeps a finished delivery, and the outbox a sent event
PURGE_BATCH = 1000
ANSWER_HEAD = 200  # bytes of a receiver's answer kept in the delivery log; the rest is never read
DISPATCHER = Actor("webhook-dispatcher")  # who disables a failing webhook, in the audit log
GONE_REASON = "the receiver answered 410 Gone"


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    timeout_seconds: float
    max_attempts: int
    retry_base_seconds: float
    retry_max_seconds: float
    # A webhook is disabled once this many attempts in a row failed, the first of them ``disable_after`` ago.
    disable_after_failures: int = 20
    disable_after: timedelta = timedelta(days=5)


@dataclass(slots=True)
class _Round:
    """One webhook's attempts in one round of ``deliver_due``."""

    delivered: bool = False
    failures: int = 0
    first_failure_at: datetime | None = None
    gone: bool = False
    last_error: str = ""


class WebhookDispatcher:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        http: WebhookHttp,
        policy: DeliveryPolicy,
        registry: CollectorRegistry,
        *,
        clock: Callable[[], datetime] = utcnow,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._http = http
        self._policy = policy
        self._clock = clock
        self._jitter = jitter
        self._outcomes = Counter(
            "registry_webhook_deliveries_total", "Webhook delivery attempts by outcome.", ["outcome"], registry=registry
        )
        self._disabled = Counter(
            "registry_webhook_disabled_total",
            "Webhooks disabled by the dispatcher, by reason (failing: every attempt failed for long enough; "
            "gone: the receiver answered 410 Gone).",
            ["reason"],
            registry=registry,
        )

    @property
    def lease(self) -> timedelta:
        """How long a claimed delivery stays this replica's: past its attempt's timeout, so another replica
        never sends a delivery that is still being sent (a timeout over the lease sent it twice)."""
        return max(LEASE, timedelta(seconds=self._policy.timeout_seconds + 30))

    @property
    def guard(self) -> AddressGuard:
        """The address rules webhooks are created and delivered under."""
        return self._http.guard

    async def close(self) -> None:
        await self._http.close()

    async def run_once(self) -> None:
        await self.fan_out()
        await self.deliver_due()
        await self.purge()

    async def purge(self) -> int:
        """Forget sent events and finished deliveries after ``KEPT``: both tables grew by every event forever."""
        async with self._sessionmaker() as session, session.begin():
            return await WebhookRepository(session).purge_finished(self._clock() - KEPT, PURGE_BATCH)

    async def fan_out(self) -> int:
        """Turn new outbox events into one pending delivery per subscribed webhook."""
        async with self._sessionmaker() as session, session.begin():
            repository = WebhookRepository(session)
            events = await repository.claim_undispatched_events(200)
            if not events:
                return 0
            webhooks = await repository.enabled()
            now = self._clock()
            rows: list[dict[str, object]] = [
                {
                    "webhook_id": webhook.id,
                    "event_id": event.event_id,
                    "event_type": event.type,
                    "body": delivery_body(
                        event.event_id, event.type, event.subject, event.actor, event.payload, event.created_at
                    ),
                    "next_attempt_at": now,
                }
                for event in events
                for webhook in webhooks
                if subscribes(webhook.event_types, event.type)
            ]
            await repository.add_deliveries(rows)
            await repository.mark_dispatched([e.id for e in events], now)
            return len(rows)

    async def deliver_due(self) -> int:
        now = self._clock()
        async with self._sessionmaker() as session, session.begin():
            repository = WebhookRepository(session)
            due = await repository.claim_due(now, now + self.lease, BATCH)
            webhooks = await repository.webhooks_by_id({d.webhook_id for d in due}) if due else {}
        sent = [d for d in due if d.webhook_id in webhooks]
        outcomes = await asyncio.gather(*(self._attempt(d, webhooks[d.webhook_id]) for d in sent))
        rounds: dict[int, _Round] = {}
        for delivery, (_, values) in zip(sent, outcomes, strict=True):
            round_ = rounds.setdefault(delivery.webhook_id, _Round())
            if values["status"] == "succeeded":
                round_.delivered = True
            else:
                round_.failures += 1
                round_.gone = round_.gone or values["last_status_code"] == 410
                round_.last_error = str(values["last_error"] or "")
        disabled: list[tuple[str, dict[str, object]]] = []
        async with self._sessionmaker() as session, session.begin():
            repository = WebhookRepository(session)
            # The webhooks before their deliveries, as a disabling, a ping and a redelivery take them: recording
            # a delivery first, this waited for a redelivery of it that held its webhook and waited for it.
            # In the order of their ids, so two replicas recording the same webhooks never wait on each other.
            await repository.lock_webhooks(sorted(rounds))
            for delivery_id, values in outcomes:
                await repository.record_attempt(delivery_id, values)
            for webhook_id in sorted(rounds):
                disabling = await self._record_round(repository, webhook_id, rounds[webhook_id], now)
                if disabling is not None:
                    disabled.append(disabling)
        for kind, fields in disabled:
            self._disabled.labels(kind).inc()
            logger.warning("webhook disabled", **fields)
        return len(outcomes)

    async def _record_round(
        self, repository: WebhookRepository, webhook_id: int, round_: _Round, sent_at: datetime
    ) -> tuple[str, dict[str, object]] | None:
        """Carry the webhook's run of failed attempts on, or end it; disable the webhook when it has failed long
        enough, or at once on a 410 Gone. The metric's reason and what to log, if this round disabled it.

        A delivered attempt ends the run, even among failed ones of the same round: the receiver is alive.
        """
        if round_.delivered:
            await repository.end_failure_streak(webhook_id)
            return None
        failures, failing_since = await repository.add_failures(webhook_id, round_.failures, sent_at)
        now = self._clock()
        if round_.gone:
            kind, reason = "gone", GONE_REASON
        elif failing_too_long(
            failures,
            failing_since,
            now,
            min_failures=self._policy.disable_after_failures,
            min_duration=self._policy.disable_after,
        ):
            since = failing_since.isoformat() if failing_since else "?"
            kind, reason = (
                "failing",
                f"{failures} attempts in a row failed since {since}; the last: {round_.last_error}",
            )
        else:
            return None
        reason = reason[:500]
        if not await repository.disable(webhook_id, now, reason):
            return None
        abandoned = await repository.abandon_due_deliveries(webhook_id, now, abandoned_note(reason))
        after = {
            "enabled": False,
            "disabled_at": now.isoformat(),
            "reason": reason,
            "consecutive_failures": failures,
            "failing_since": failing_since.isoformat() if failing_since else None,
            "deliveries_abandoned": abandoned,
        }
        await AuditLog(repository.session).record(
            DISPATCHER,
            "webhook.disable",
            "webhook",
            str(webhook_id),
            before={"enabled": True, "disabled_at": None, "reason": None},
            after=after,
        )
        return kind, {"webhook": webhook_id, **after}

    async def _attempt(self, delivery: WebhookDelivery, webhook: Webhook) -> tuple[int, dict[str, object]]:
        body = json.dumps(delivery.body, separators=(",", ":")).encode()
        sent_at = self._clock()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"prompt-registry-webhooks/{__version__}",
            "X-Registry-Event": delivery.event_type,
            "X-Registry-Delivery": str(delivery.id),
            SIGNATURE_HEADER: signature_header(webhook.secret, int(sent_at.timestamp()), body),
        }
        status_code: int | None = None
        error: str | None = None
        retry_after: float | None = None
        try:
            # A name is checked by the connector's resolver; an address in the URL never reaches it.
            self._http.guard.check_literal(URL(webhook.url).raw_host or "")
            async with self._http.session.post(
                webhook.url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self._policy.timeout_seconds),
                allow_redirects=False,
            ) as response:
                status_code = response.status
                # A 2xx answer's body means nothing: its status is the receipt, however long the body trickles.
                succeeded = 200 <= status_code < 300
                answer = "" if succeeded else (await read_at_most(response, ANSWER_HEAD))[0].decode(errors="replace")
                retry_after = retry_after_seconds(response.headers.get("Retry-After"), sent_at)
            if succeeded:
                self._outcomes.labels("succeeded").inc()
                values: dict[str, object] = {
                    "status": "succeeded",
                    "attempts": delivery.attempts + 1,
                    "last_status_code": status_code,
                    "last_error": None,
                    "delivered_at": sent_at,
                    "locked_until": None,
                }
                return delivery.id, values
            # The receiver's text: a NUL in it, which PostgreSQL cannot store, failed the transaction that records
            # the round's outcomes, so every delivery of the round was sent again once its lease ended, and again.
            error = without_nul(f"HTTP {status_code}: {answer}")
        except AddressRefusedError as exc:
            return delivery.id, self._refused(delivery, webhook, exc.reason)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            error = without_nul(f"{type(exc).__name__}: {exc}"[:500])
        except Exception as exc:
            # One webhook's URL that cannot be sent to (yarl refuses it, the resolver cannot encode its name) is
            # that delivery's failure: raised, it failed the round, so no outcome of the round was recorded and
            # every delivery in it was sent again once its lease ended, and again.
            logger.exception("webhook delivery could not be sent", webhook=webhook.id, delivery=delivery.id)
            error = without_nul(f"{type(exc).__name__}: {exc}"[:500])
        attempts = delivery.attempts + 1
        # 410 Gone: the receiver says the endpoint is gone for good, so retrying only knocks on a closed door.
        dead = attempts >= self._policy.max_attempts or status_code == 410
        self._outcomes.labels("dead" if dead else "retrying").inc()
        delay = retry_delay(
            attempts,
            base=self._policy.retry_base_seconds,
            cap=self._policy.retry_max_seconds,
            jitter=self._jitter(),
            retry_after=retry_after if status_code in (429, 503) else None,
        )
        logger.info("webhook delivery failed", webhook=webhook.id, delivery=delivery.id, attempts=attempts, error=error)
        return delivery.id, {
            "status": "dead" if dead else "retrying",
            "attempts": attempts,
            "last_status_code": status_code,
            "last_error": error,
            "next_attempt_at": sent_at + timedelta(seconds=delay),
            "locked_until": None,
        }

    def _refused(self, delivery: WebhookDelivery, webhook: Webhook, reason: str) -> dict[str, object]:
        """A delivery to a refused address is dead at once: a retry would only knock on the same door."""
        self._outcomes.labels("refused").inc()
        logger.warning("webhook delivery refused", webhook=webhook.id, delivery=delivery.id, reason=reason)
        return {
            "status": "dead",
            "attempts": delivery.attempts + 1,
            "last_status_code": None,
            "last_error": f"refused: {reason}"[:500],
            "locked_until": None,
        }
