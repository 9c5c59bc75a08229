from __future__ import annotations

from collections.abc import Collection
from typing import Any

import jsonschema
import msgspec
from sqlalchemy.ext.asyncio import AsyncSession

from registry.auth.principal import Actor
from registry.configs.models import ModelConfig, ModelConfigTransition, ModelConfigVersion
from registry.configs.repository import ConfigRepository
from registry.configs.schemas import RESERVED_EXTRA_KEYS, ConfigRef, CreateConfigVersion, FieldChange
from registry.guards.specs import guard_problems, guards_content
from registry.lib.errors import ConflictError, FieldError, InvalidInputError, NotFoundError
from registry.lib.hashing import content_sha256
from registry.lib.promotion import State
from registry.lib.versioned import ResourceErrors, VersionedResourceService
from registry.prompts.repository import PromptRepository


class ConfigNotFoundError(NotFoundError):
    """No model config has this name."""

    type = "config_not_found"
    title = "Model config not found"


class ConfigVersionNotFoundError(NotFoundError):
    """The model config has no version with this number."""

    type = "config_version_not_found"
    title = "Model config version not found"


CONFIG_ERRORS = ResourceErrors(ConfigNotFoundError, ConfigVersionNotFoundError, "config")


class ConfigVersionArchivedError(ConflictError):
    """The config version was retired (promoted to ``archived``): no traffic may be sent to it any more."""

    type = "config_version_archived"
    title = "Model config version archived"


def config_content(data: CreateConfigVersion, fallback: ModelConfigVersion | None = None) -> dict[str, Any]:
    """What a config version's identity (and digest) covers: everything but the commit message.

    The fallback is pinned to a version number; it enters the content only when
    set, so digests of versions made before fallbacks existed stay the same.
    """
    content: dict[str, Any] = {
        "backend": data.backend,
        "model": data.model,
        "params": params_dict(data),
        "input_price_per_mtok": data.input_price_per_mtok,
        "output_price_per_mtok": data.output_price_per_mtok,
        "max_context_tokens": data.max_context_tokens,
    }
    if fallback is not None:
        content["fallback"] = {"name": fallback.config.name, "version": fallback.number}
    if data.guards:
        content["guards"] = guards_content(data.guards)
    return content


def params_dict(data: CreateConfigVersion) -> dict[str, Any]:
    params: dict[str, Any] = msgspec.to_builtins(data.params)
    return {key: value for key, value in params.items() if value is not None and value != {}}


def params_problems(data: CreateConfigVersion) -> list[FieldError]:
    problems = [
        FieldError(f"params.extra.{key}", "is set by the service or has its own field; use that field")
        for key in data.params.extra
        if key in RESERVED_EXTRA_KEYS
    ]
    response_format = data.params.response_format
    if response_format is not None:
        if response_format.type == "json_schema":
            if response_format.json_schema is None:
                problems.append(FieldError("params.response_format.json_schema", "is required for type json_schema"))
            else:
                try:
                    jsonschema.validators.validator_for(response_format.json_schema.schema).check_schema(
                        response_format.json_schema.schema
                    )
                except jsonschema.SchemaError as exc:
                    problems.append(
                        FieldError(
                            "params.response_format.json_schema.schema", f"not a valid JSON Schema: {exc.message}"
                        )
                    )
        elif response_format.json_schema is not None:
            problems.append(FieldError("params.response_format.json_schema", "is only allowed with type json_schema"))
    return problems


def diff_fields(before: dict[str, Any], after: dict[str, Any], prefix: str = "") -> list[FieldChange]:
    """Field-level differences between two nested dicts, with dotted paths."""
    changes: list[FieldChange] = []
    for key in sorted(before.keys() | after.keys()):
        old, new = before.get(key), after.get(key)
        path = f"{prefix}{key}"
        if isinstance(old, dict) and isinstance(new, dict):
            changes += diff_fields(old, new, f"{path}.")
        elif old != new:
            changes.append(FieldChange(field=path, before=old, after=new))
    return changes


def stored_content(version: ModelConfigVersion) -> dict[str, Any]:
    content: dict[str, Any] = {
        "backend": version.backend,
        "model": version.model,
        "params": version.params,
        "input_price_per_mtok": version.input_price_per_mtok,
        "output_price_per_mtok": version.output_price_per_mtok,
        "max_context_tokens": version.max_context_tokens,
    }
    if version.fallback is not None:
        content["fallback"] = {"name": version.fallback.config.name, "version": version.fallback.number}
    if version.guards:
        content["guards"] = version.guards
    return content


class ConfigService(VersionedResourceService[ModelConfig, ModelConfigVersion, ModelConfigTransition]):
    def __init__(self, session: AsyncSession, *, backends: Collection[str] = ()) -> None:
        """``backends``: the configured backend names new versions may use (none configured: any name)."""
        self.versions = ConfigRepository(session)
        super().__init__(session, self.versions, change_kind="config", errors=CONFIG_ERRORS)
        self.backends = backends

    async def create_version(
        self, name: str, data: CreateConfigVersion, actor: Actor
    ) -> tuple[ModelConfigVersion, bool]:
        problems = params_problems(data) + guard_problems(data.guards) + await self._classifier_problems(data)
        if self.backends and data.backend not in self.backends:
            known = ", ".join(sorted(self.backends))
            problems.append(FieldError("backend", f"is not a configured backend (configured: {known})"))
        if problems:
            raise InvalidInputError("the model config is invalid", errors=problems)
        fallback = await self.resolve_ref(data.fallback, field="fallback") if data.fallback else None
        content = config_content(data, fallback)
        config = await self.workflow.require(name, for_update=True)
        version = ModelConfigVersion(
            backend=data.backend,
            model=data.model,
            params=content["params"],
            input_price_per_mtok=data.input_price_per_mtok,
            output_price_per_mtok=data.output_price_per_mtok,
            max_context_tokens=data.max_context_tokens,
            fallback=fallback,
            guards=content.get("guards"),
            commit_message=data.commit_message,
            content_sha256=content_sha256(content),
        )
        return await self.workflow.add_version(config, version, actor)

    async def _classifier_problems(self, data: CreateConfigVersion) -> list[FieldError]:
        """A model guard whose classifier prompt runs, as things stand, on a config with model guards itself.

        A classifier prompt not made yet (or without that label) passes here; when it runs, the same
        recursion is refused and the guard's ``on_error`` decides.
        """
        problems: list[FieldError] = []
        prompts = PromptRepository(self.repository.session)
        for i, guard in enumerate(data.guards):
            if guard.kind != "model" or guard.prompt is None:
                continue
            prompt = await prompts.get_resource(guard.prompt)
            if prompt is None:
                continue
            if guard.version is not None:
                version = await prompts.get_version(prompt.id, guard.version)
            elif guard.label == "latest":
                version = await prompts.get_version(prompt.id, prompt.latest_version or 0)
            else:
                version = (await prompts.holders(prompt.id)).get(State(guard.label or State.PRODUCTION.value))
            config = version.config_version if version is not None else None
            if config is not None and any(g.get("kind") == "model" for g in config.guards or []):
                problems.append(
                    FieldError(
                        f"guards[{i}].prompt",
                        f"the classifier prompt '{guard.prompt}' runs on config '{config.config.name}' version "
                        f"{config.number}, which has model guards of its own; a classifier's config may not",
                    )
                )
        return problems

    async def resolve_ref(self, ref: ConfigRef, *, field: str = "config") -> ModelConfigVersion:
        """The version a prompt (or a fallback) links to; a label is resolved now and the number pinned."""
        if ref.version is not None and ref.label is not None:
            raise InvalidInputError(
                "give a config version or a label, not both",
                errors=[FieldError(field, "version and label are exclusive")],
            )
        try:
            _, version = await self.workflow.resolve(ref.name, version=ref.version, label=ref.label)
        except NotFoundError as exc:
            raise InvalidInputError(exc.detail, errors=[FieldError(field, exc.detail)]) from exc
        return version

    async def refuse_archived(self, version: ModelConfigVersion | None, *, use: str, field: str = "config") -> None:
        """Raise ``ConfigVersionArchivedError`` when ``version`` was retired: the one check of rollouts, experiments
        and prompt promotions, so no new traffic goes to a config version someone took out of use.

        Retired is archived by a promotion to ``archived``. A version archived because a newer one took the state it
        held (``displace``) is superseded, not retired: the prompt versions pinned to it stay promotable, as the
        config itself may be rolled back to it. ``use`` says what would run it; ``field`` names the request's field.
        """
        if version is None or version.state != State.ARCHIVED:
            return
        if await self.versions.archiving_action(version) == "displace":
            return
        name, number = version.config.name, version.number
        raise ConfigVersionArchivedError(
            f"config '{name}' version {number} is archived: {use} may not run it; name a version that is not archived",
            errors=[FieldError(field, f"config '{name}' version {number} is archived")],
            config=name,
            config_version=number,
        )

    async def diff(self, name: str, from_number: int, to_number: int) -> list[FieldChange]:
        config = await self.workflow.require(name)
        before = await self.workflow.require_version(config, from_number)
        after = await self.workflow.require_version(config, to_number)
        return diff_fields(stored_content(before), stored_content(after))
