from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import joinedload

from registry.configs.models import ModelConfig, ModelConfigTransition, ModelConfigVersion
from registry.lib.versioned import VersionedRepository

# A version with everything a caller reads of it: its config's name, and its fallback (one hop) with that name.
# Relative to ModelConfigVersion, so other domains chain them (``joinedload(X.config_version).options(*...)``).
CONFIG_VERSION_LOADS = (
    joinedload(ModelConfigVersion.config),
    joinedload(ModelConfigVersion.fallback).joinedload(ModelConfigVersion.config),
)


class ConfigRepository(VersionedRepository[ModelConfig, ModelConfigVersion, ModelConfigTransition]):
    resource_model = ModelConfig
    version_model = ModelConfigVersion
    transition_model = ModelConfigTransition
    parent_column = "config_id"
    version_options = CONFIG_VERSION_LOADS

    async def archiving_action(self, version: ModelConfigVersion) -> str | None:
        """How the version last entered ``archived``: ``promote`` (retired by someone) or ``displace`` (a newer
        version took the state it held); None when no transition says so."""
        model = ModelConfigTransition
        query = (
            select(model.action)
            .where(model.config_id == version.config_id, model.version_number == version.number)
            .where(model.to_state == "archived")
            .order_by(model.id.desc())
            .limit(1)
        )
        action: str | None = await self.session.scalar(query)
        return action
