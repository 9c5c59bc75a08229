from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prompt_registry_client.templating import CompiledPrompt, TemplateProblemError, compile_prompt
from sqlalchemy.ext.asyncio import AsyncSession

from registry.auth.principal import Actor
from registry.completions.cache import record_storage_policy
from registry.completions.semantic_privacy import stop_keeping_answers
from registry.configs.models import ModelConfigVersion
from registry.configs.service import ConfigService, diff_fields, stored_content
from registry.lib.errors import FieldError, InvalidInputError
from registry.lib.hashing import content_sha256
from registry.lib.promotion import HELD_STATES, State
from registry.lib.versioned import Promotion, VersionedResourceService, VersionWorkflow
from registry.lib.versioned_schemas import PromoteRequest
from registry.prompts.errors import PROMPT_ERRORS, TemplateInvalidError
from registry.prompts.models import Prompt, PromptTransition, PromptVersion
from registry.prompts.repository import PromptRepository
from registry.prompts.schemas import ConfigUsed, CreatePromptVersion, PromptDiff


@dataclass(frozen=True, slots=True)
class PromptLimits:
    max_template_chars: int


def variables_of(version: PromptVersion) -> list[str]:
    """Input variable names of a stored version (it compiled when it was created)."""
    return compile_version(version).variables


def compile_version(version: PromptVersion) -> CompiledPrompt:
    return compile_prompt(
        "chat" if version.kind == "chat" else "text",
        template=version.template,
        messages=version.messages,
        input_schema=version.input_schema,
    )


def _content_text(version: PromptVersion) -> list[str]:
    """A version's templates as lines, for diffs."""
    if version.kind == "text":
        return (version.template or "").splitlines(keepends=True)
    lines: list[str] = []
    for message in version.messages or []:
        lines.append(f"[{message['role']}]\n")
        lines += [line if line.endswith("\n") else f"{line}\n" for line in message["content"].splitlines(keepends=True)]
    return lines


def _diff_lines(lines: Iterable[str]) -> Iterator[str]:
    """End every diff line, marking a last line that had no newline as ``diff`` and git do."""
    for line in lines:
        if line.endswith("\n"):
            yield line
        else:
            yield f"{line}\n\\ No newline at end of file\n"


def _config_used(version: ModelConfigVersion | None) -> ConfigUsed | None:
    if version is None:
        return None
    return ConfigUsed(name=version.config.name, version=version.number, model=version.model)


class PromptWorkflow(VersionWorkflow[Prompt, PromptVersion, PromptTransition]):
    """The shared workflow, refusing to put a version whose config version was retired into staging or production:
    every promotion (the API, the console, an experiment's winner, a rollout's end) comes through here."""

    def __init__(self, session: AsyncSession, repository: PromptRepository, configs: ConfigService) -> None:
        super().__init__(session, repository, change_kind="prompt", errors=PROMPT_ERRORS)
        self.configs = configs

    async def promote(self, name: str, number: int, request: PromoteRequest, actor: Actor) -> Promotion[PromptVersion]:
        to = State(request.to)
        if to in HELD_STATES:
            version = await self.require_version(await self.require(name), number)
            if version.state != to:  # already there: nothing moves, nothing new runs it
                await self.configs.refuse_archived(
                    version.config_version, use=f"prompt '{name}' version {number} in {to.value}"
                )
        return await super().promote(name, number, request, actor)


class PromptService(VersionedResourceService[Prompt, PromptVersion, PromptTransition]):
    def __init__(self, session: AsyncSession, limits: PromptLimits) -> None:
        super().__init__(session, PromptRepository(session), change_kind="prompt", errors=PROMPT_ERRORS)
        self.limits = limits
        self.configs = ConfigService(session)
        self.workflow = PromptWorkflow(session, PromptRepository(session), self.configs)

    async def update_prompt(
        self, name: str, actor: Actor, *, description: str | None, tags: list[str] | None, store_io: bool | None
    ) -> Prompt:
        """Update description and tags; a change of the storage policy is audited as its own action.

        Turning ``store_io`` off also turns the prompt's semantic cache off and deletes its entries (audited).
        """
        prompt = await self.workflow.update_resource(name, actor, description=description, tags=tags)
        if store_io is not None and store_io != prompt.store_io:
            prompt.store_io = store_io
            await self.repository.session.flush()
            await self.workflow.audit.record(
                actor,
                "prompt.storage_policy",
                "prompt",
                name,
                before={"store_io": not store_io},
                after={"store_io": store_io},
            )
            record_storage_policy(self.repository.session, name, store_io=store_io)  # the exact cache follows
            if not store_io:  # nor does its semantic cache keep answers any more
                await stop_keeping_answers(self.repository.session, prompt, actor)
        return prompt

    def _check_content(self, data: CreatePromptVersion) -> None:
        problems: list[FieldError] = []
        limit = self.limits.max_template_chars
        if data.kind == "text":
            if data.template is None:
                problems.append(FieldError("template", "is required for a text prompt"))
            elif len(data.template) > limit:
                problems.append(FieldError("template", f"has {len(data.template)} characters; the limit is {limit}"))
            if data.messages is not None:
                problems.append(FieldError("messages", "is only allowed for a chat prompt"))
        else:
            if data.messages is None:
                problems.append(FieldError("messages", "is required for a chat prompt"))
            else:
                problems += [
                    FieldError(f"messages[{i}].content", f"has {len(m.content)} characters; the limit is {limit}")
                    for i, m in enumerate(data.messages)
                    if len(m.content) > limit
                ]
            if data.template is not None:
                problems.append(FieldError("template", "is only allowed for a text prompt"))
        if problems:
            raise InvalidInputError("the prompt version is invalid", errors=problems)

    async def create_version(self, name: str, data: CreatePromptVersion, actor: Actor) -> tuple[PromptVersion, bool]:
        """Check, compile and store a version; an identical newest version is returned instead
        (``existing_version``)."""
        version = await self._unsaved_version(data)
        prompt = await self.workflow.require(name, for_update=True)
        return await self.workflow.add_version(prompt, version, actor)

    async def existing_version(self, prompt: Prompt, data: CreatePromptVersion) -> PromptVersion | None:
        """The stored version ``create_version`` would return for ``data`` now, or None where it would store a new
        one: the newest when identical, by the same digest. ``data`` is checked as ``create_version`` checks it (its
        refusal raises); nothing is written, so a prediction of a create and the create itself cannot disagree."""
        return await self.workflow.identical_newest(prompt, await self._unsaved_version(data))

    async def _unsaved_version(self, data: CreatePromptVersion) -> PromptVersion:
        """``data`` checked and compiled, as a version neither numbered nor stored, with the digest of its content."""
        self._check_content(data)
        messages = [{"role": m.role, "content": m.content} for m in data.messages] if data.messages else None
        try:
            compile_prompt(
                data.kind,
                template=data.template,
                messages=messages,
                input_schema=data.input_schema,
                refuse_unsafe=True,
            )
        except TemplateProblemError as exc:
            raise TemplateInvalidError.of(exc) from exc
        config_version = await self.configs.resolve_ref(data.config) if data.config else None
        content: dict[str, Any] = {
            "kind": data.kind,
            "template": data.template,
            "messages": messages,
            "input_schema": data.input_schema,
            "config": None
            if config_version is None
            else {"name": config_version.config.name, "version": config_version.number},
        }
        return PromptVersion(
            kind=data.kind,
            template=data.template,
            messages=messages,
            input_schema=data.input_schema,
            config_version=config_version,
            commit_message=data.commit_message,
            content_sha256=content_sha256(content),
        )

    async def get_version(self, name: str, number: int) -> PromptVersion:
        prompt = await self.workflow.require(name)
        return await self.workflow.require_version(prompt, number)

    async def diff(self, name: str, from_number: int, to_number: int) -> PromptDiff:
        prompt = await self.workflow.require(name)
        before = await self.workflow.require_version(prompt, from_number)
        after = await self.workflow.require_version(prompt, to_number)
        content_diff = "".join(
            _diff_lines(
                difflib.unified_diff(
                    _content_text(before),
                    _content_text(after),
                    fromfile=f"{name}@{from_number}",
                    tofile=f"{name}@{to_number}",
                )
            )
        )
        config_before = stored_content(before.config_version) if before.config_version else {}
        config_after = stored_content(after.config_version) if after.config_version else {}
        return PromptDiff(
            prompt=name,
            from_version=from_number,
            to_version=to_number,
            kind_changed=before.kind != after.kind,
            content_diff=content_diff,
            input_schema_changes=diff_fields(before.input_schema or {}, after.input_schema or {}),
            config_from=_config_used(before.config_version),
            config_to=_config_used(after.config_version),
            config_changes=diff_fields(config_before, config_after),
        )
