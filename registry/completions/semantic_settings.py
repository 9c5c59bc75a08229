"""A prompt's semantic cache settings: read, and set with validation, an audit entry and a change notice."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from registry.auth.audit import AuditLog
from registry.auth.principal import Actor
from registry.completions.models import SemanticCacheSettings
from registry.completions.schemas import SemanticCacheOut, SetSemanticCache
from registry.completions.semantic_privacy import SemanticCacheNeedsStoreIoError
from registry.completions.semantic_repository import SemanticCacheRepository
from registry.completions.similarity import DEFAULT_THRESHOLD
from registry.db.base import utcnow
from registry.lib.changes import Change, record_change
from registry.lib.errors import FieldError, InvalidInputError
from registry.prompts.errors import PROMPT_ERRORS
from registry.prompts.models import Prompt
from registry.prompts.service import variables_of


class SemanticCacheSettingsService:
    def __init__(self, session: AsyncSession, *, backend_configured: bool) -> None:
        self.session = session
        self.repository = SemanticCacheRepository(session)
        self.backend_configured = backend_configured

    async def _prompt(self, name: str) -> Prompt:
        prompt = await self.repository.get_prompt(name)
        if prompt is None:
            raise PROMPT_ERRORS.resource_not_found(f"no prompt is named '{name}'")
        return prompt

    async def get(self, name: str) -> SemanticCacheOut:
        prompt = await self._prompt(name)
        return self._out(name, await self.repository.get_settings(prompt.id))

    async def put(self, name: str, data: SetSemanticCache, actor: Actor) -> SemanticCacheOut:
        prompt = await self._prompt(name)
        if data.enabled and not prompt.store_io:
            raise SemanticCacheNeedsStoreIoError.of(name)
        await self._check_variables(prompt, data.exact_variables)
        settings = await self.repository.get_settings(prompt.id)
        before = None if settings is None else _summary(settings)
        if settings is None:
            settings = SemanticCacheSettings(prompt_id=prompt.id, threshold=DEFAULT_THRESHOLD)
        settings.enabled = data.enabled
        if data.threshold is not None:
            settings.threshold = data.threshold
        settings.exact_variables = list(data.exact_variables)
        settings.updated_at = utcnow()
        settings.updated_by = actor.name
        await self.repository.save_settings(settings)
        await AuditLog(self.session).record(
            actor, "prompt.semantic_cache.set", "prompt", name, before=before, after=_summary(settings)
        )
        # Every replica drops what it kept of the prompt's settings once this commits.
        record_change(self.session, Change("prompt", name, "semantic_cache_changed"))
        return self._out(name, settings)

    async def _check_variables(self, prompt: Prompt, names: list[str]) -> None:
        """Each exact variable must be one that some version of the prompt uses, and named once."""
        used: set[str] = set()
        for version in await self.repository.versions_of(prompt.id):
            used.update(variables_of(version))
        problems = []
        seen: set[str] = set()
        for i, name in enumerate(names):
            if name in seen:
                problems.append(FieldError(f"exact_variables[{i}]", f"'{name}' is named twice"))
            elif name not in used:
                known = ", ".join(sorted(used)) or "none"
                problems.append(
                    FieldError(
                        f"exact_variables[{i}]",
                        f"'{name}' is not a variable of any version of prompt '{prompt.name}' (its variables: {known})",
                    )
                )
            seen.add(name)
        if problems:
            raise InvalidInputError("exact variables must be variables the prompt's templates use", errors=problems)

    def _out(self, name: str, settings: SemanticCacheSettings | None) -> SemanticCacheOut:
        return SemanticCacheOut(
            prompt=name,
            enabled=settings.enabled if settings else False,
            threshold=settings.threshold if settings else DEFAULT_THRESHOLD,
            exact_variables=list(settings.exact_variables) if settings else [],
            backend_configured=self.backend_configured,
            updated_at=settings.updated_at if settings else None,
            updated_by=settings.updated_by if settings else None,
        )


def _summary(settings: SemanticCacheSettings) -> dict[str, Any]:
    return {
        "enabled": settings.enabled,
        "threshold": settings.threshold,
        "exact_variables": list(settings.exact_variables),
    }
