from __future__ import annotations

from typing import Any

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, String, Text, false
from sqlalchemy.orm import Mapped, mapped_column, relationship

from registry.configs.models import ModelConfigVersion
from registry.db.base import Base, BigIntId, JSONValue
from registry.lib.versioned import (
    TransitionMixin,
    VersionedResourceMixin,
    VersionMixin,
    transition_table_args,
    version_table_args,
)


class Prompt(VersionedResourceMixin, Base):
    """A named prompt; its templates live in immutable versions."""

    __tablename__ = "prompts"

    # Whether completions of this prompt keep their (redacted) rendered prompt and output text.
    store_io: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class PromptVersion(VersionMixin, Base):
    """A text template or a list of chat messages (Jinja2), frozen once created."""

    __tablename__ = "prompt_versions"
    __table_args__ = (
        *version_table_args("prompt_versions", "prompt_id"),
        CheckConstraint("kind IN ('text', 'chat')", name="kind"),
    )

    prompt_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("prompts.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(8))
    template: Mapped[str | None] = mapped_column(Text)
    messages: Mapped[list[dict[str, str]] | None] = mapped_column(JSONValue)
    input_schema: Mapped[dict[str, Any] | None] = mapped_column(JSONValue)
    config_version_id: Mapped[int | None] = mapped_column(
        BigIntId, ForeignKey("model_config_versions.id", ondelete="RESTRICT"), index=True
    )

    config_version: Mapped[ModelConfigVersion | None] = relationship(lazy="raise")


class PromptTransition(TransitionMixin, Base):
    __tablename__ = "prompt_transitions"
    __table_args__ = transition_table_args("prompt_transitions", "prompt_id")

    prompt_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("prompts.id", ondelete="CASCADE"))
