"""The semantic cache where it meets a prompt's storage policy.

A prompt whose ``store_io`` is false keeps none of its inputs and outputs, so it keeps no semantic cache either:
enabling the cache on it is refused (``SemanticCacheNeedsStoreIoError``), and turning ``store_io`` off while the
cache is on turns the cache off and deletes the prompt's entries in the same transaction, audited as
``prompt.semantic_cache.set`` with ``"reason": "store_io"`` and the number of entries deleted.

An entry answers other units' similar requests, so an answer to a request holding personal data (what the
storage policy's redaction detectors find, in the caller's variables or the rendered text), or an answer holding
some itself, is never kept: it could reach another person (``holds_personal_data``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from registry.auth.audit import AuditLog
from registry.auth.principal import Actor
from registry.completions.redaction import redact
from registry.completions.semantic_repository import SemanticCacheRepository
from registry.db.base import utcnow
from registry.lib.changes import Change, record_change
from registry.lib.errors import FieldError, InvalidInputError
from registry.prompts.models import Prompt


class SemanticCacheNeedsStoreIoError(InvalidInputError):
    """The semantic cache keeps a prompt's answers, which a prompt with ``store_io`` false must not keep."""

    type = "semantic_cache_needs_store_io"
    title = "Semantic cache needs store_io"

    @classmethod
    def of(cls, prompt: str) -> SemanticCacheNeedsStoreIoError:
        return cls(
            f"prompt '{prompt}' has store_io false, so the registry keeps none of its inputs and outputs, and the "
            f"semantic cache would keep its answers; set store_io to true first (PATCH /v1/prompts/{prompt} "
            '{"store_io": true}), or leave the semantic cache off',
            errors=[FieldError("enabled", "cannot be true while the prompt's store_io is false")],
        )


def _strings(value: Any) -> Iterable[str]:
    """Every string in a variable's value, however nested (numbers too: a phone or card number may be one)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield str(value)


def holds_personal_data(variables: Mapping[str, Any], *texts: str) -> bool:
    """Whether the redaction detectors (e-mail, phone, card, IBAN, SSN, IPv4) find anything in the variables'
    values or the texts: such a request's answer is not kept in the semantic cache."""
    return any(redact(text) != text for text in (*_strings(dict(variables)), *texts))


async def stop_keeping_answers(session: AsyncSession, prompt: Prompt, actor: Actor) -> int:
    """The prompt stopped storing inputs and outputs: its semantic cache goes off and its entries are deleted.

    Returns the number of entries deleted. Audited only when something changed (the cache was on, or entries
    were left from an earlier time it was on).
    """
    repository = SemanticCacheRepository(session)
    # Locked before the entries are deleted: a store in progress finishes first (and its entry is deleted
    # here), one that comes later waits and reads the cache off (``SemanticCache.store``).
    settings = await repository.get_settings(prompt.id, for_update=True)
    was_on = settings is not None and settings.enabled
    deleted = await repository.delete_of_prompt(prompt.name)
    if settings is not None and settings.enabled:
        settings.enabled = False
        settings.updated_at = utcnow()
        settings.updated_by = actor.name
        await repository.save_settings(settings)
    if was_on or deleted:
        await AuditLog(session).record(
            actor,
            "prompt.semantic_cache.set",
            "prompt",
            prompt.name,
            before={"enabled": was_on},
            after={"enabled": False, "reason": "store_io", "entries_deleted": deleted},
        )
        # Every replica drops what it kept of the prompt's settings once this commits.
        record_change(session, Change("prompt", prompt.name, "semantic_cache_changed"))
    return deleted
