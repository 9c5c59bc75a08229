from __future__ import annotations

from typing import Any

from sqlalchemy import Double, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from registry.db.base import Base, BigIntId, JSONValue
from registry.lib.versioned import (
    TransitionMixin,
    VersionedResourceMixin,
    VersionMixin,
    transition_table_args,
    version_table_args,
)


class ModelConfig(VersionedResourceMixin, Base):
    """A named model configuration; its content lives in immutable versions."""

    __tablename__ = "model_configs"


class ModelConfigVersion(VersionMixin, Base):
    """Backend, model, sampling parameters and prices, frozen once created."""

    __tablename__ = "model_config_versions"
    __table_args__ = version_table_args("model_config_versions", "config_id")

    config_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("model_configs.id", ondelete="CASCADE"))
    backend: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(256))
    params: Mapped[dict[str, Any]] = mapped_column(JSONValue)
    input_price_per_mtok: Mapped[float] = mapped_column(Double, default=0.0)
    output_price_per_mtok: Mapped[float] = mapped_column(Double, default=0.0)
    max_context_tokens: Mapped[int | None]
    # Input and output guards (registry.guards.specs), frozen with the version; None: none.
    guards: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONValue)
    # Used when this config's backend is failing (breaker open, retries exhausted); pinned like a prompt's config.
    fallback_version_id: Mapped[int | None] = mapped_column(
        BigIntId, ForeignKey("model_config_versions.id", ondelete="RESTRICT")
    )

    config: Mapped[ModelConfig] = relationship(lazy="raise")
    fallback: Mapped[ModelConfigVersion | None] = relationship(lazy="raise", remote_side="ModelConfigVersion.id")


class ModelConfigTransition(TransitionMixin, Base):
    __tablename__ = "model_config_transitions"
    __table_args__ = transition_table_args("model_config_transitions", "config_id")

    config_id: Mapped[int] = mapped_column(BigIntId, ForeignKey("model_configs.id", ondelete="CASCADE"))
