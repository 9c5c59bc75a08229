"""The readiness report: gathers the facts (database, Redis, backends, settings) and runs the checks."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import httpx
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from registry.auth.keys import Scope
from registry.db.base import utcnow
from registry.operations import doctor
from registry.operations.backup import head_revision
from registry.operations.repository import DoctorRepository
from registry.settings import BackendSettings, Settings

PROBE_TIMEOUT_SECONDS = 3.0


class DoctorService:
    def __init__(
        self,
        session: AsyncSession,
        settings: Settings,
        redis: Redis | None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.repository = DoctorRepository(session)
        self.settings = settings
        self.redis = redis
        self.transport = transport  # the test seam for backend probes

    async def run(self, now: datetime | None = None) -> list[doctor.Check]:
        now = now or utcnow()
        settings = self.settings
        keys = [
            doctor.KeyFacts(
                k.public_id,
                k.name,
                Scope.ADMIN.value in k.scopes,
                k.created_at,
                k.expires_at,
                k.last_used_at,
            )
            for k in await self.repository.active_keys()
            if k.expires_at is None or k.expires_at > now
        ]
        retention_cutoff = now - timedelta(days=settings.completion_io_retention_days + 1)
        return [
            doctor.migrations(await self.repository.revision(), head_revision()),
            doctor.backends(await self._probe_backends()),
            doctor.redis(self.redis is not None, await self._redis_error()),
            doctor.replicas(settings.role, settings.workers),
            *doctor.keys(keys, now),
            doctor.gates(await self.repository.production_prompts_without_gate()),
            doctor.retention(
                settings.completion_io_retention_days,
                await self.repository.prompts_storing_texts(),
                await self.repository.stored_texts_before(retention_cutoff),
            ),
            doctor.backups(await self.repository.last_backup_at(), now, settings.backup_max_age_hours),
            doctor.bootstrap(settings.bootstrap_admin_key),
        ]

    async def _redis_error(self) -> str | None:
        if self.redis is None:
            return None
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
                await self.redis.ping()
        except Exception as exc:
            return type(exc).__name__
        return None

    async def _probe_backends(self) -> dict[str, str | None]:
        if not self.settings.backends:
            return {}
        async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_SECONDS, transport=self.transport) as client:
            names = list(self.settings.backends)
            results = await asyncio.gather(*(self._probe(client, self.settings.backends[n]) for n in names))
        return dict(zip(names, results, strict=True))

    @staticmethod
    async def _probe(client: httpx.AsyncClient, backend: BackendSettings) -> str | None:
        """A cheap request: the backend's model list (vLLM and other OpenAI-compatible servers serve it).

        Only its status is read, within ``PROBE_TIMEOUT_SECONDS`` in all: the client's timeout bounds each read,
        so a body sent slowly, or without end, would otherwise hold the report (and the process's memory) open."""
        headers = {"Authorization": f"Bearer {backend.api_key}"} if backend.api_key else {}
        try:
            async with (
                asyncio.timeout(PROBE_TIMEOUT_SECONDS),
                client.stream("GET", f"{backend.url.rstrip('/')}/v1/models", headers=headers) as response,
            ):
                status = response.status_code
        except TimeoutError:
            return f"GET /v1/models gave no answer within {PROBE_TIMEOUT_SECONDS:g} s"
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if status >= 400:
            return f"GET /v1/models answered {status}"
        return None
